"""Trials in real worker processes: records, load failures, crashes, hangs, pruning."""

from __future__ import annotations

import gc
import json
import os
import signal
import time
import warnings
from pathlib import Path

import psutil
import pytest

from autotune.settings import Settings
from autotune.trial import (
    CRASHED,
    FAILED,
    LOAD_FAILED,
    OK,
    OUT_OF_MEMORY,
    PRUNED,
    TIMED_OUT,
    TrialResult,
    TrialSpec,
    classify,
    run_trial,
)
from autotune.workload import Workload

# run_trial leaves the worker's stdout and stderr pipes to the garbage collector, which
# warns about each; test_run_trial_closes_its_pipes reports that, the others look past it.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:unclosed file <_io.TextIOWrapper name=\d+:ResourceWarning")

TOKENS = 4
RECORD_KEYS = {"id", "index", "conversation", "turn", "pass_no", "client", "latency_s",
               "queue_s", "ttft_s", "prompt_tokens", "reused_tokens", "generated",
               "cache_hit", "reuse_source", "reload", "dropped_turns", "cache_s", "rss_bytes"}


def tiny_spec(model: Path | str, workload: Workload, **changes: object) -> TrialSpec:
    fields: dict[str, object] = {"tokens_per_request": TOKENS, "timeout_s": 120.0,
                                 "stall_s": 60.0}
    fields.update(changes)
    return TrialSpec(str(model), Settings(n_threads=2, context_window=1024), workload,
                     **fields)  # type: ignore[arg-type]


def worker_pid() -> int:
    """The one trial worker this test process has running."""
    workers = [p.pid for p in psutil.Process().children()
               if "autotune.worker" in " ".join(p.cmdline())]
    assert len(workers) == 1, workers
    return workers[0]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_runs_ok(model: Path, workload: Workload) -> None:
    """After a failed trial, the parent is fine and the next trial runs normally."""
    result = run_trial(tiny_spec(model, workload))
    assert result.status == OK, result.reason
    assert len(result.requests) == len(workload.requests)


@pytest.fixture(scope="module")
def ok_result(model_path: Path, tiny_workload: Workload) -> TrialResult:
    return run_trial(tiny_spec(model_path, tiny_workload))


def test_ok_trial_status(ok_result: TrialResult) -> None:
    assert ok_result.status == OK
    assert ok_result.ok
    assert ok_result.reason == ""
    assert ok_result.returncode == 0
    assert ok_result.pid is not None and gone(ok_result.pid)


def test_ok_trial_one_record_per_request(ok_result: TrialResult,
                                         tiny_workload: Workload) -> None:
    assert [r["id"] for r in ok_result.requests] == [r.id for r in tiny_workload.requests]
    for record in ok_result.requests:
        assert RECORD_KEYS.issubset(record)
        assert record["latency_s"] > 0
        assert 0 < record["ttft_s"] <= record["latency_s"]
        assert record["prompt_tokens"] > 0
        assert record["generated"] == TOKENS
        assert record["reload"] is False
        assert record["pass_no"] == 0
        assert record["rss_bytes"] > 0


def test_ok_trial_cache_verdicts(ok_result: TrialResult) -> None:
    first_turns, follow_ups = ok_result.requests[:2], ok_result.requests[2:]
    assert [r["cache_hit"] for r in first_turns] == [None, None]
    assert [r["cache_hit"] for r in follow_ups] == [True, True]
    assert [r["reuse_source"] for r in follow_ups] == ["cache", "cache"]


def test_ok_trial_load_and_resources(ok_result: TrialResult) -> None:
    assert ok_result.load_s is not None and ok_result.load_s > 0
    assert ok_result.warmup_s is not None and ok_result.warmup_s > 0
    assert len(ok_result.pass_rss_bytes) == 1
    assert ok_result.peak_rss_bytes >= max(r["rss_bytes"] for r in ok_result.requests)
    assert ok_result.wall_s > ok_result.load_s
    assert ok_result.ended_at is not None
    assert ok_result.thread_probe is None
    assert ok_result.settings == Settings(n_threads=2, context_window=1024).to_dict()


def test_ok_trial_is_plain_data(ok_result: TrialResult) -> None:
    data = json.loads(json.dumps(ok_result.to_dict()))
    assert data["status"] == OK
    assert len(data["requests"]) == 4


def test_spec_to_wire_is_json(tiny_workload: Workload) -> None:
    wire = json.loads(json.dumps(tiny_spec("m.gguf", tiny_workload, passes=2).to_wire()))
    assert wire["passes"] == 2
    assert wire["tokens_per_request"] == TOKENS
    assert len(wire["requests"]) == 4
    assert wire["settings"]["n_threads"] == 2


