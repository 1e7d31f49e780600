"""The worker protocol: JSON lines only on stdout, no worker outlives its parent, and
neither the worker nor the CLI runs code from the folder it was started in."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from autotune.measure.records import Status
from autotune.measure.settings import Settings
from autotune.measure.trial import TrialSpec, run_trial, worker_command
from autotune.measure.workload import Workload

# What a folder beside a downloaded model could hold: modules named like the ones the
# worker and the CLI import. Each leaves a marker and refuses to load if imported.
PLANTED = {"json.py", "queue.py", "psutil.py", "numpy.py", "click.py", "autotune/__init__.py",
           "autotune/worker.py", "autotune/cli.py"}
TRAP = ("open(__file__ + '.imported', 'w').close()\n"
        "raise ImportError('imported from the working directory')\n")


def start_worker(spec: TrialSpec, stderr: IO[bytes]) -> subprocess.Popen[str]:
    process = subprocess.Popen(worker_command(), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=stderr, text=True,
                               encoding="utf-8")
    assert process.stdin is not None
    process.stdin.write(spec.to_wire() + "\n")
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
                     "pass_end", *["probe_request"] * 4, "thread_probe", "done"]
    assert events[0]["n_ctx"] >= 1024
    assert [e["threads"] for e in events[7:11]] == [2, 1, 2, 1]
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
            # only so that a broken test cannot hang: the status says it left at once,
            # abandoned (70), rather than after its 500 passes (0)
            returncode = process.wait(timeout=120)
        finally:
            process.kill()
            process.wait()
            process.stdout.close()  # type: ignore[union-attr]
    assert events[-1]["event"] == "request"
    assert returncode == 70


@pytest.fixture
def planted_cwd(tmp_path: Path) -> Path:
    cwd = tmp_path / "downloads"
    for name in PLANTED:
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        (cwd / name).write_text(TRAP, encoding="utf-8")
    return cwd


def test_worker_runs_only_the_project_code(planted_cwd: Path, model_path: Path,
                                           tiny_workload: Workload,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(planted_cwd)  # the worker starts in the parent's working directory
    result = run_trial(TrialSpec(str(model_path), Settings(n_threads=2, context_window=1024),
                                 tiny_workload, tokens_per_request=4))
    assert result.status == Status.OK, result.reason
    assert list(planted_cwd.rglob("*.imported")) == []


def test_cli_runs_only_the_project_code(planted_cwd: Path, model_path: Path,
                                        tiny_workload_file: Path,
                                        run_cli: Callable[..., subprocess.CompletedProcess[str]]
                                        ) -> None:
    # `autotune bench` runs the CLI and a worker; there is no `python -m autotune`
    done = run_cli("bench", str(model_path), "--workload", str(tiny_workload_file),
                   "--tokens", "4", "--json", cwd=planted_cwd,
                   env={"JARVIS_N_THREADS": "2", "JARVIS_MODEL_CONTEXT_WINDOW": "1024"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ok"
    assert list(planted_cwd.rglob("*.imported")) == []
