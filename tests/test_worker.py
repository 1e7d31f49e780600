"""The worker protocol: JSON lines only on stdout, and no worker outlives its parent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import IO

from autotune.settings import Settings
from autotune.trial import TrialSpec
from autotune.workload import Workload


def start_worker(spec: TrialSpec, stderr: IO[bytes]) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "autotune.worker"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=stderr, text=True,
                               encoding="utf-8")
    assert process.stdin is not None
    process.stdin.write(json.dumps(spec.to_wire()) + "\n")
    process.stdin.flush()
    return process


def read_until(process: subprocess.Popen[str], last: str) -> list[dict]:
    assert process.stdout is not None
    events = []
    for line in process.stdout:
        events.append(json.loads(line))  # every stdout line is a protocol event
        if events[-1]["event"] == last:
            break
    return events


def test_worker_stream_is_pure_json_even_when_llama_logs(model_path: Path,
                                                         tiny_workload: Workload,
                                                         tmp_path: Path) -> None:
    settings = Settings(n_threads=2, context_window=1024, verbose=True)
    spec = TrialSpec(str(model_path), settings, tiny_workload, tokens_per_request=4,
                     probe_threads=1)
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        process = start_worker(spec, stderr)
        try:
            events = read_until(process, "done")
            assert process.stdin is not None
            process.stdin.close()
            assert process.wait(timeout=30) == 0
        finally:
            process.kill()
            process.wait()
            process.stdout.close()  # type: ignore[union-attr]
    kinds = [e["event"] for e in events]
    assert kinds == ["loaded", "warmup", "request", "request", "request", "request",
                     "pass_end", "thread_probe", "done"]
    assert events[0]["n_ctx"] >= 1024
    probe = events[-2]
    assert (probe["configured_threads"], probe["physical_threads"]) == (2, 1)
    assert probe["configured_s"] > 0 and probe["physical_s"] > 0
    assert "llama" in (tmp_path / "stderr.txt").read_text(encoding="utf-8", errors="replace")


def test_worker_exits_when_its_parent_closes_stdin(model_path: Path, tiny_workload: Workload,
                                                   tmp_path: Path) -> None:
    spec = TrialSpec(str(model_path), Settings(n_threads=2, context_window=1024),
                     tiny_workload, tokens_per_request=4, passes=500)
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        process = start_worker(spec, stderr)
        try:
            events = read_until(process, "request")
            assert process.stdin is not None
            process.stdin.close()
            returncode = process.wait(timeout=5)
        finally:
            process.kill()
            process.wait()
            process.stdout.close()  # type: ignore[union-attr]
    assert events[-1]["event"] == "request"
    assert returncode == 70
