"""Trials in real worker processes: records, load failures, crashes, hangs, pruning.

Every failure is made certain by the worker's fault switch (AUTOTUNE_WORKER_FAULT, see
autotune.measure.faults), never by racing the worker or by how fast this machine is.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import psutil
import pytest
from conftest import workers_of

from autotune.measure import trial
from autotune.measure.faults import ENV, Fault, parse
from autotune.measure.records import Status, TrialResult
from autotune.measure.settings import Settings
from autotune.measure.trial import (
    SLOW_DISK_BYTES_PER_S,
    STARTUP_S,
    TrialSpec,
    classify,
    follow,
    reap,
    run_trial,
)
from autotune.measure.workload import Workload, build

OK, PRUNED, FAILED, CRASHED = Status.OK, Status.PRUNED, Status.FAILED, Status.CRASHED
LOAD_FAILED, OUT_OF_MEMORY, TIMED_OUT = Status.LOAD_FAILED, Status.OUT_OF_MEMORY, Status.TIMED_OUT

# run_trial leaves the worker's stdout and stderr pipes to the garbage collector, which
# warns about each; test_run_trial_closes_its_pipes reports that, the others look past it.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:unclosed file <_io.TextIOWrapper name=\d+:ResourceWarning")

TOKENS = 4
def tiny_spec(model: Path | str, workload: Workload, **changes: object) -> TrialSpec:
    fields: dict[str, object] = {"tokens_per_request": TOKENS, "timeout_s": 120.0,
                                 "stall_s": 60.0}
    fields.update(changes)
    return TrialSpec(str(model), Settings(n_threads=2, context_window=1024), workload,
                     **fields)  # type: ignore[arg-type]


def worker_pid() -> int:
    """The one trial worker this test process has running."""
    workers = [p.pid for p in workers_of(os.getpid(), recursive=False)]
    assert len(workers) == 1, workers
    return workers[0]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def group_gone(result: TrialResult) -> bool:
    """Neither the worker nor anything it started is left: its process group is empty."""
    assert result.pid is not None
    try:
        os.killpg(result.pid, 0)  # the worker leads its own group (start_new_session)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch):
    """Have the next workers fail as `KIND@POINT` says (see autotune.measure.faults)."""
    return lambda value: monkeypatch.setenv(ENV, value)


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
    assert [r.id for r in ok_result.requests] == [r.id for r in tiny_workload.requests]
    sent = {r.id: r for r in tiny_workload.requests}
    for record in ok_result.requests:
        # the worker filled in what the record's defaults would otherwise hide
        asked = sent[record.id]
        assert (record.conversation, record.turn) == (asked.conversation, asked.turn)
        assert record.latency_s > 0
        assert 0 < record.ttft_s <= record.latency_s
        assert record.prompt_tokens > 0
        assert record.generated == TOKENS
        assert record.reload is False
        assert record.pass_no == 0
        assert record.rss_bytes > 0


def test_ok_trial_cache_verdicts(ok_result: TrialResult) -> None:
    first_turns, follow_ups = ok_result.requests[:2], ok_result.requests[2:]
    assert [r.cache_hit for r in first_turns] == [None, None]
    assert [r.cache_hit for r in follow_ups] == [True, True]
    assert [r.reuse_source for r in follow_ups] == ["cache", "cache"]


def test_ok_trial_load_and_resources(ok_result: TrialResult) -> None:
    assert ok_result.load_s is not None and ok_result.load_s > 0
    assert ok_result.warmup_s is not None and ok_result.warmup_s > 0
    assert len(ok_result.pass_rss_bytes) == 1
    assert ok_result.peak_rss_bytes >= max(r.rss_bytes for r in ok_result.requests)
    assert ok_result.wall_s > ok_result.load_s
    assert ok_result.ended_at is not None
    assert ok_result.thread_probe is None
    assert ok_result.settings == Settings(n_threads=2, context_window=1024)


def test_ok_trial_is_plain_data(ok_result: TrialResult) -> None:
    data = json.loads(json.dumps(ok_result.to_dict()))
    assert (data["version"], data["status"], len(data["requests"])) == (1, "ok", 4)
    assert TrialResult.from_dict(data) == ok_result  # every sample kept, read back typed


def test_spec_goes_to_the_worker_as_one_json_line(tiny_workload: Workload) -> None:
    spec = tiny_spec("m.gguf", tiny_workload, passes=2)
    wire = spec.to_wire()
    assert "\n" not in wire
    assert json.loads(wire)["settings"]["n_threads"] == 2
    back = TrialSpec.from_wire(wire)
    assert (back.model_path, back.settings, back.workload) == (spec.model_path, spec.settings,
                                                               spec.workload)
    assert (back.passes, back.tokens_per_request, back.clients) == (2, TOKENS, 1)


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


def test_killed_worker_is_crashed(model_path: Path, tiny_workload: Workload, fault,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fault("hang@request:1")  # it cannot finish before the kill lands
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
    assert len(result.requests) == 1
    assert gone(killed[0]) and group_gone(result)
    monkeypatch.delenv(ENV)
    assert_runs_ok(model_path, tiny_workload)


def test_hung_worker_is_timed_out_by_the_stall_limit(model_path: Path,
                                                     tiny_workload: Workload, fault,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fault("hang@load")
    # loading may take as long as this machine needs; after it, 1 s of silence is a hang
    result = run_trial(tiny_spec(model_path, tiny_workload, stall_s=1.0, load_timeout_s=300.0))
    assert result.status == TIMED_OUT
    assert result.reason == "worker hung: no progress for 1 s"
    assert result.load_s is not None and result.requests == []
    assert result.returncode == -signal.SIGKILL
    assert group_gone(result)
    monkeypatch.delenv(ENV)
    assert_runs_ok(model_path, tiny_workload)


def test_loading_gets_its_own_limit_longer_than_the_stall_limit(
        model_path: Path, tiny_workload: Workload, fault) -> None:
    fault("hang@start")
    result = run_trial(tiny_spec(model_path, tiny_workload, stall_s=0.2, load_timeout_s=2.5))
    assert result.status == TIMED_OUT
    assert result.reason == "worker hung: model not loaded after 2.5 s"
    assert result.wall_s >= 2.5  # the 0.2 s stall limit did not apply before loading
    assert group_gone(result)


def test_the_trial_limit_caps_the_load_limit(model_path: Path, tiny_workload: Workload,
                                             fault) -> None:
    fault("hang@start")
    result = run_trial(tiny_spec(model_path, tiny_workload, timeout_s=2.0,
                                 load_timeout_s=600.0))
    assert result.status == TIMED_OUT
    assert result.reason == "trial ran past its 2 s limit"
    assert group_gone(result)


def test_load_limit_grows_with_the_model_file(model_path: Path, tiny_workload: Workload,
                                              tmp_path: Path) -> None:
    big = tmp_path / "big.gguf"
    with open(big, "wb") as file:
        file.truncate(20 * 10**9)  # sparse: 20 GB on paper, nothing on disk
    base = max(STARTUP_S, 60.0)  # start-up, or tiny_spec's stall limit if longer
    small = tiny_spec(model_path, tiny_workload, timeout_s=3600.0)
    assert small.load_limit_s() == pytest.approx(
        base + model_path.stat().st_size / SLOW_DISK_BYTES_PER_S)
    large = tiny_spec(big, tiny_workload, timeout_s=3600.0)
    assert large.load_limit_s() == pytest.approx(base + 20e9 / SLOW_DISK_BYTES_PER_S)
    assert tiny_spec(big, tiny_workload, timeout_s=300.0).load_limit_s() == 300.0
    assert tiny_spec(tmp_path / "absent.gguf", tiny_workload).load_limit_s() == base
    assert tiny_spec(big, tiny_workload, load_timeout_s=7.0).load_limit_s() == 7.0


@pytest.mark.parametrize(("timeout_s", "stall_s"), [
    (300.0, 120.0), (1800.0, 180.0), (60.0, 60.0), (20000.0, 2000.0)])
def test_stall_limit_follows_the_trial_limit(tiny_workload: Workload, timeout_s: float,
                                             stall_s: float) -> None:
    spec = TrialSpec("m.gguf", Settings(), tiny_workload, timeout_s=timeout_s)
    assert spec.stall_limit_s() == stall_s
    assert TrialSpec("m.gguf", Settings(), tiny_workload, timeout_s=timeout_s,
                     stall_s=5.0).stall_limit_s() == 5.0


def test_a_worker_that_never_reads_its_spec_cannot_block_the_parent(
        model_path: Path, fault) -> None:
    # 4 MB of spec: far more than a pipe holds, so writing it blocks until the worker reads
    huge = build("huge", [{"id": "long", "system": "word " * 800_000,
                           "turns": [{"user": "Hello?"}]}])
    fault("hang@start")
    results: list[TrialResult] = []
    runner = threading.Thread(target=lambda: results.append(
        run_trial(tiny_spec(model_path, huge, timeout_s=2.0))), daemon=True)
    runner.start()
    runner.join(timeout=120)
    assert results, "run_trial blocked writing the spec past the trial's deadline"
    assert results[0].status == TIMED_OUT
    assert results[0].reason == "trial ran past its 2 s limit"
    assert group_gone(results[0])


@pytest.mark.parametrize(("value", "status", "words", "returncode", "requests"), [
    ("abort@start", CRASHED, "killed by SIGABRT", -signal.SIGABRT, 0),
    ("abort@load", CRASHED, "killed by SIGABRT", -signal.SIGABRT, 0),
    ("segfault@load", CRASHED, "killed by SIGSEGV", -signal.SIGSEGV, 0),
    ("segfault@request:2", CRASHED, "killed by SIGSEGV", -signal.SIGSEGV, 2),
    ("exit@start", FAILED, "status 1: fault injected: exiting with status 1", 1, 0),
    ("exit@warmup", FAILED, "status 1: fault injected: exiting with status 1", 1, 0),
    ("oom@load", OUT_OF_MEMORY, "what():  std::bad_alloc", -signal.SIGABRT, 0),
    ("oom@request:1", OUT_OF_MEMORY, "what():  std::bad_alloc", -signal.SIGABRT, 1),
])
def test_each_worker_fault_is_named_and_leaves_no_process(
        model_path: Path, tiny_workload: Workload, fault, value: str, status: str, words: str,
        returncode: int, requests: int) -> None:
    fault(value)
    result = run_trial(tiny_spec(model_path, tiny_workload))
    assert (result.status, result.returncode) == (status, returncode), result.reason
    assert words in result.reason
    assert len(result.requests) == requests
    assert f"{ENV}: " in result.stderr_tail
    assert group_gone(result)


@pytest.mark.parametrize("value", ["garbage@start", "garbage@load,garbage@request:3"])
def test_garbage_from_the_worker_is_read_past(model_path: Path, tiny_workload: Workload,
                                              fault, value: str) -> None:
    fault(value)
    result = run_trial(tiny_spec(model_path, tiny_workload))
    assert result.status == OK, result.reason
    assert len(result.requests) == len(tiny_workload.requests)
    # the bad bytes reached both readers, which read them as U+FFFD and carried on
    assert "\ufffd" in result.stderr_tail
    assert result.stderr_tail.count(f"{ENV}: garbage") == value.count("garbage")
    assert group_gone(result)


def test_a_worker_that_stops_talking_but_lives_is_killed(model_path: Path,
                                                         tiny_workload: Workload,
                                                         fault) -> None:
    fault("mute@load")
    result = run_trial(tiny_spec(model_path, tiny_workload))
    assert result.status == FAILED
    assert "closed its event stream but was still running" in result.reason
    assert result.returncode == -signal.SIGKILL
    assert group_gone(result)


@pytest.mark.parametrize("value", ["explode@load", "slow=soon@load"])
def test_a_bad_fault_value_fails_the_worker_loudly(model_path: Path, tiny_workload: Workload,
                                                  fault, value: str) -> None:
    fault(value)
    result = run_trial(tiny_spec(model_path, tiny_workload))
    assert result.status == FAILED
    assert result.reason.startswith(f"worker exited with status 2: {ENV}={value!r}")
    assert result.returncode == 2 and result.stderr_tail.strip().count("\n") == 0


def test_a_slow_fault_of_a_given_size_sleeps_that_long_in_each_request(
        model_path: Path, tiny_workload: Workload, fault) -> None:
    fault("slow=0.3@warmup")  # after the warm-up: every measured request sleeps 0.3 s
    result = run_trial(tiny_spec(model_path, tiny_workload))
    assert result.status == OK, result.reason
    assert f"{ENV}: slow=0.3@warmup" in result.stderr_tail
    # the sleep is inside each request's measured time: none can take less
    assert [r.latency_s >= 0.3 for r in result.requests] == [True] * len(tiny_workload.requests)


@pytest.mark.parametrize(("value", "faults"), [
    ("hang", [Fault("hang", "start")]),
    ("abort@load", [Fault("abort", "loaded")]),
    ("garbage@warmup, segfault@request:12",
     [Fault("garbage", "warmup"), Fault("segfault", "request", 12)]),
    ("slow", [Fault("slow", "start")]),
    ("slow=1.5@request:2", [Fault("slow", "request", 2, 1.5)]),
    ("slow=2e-3@load", [Fault("slow", "loaded", 1, 0.002)]),
    ("", []),
])
def test_fault_values(value: str, faults: list[Fault]) -> None:
    assert parse(value) == faults


def test_a_fault_reads_back_as_its_value() -> None:
    assert [str(f) for f in parse("slow=1.5@request:2,slow,hang@load")] == [
        "slow=1.5@request:2", "slow@start", "hang@load"]


@pytest.mark.parametrize("value", ["boom", "hang@lunch", "exit@request:x", "exit@request:0",
                                   "exit@load:2", "slow=", "slow=fast", "slow=-1", "slow=0",
                                   "slow=nan", "slow=inf", "hang=2@load"])
def test_bad_fault_values(value: str) -> None:
    with pytest.raises(ValueError, match="is not KIND@POINT"):
        parse(value)


def test_reaping_has_a_bound() -> None:
    # a process that outlives the wait (as one stuck in the kernel outlives SIGKILL): reap
    # gives up while it still runs, rather than waiting out its ten minutes
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert reap(sleeper, 0.3) is None
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_event_without_its_fields_fails_the_trial(tiny_workload: Workload) -> None:
    lines: queue.Queue = queue.Queue()
    for line in ("not json\n", "[1]\n", '{"event": "loaded", "load_s": 0.1}\n',
                 '{"event": "request", "id": "fruit/1"}\n'):
        lines.put(line)
    result = TrialResult(status=FAILED)
    ended, done = follow(lines, result, tiny_spec("m.gguf", tiny_workload), time.perf_counter(),
                         None)
    assert ended == (FAILED, "worker sent a request event without index, latency_s, rss_bytes")
    assert result.load_s == 0.1 and result.requests == [] and not done


def test_pruned_trial_stops_its_worker_at_once(model_path: Path, tiny_workload: Workload,
                                               fault, monkeypatch: pytest.MonkeyPatch) -> None:
    fault("hang@request:1")  # only the prune can end it
    pids: list[int] = []
    ending: list[str] = []  # what the parent did to the worker after the prune, in order

    def prune(record: dict) -> bool:
        pids.append(worker_pid())
        return True

    def kill_group(process: subprocess.Popen) -> int | None:
        ending.append("kill")
        return real_kill_group(process)

    def reap(process: subprocess.Popen, within_s: float) -> int | None:
        ending.append(f"wait {within_s:g} s")
        return real_reap(process, within_s)

    real_kill_group, real_reap = trial.kill_group, trial.reap
    monkeypatch.setattr(trial, "kill_group", kill_group)
    monkeypatch.setattr(trial, "reap", reap)
    result = run_trial(tiny_spec(model_path, tiny_workload), on_request=prune)
    assert result.status == PRUNED
    assert result.reason == "stopped after 1 requests"
    assert pids == [result.pid]
    # killed, not waited for: the kill came first, then only the wait for it to land
    assert ending == ["kill", f"wait {trial.REAP_S:g} s"]
    assert result.returncode == -signal.SIGKILL and result.ended_at is not None
    assert not psutil.pid_exists(pids[0]) and group_gone(result)
    monkeypatch.delenv(ENV)
    assert_runs_ok(model_path, tiny_workload)


def test_trial_past_its_time_limit(model_path: Path, tiny_workload: Workload,
                                   ok_result: TrialResult) -> None:
    # A million passes never end by themselves; the limit must hold even while records
    # keep coming faster than the parent's 50 ms poll. So that they are coming when it
    # strikes, it leaves three times what a whole trial took on this machine.
    limit = max(1.5, round(3 * ok_result.wall_s, 1))
    result = run_trial(tiny_spec(model_path, tiny_workload, tokens_per_request=1,
                                 passes=10**6, timeout_s=limit))
    assert result.status == TIMED_OUT
    assert result.reason == f"trial ran past its {limit:g} s limit"
    assert result.requests  # it struck mid-workload
    assert len(result.pass_rss_bytes) < 10**6  # far from the million passes
    assert result.returncode == -signal.SIGKILL  # the parent ended it, the worker did not
    assert result.pid is not None and not psutil.pid_exists(result.pid)
    assert group_gone(result)


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