@pytest.mark.filterwarnings("error::ResourceWarning")
def test_run_trial_closes_its_pipes(tmp_path: Path, tiny_workload: Workload) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_trial(tiny_spec(tmp_path / "absent.gguf", tiny_workload))
        gc.collect()
    assert result.status == LOAD_FAILED
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_truncated_model_is_load_failed(truncated_model: Path, model_path: Path,
                                        tiny_workload: Workload) -> None:
    result = run_trial(tiny_spec(truncated_model, tiny_workload))
    assert result.status == LOAD_FAILED
    assert str(truncated_model) in result.reason
    assert result.requests == []
    assert result.load_s is None
    assert result.pid is not None and gone(result.pid)
    assert_runs_ok(model_path, tiny_workload)


def test_killed_worker_is_crashed(model_path: Path, tiny_workload: Workload) -> None:
    killed: list[int] = []

    def kill(record: dict) -> bool:
        if not killed:
            killed.append(worker_pid())
            os.kill(killed[0], signal.SIGKILL)
        return False

    result = run_trial(tiny_spec(model_path, tiny_workload), on_request=kill)
    assert killed == [result.pid]
    assert result.status == CRASHED
    assert "SIGKILL" in result.reason
    assert result.returncode == -signal.SIGKILL
    assert 1 <= len(result.requests) < len(tiny_workload.requests)
    assert gone(killed[0])
    assert_runs_ok(model_path, tiny_workload)


def test_hung_worker_is_timed_out_and_killed(model_path: Path, tiny_workload: Workload,
                                             ok_result: TrialResult) -> None:
    # 2 s without a line is a hang, unless a whole normal trial takes longer on this machine
    # right now (a loaded machine must not look hung before the worker is stopped)
    stall_s = max(2.0, round(ok_result.wall_s + 1))
    stopped: list[int] = []

    def stop(record: dict) -> bool:
        if not stopped:
            stopped.append(worker_pid())
            os.kill(stopped[0], signal.SIGSTOP)
        return False

    result = run_trial(tiny_spec(model_path, tiny_workload, stall_s=stall_s), on_request=stop)
    assert stopped == [result.pid]
    assert result.status == TIMED_OUT
    assert f"no progress for {stall_s:g} s" in result.reason
    assert len(result.requests) >= 1
    assert result.wall_s < 30 + stall_s
    assert not psutil.pid_exists(stopped[0])
    assert_runs_ok(model_path, tiny_workload)


def test_pruned_trial_stops_its_worker_at_once(model_path: Path,
                                               tiny_workload: Workload) -> None:
    decided: list[float] = []
    pids: list[int] = []

    def prune(record: dict) -> bool:
        pids.append(worker_pid())
        decided.append(time.perf_counter())
        return True

    result = run_trial(tiny_spec(model_path, tiny_workload, passes=20), on_request=prune)
    assert result.status == PRUNED
    assert result.reason == "stopped after 1 requests"
    assert len(decided) == 1
    assert pids == [result.pid]
    assert result.ended_at is not None
    assert result.ended_at - decided[0] < 1.0
    assert not psutil.pid_exists(pids[0])
    assert_runs_ok(model_path, tiny_workload)


def test_trial_past_its_time_limit(model_path: Path, tiny_workload: Workload) -> None:
    # 200 one-token requests take several seconds; the limit must hold even while records
    # keep coming faster than the parent's 50 ms poll
    result = run_trial(tiny_spec(model_path, tiny_workload, tokens_per_request=1, passes=50,
                                 timeout_s=1.5))
    assert result.status == TIMED_OUT
    assert "1.5 s limit" in result.reason
    assert result.wall_s < 1.5 + 2.0
    assert result.pid is not None and not psutil.pid_exists(result.pid)


@pytest.mark.parametrize(("returncode", "done", "stderr", "status", "words"), [
    (0, True, "", OK, ""),
    (0, False, "", FAILED, "before finishing"),
    (1, False, "Traceback\nValueError: boom\n", FAILED, "status 1: ValueError: boom"),
    (-9, False, "", CRASHED, "killed by SIGKILL"),
    (-11, False, "ggml error\n", CRASHED, "killed by SIGSEGV: ggml error"),
    (-6, False, "ggml_abort\n", CRASHED, "SIGABRT"),
    (1, False, "CUDA error: out of memory\n", OUT_OF_MEMORY, "out of memory"),
    (-6, False, "terminate called: std::bad_alloc\n", OUT_OF_MEMORY, "bad_alloc"),
])
def test_classify(returncode: int, done: bool, stderr: str, status: str, words: str) -> None:
    got_status, reason = classify(returncode, done, stderr)
    assert got_status == status
    assert words in reason


def test_classify_sigkill_under_memory_pressure_is_out_of_memory() -> None:
    status, reason = classify(-signal.SIGKILL, False, "", memory_ran_out=True)
    assert status == OUT_OF_MEMORY
    assert "SIGKILL" in reason
