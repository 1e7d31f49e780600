"""One measurement at a time: the machine lock waits, refuses, and dies with its holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import AUTOTUNE, QUICK_STUDY, clean_env, workers_of

from autotune.errors import AutotuneError
from autotune.measure.machine_lock import LOCK_FILE_ENV, Holder, MachineBusy, MachineLock
from autotune.measure.records import Status
from autotune.studies.liveness import is_alive
from autotune.studies.records import TrialRecord
from autotune.studies.storage import open_storage

HOLD = ("import sys\n"
        "from autotune.measure.machine_lock import MachineLock\n"
        "with MachineLock(path=sys.argv[1]).held('tune'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n")


# Takes the machine once it is its turn, writes its name into the order file, and lets go.
WAIT = ("import sys\n"
        "from autotune.measure.machine_lock import MachineLock\n"
        "lock = MachineLock(path=sys.argv[1],\n"
        "                   on_wait=lambda h: print('waiting', h.queued, flush=True))\n"
        "with lock.held('bench'):\n"
        "    with open(sys.argv[2], 'a') as order:\n"
        "        order.write(sys.argv[3] + '\\n')\n")
# Takes the machine three times in a row, asking again as soon as it lets go; holds it the
# first time until its stdin has a line.
AGAIN = ("import sys\n"
         "from autotune.measure.machine_lock import MachineLock\n"
         "for turn in range(3):\n"
         "    with MachineLock(path=sys.argv[1]).held('tune'):\n"
         "        with open(sys.argv[2], 'a') as order:\n"
         "            order.write(f'again{turn}\\n')\n"
         "        if turn == 0:\n"
         "            print('held', flush=True)\n"
         "            sys.stdin.readline()\n")


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    return tmp_path / "measure.lock"


@pytest.fixture
def holder(lock_file: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the machine until its stdin closes (or it is killed)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_file)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    with process:  # closes its pipes on the way out
        yield process
        if process.poll() is None:
            process.kill()


def test_a_second_measurement_is_refused_naming_the_holder(holder, lock_file: Path) -> None:
    with pytest.raises(MachineBusy) as caught, MachineLock(wait=False, path=lock_file
                                                           ).held("bench"):
        pytest.fail("took a machine that another process holds")
    message = str(caught.value)
    assert f"pid {holder.pid}" in message and "autotune tune" in message
    assert "leave out wait=False to queue" in message and "--" not in message
    assert "\n" not in message and caught.value.exit_status == 1


def test_sigkill_of_the_holder_frees_the_machine_at_once(holder, lock_file: Path) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with MachineLock(wait=False, path=lock_file).held("bench"):  # refuses if not free now
        record = json.loads(lock_file.read_text())
    assert record["pid"] == os.getpid() and record["purpose"] == "bench"


def test_a_waiting_measurement_says_so_then_runs_when_the_holder_ends(holder,
                                                                       lock_file: Path) -> None:
    seen: list[Holder] = []
    entered = threading.Event()

    def measure() -> None:
        with MachineLock(wait=True, on_wait=seen.append, path=lock_file).held("bench"):
            entered.set()

    waiter = threading.Thread(target=measure)
    waiter.start()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [h.pid for h in seen] == [holder.pid]
    assert not entered.is_set()
    assert holder.stdin is not None
    holder.stdin.close()  # the holder leaves its block and exits
    waiter.join(timeout=30)
    assert entered.is_set()


def waiter(lock_file: Path, order: Path, name: str) -> subprocess.Popen[str]:
    """A process that asks for the machine; returns once it has said it waits, and how
    many it said were queued before it (as its first line)."""
    process = subprocess.Popen([sys.executable, "-c", WAIT, str(lock_file), str(order), name],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.said = process.stdout.readline()  # type: ignore[attr-defined]
    assert process.said.startswith("waiting"), process.said  # type: ignore[attr-defined]
    return process


def ended(process: subprocess.Popen[str]) -> int:
    """Its exit status, once it has ended (its pipes closed)."""
    process.communicate(timeout=60)
    return process.returncode


def tickets(lock_file: Path) -> list[str]:
    return [p.name for p in lock_file.with_name(lock_file.name + ".queue").iterdir()]


def test_waiting_commands_are_served_in_the_order_they_asked(holder, lock_file: Path,
                                                             tmp_path: Path) -> None:
    order = tmp_path / "order"
    waiters = [waiter(lock_file, order, name) for name in ("first", "second", "third")]
    assert [w.said for w in waiters] == ["waiting 0\n", "waiting 1\n", "waiting 2\n"]
    assert not order.exists()
    assert holder.stdin is not None
    holder.stdin.close()
    assert [ended(process) for process in waiters] == [0, 0, 0]
    assert order.read_text().split() == ["first", "second", "third"]
    assert tickets(lock_file) == []  # each left the queue as the machine became its own


def test_a_command_that_asks_again_at_once_waits_behind_the_one_waiting(
        lock_file: Path, tmp_path: Path) -> None:
    # flock(2) alone would let the holder take the machine back before the waiter woke,
    # turn after turn: the waiter must come right after the holder's first turn
    order = tmp_path / "order"
    again = subprocess.Popen([sys.executable, "-c", AGAIN, str(lock_file), str(order)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    with again:
        assert again.stdout is not None and again.stdout.readline() == "held\n"
        other = waiter(lock_file, order, "waiter")
        assert again.stdin is not None
        again.stdin.write("go\n")
        again.stdin.flush()
        assert ended(again) == 0 and ended(other) == 0
    assert order.read_text().split() == ["again0", "waiter", "again1", "again2"]


def test_a_killed_waiter_leaves_the_queue(holder, lock_file: Path, tmp_path: Path) -> None:
    order = tmp_path / "order"
    doomed = waiter(lock_file, order, "doomed")
    behind = waiter(lock_file, order, "behind")
    assert behind.said == "waiting 1\n"
    doomed.kill()
    ended(doomed)
    with pytest.raises(MachineBusy, match="with 1 more waiting before this one"), \
            MachineLock(wait=False, path=lock_file).held("bench"):
        pass  # the dead ticket does not count; the live one behind it does
    assert holder.stdin is not None
    holder.stdin.close()
    assert ended(behind) == 0
    assert order.read_text().split() == ["behind"] and tickets(lock_file) == []


def test_hostile_queue_entries_neither_block_nor_follow_links(lock_file: Path,
                                                              tmp_path: Path) -> None:
    queue = lock_file.with_name(lock_file.name + ".queue")
    queue.mkdir()
    (queue / f"{1:020d}-1").write_text("a ticket nobody holds: a dead waiter")
    (queue / "$(reboot)\n").write_text("not a ticket")
    target = tmp_path / "precious"
    target.write_text("keep me")
    (queue / f"{2:020d}-2").symlink_to(target)
    with MachineLock(wait=False, path=lock_file).held("bench"):
        pass
    assert target.read_text() == "keep me"  # the link is no waiter, and stays unread
    assert sorted(tickets(lock_file)) == ["$(reboot)\n", f"{2:020d}-2"]


def test_a_planted_queue_link_is_not_followed(lock_file: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lock_file.with_name(lock_file.name + ".queue").symlink_to(elsewhere)
    with pytest.raises(AutotuneError, match=LOCK_FILE_ENV), \
            MachineLock(path=lock_file).held("bench"):
        pass
    assert list(elsewhere.iterdir()) == []


def test_a_hostile_lock_record_is_never_echoed(lock_file: Path, holder) -> None:
    # Whatever another user writes into the shared file, only a pid and a known word show.
    lock_file.write_text(json.dumps({"pid": "$(reboot)", "purpose": "\x1b[31m[red]pwn",
                                     "since": "yesterday"}))
    with pytest.raises(MachineBusy) as caught, MachineLock(wait=False, path=lock_file
                                                           ).held("bench"):
        pass
    assert "autotune measurement (another process)" in str(caught.value)
    assert "\x1b" not in str(caught.value) and "reboot" not in str(caught.value)


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    link = tmp_path / "measure.lock"
    link.symlink_to(target)
    with pytest.raises(AutotuneError, match=LOCK_FILE_ENV), \
            MachineLock(path=link).held("bench"):
        pass
    assert target.read_text() == "keep me"


def test_cannot_tell_means_alive() -> None:
    me = psutil.Process()
    assert is_alive(None, None)  # the owner is not recorded yet
    assert is_alive(me.pid, me.create_time())
    assert not is_alive(me.pid, me.create_time() - 100)  # the pid was reused
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not is_alive(dead.pid, time.time())


def test_an_exited_process_not_yet_reaped_is_dead() -> None:
    # A killed tuner's flock is gone as it exits, before its parent reaps it: a tuner that
    # took the machine at that moment must see the zombie as dead, or keep its orphan.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(child.pid)
    started = process.create_time()
    deadline = time.monotonic() + 30
    while process.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.status() == psutil.STATUS_ZOMBIE
    assert not is_alive(child.pid, started)
    child.wait()


def test_bench_with_no_wait_refuses_in_one_line(holder, lock_file: Path, model_path: Path,
                                                tmp_path: Path) -> None:
    done = subprocess.run([AUTOTUNE, "bench", str(model_path), "--no-wait"], cwd=tmp_path,
                          env=clean_env(**{LOCK_FILE_ENV: str(lock_file)}),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and f"pid {holder.pid}" in done.stderr
    assert "leave out --no-wait to queue" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_bench_waits_for_the_machine_with_a_visible_message(
        holder, lock_file: Path, model_path: Path, tiny_workload_file: Path,
        tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [AUTOTUNE, "bench", str(model_path), "--workload", str(tiny_workload_file),
         "--tokens", "2", "--json"], cwd=tmp_path,
        env=clean_env(JARVIS_N_THREADS="1", **{LOCK_FILE_ENV: str(lock_file)}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert bench.stderr is not None
        line = bench.stderr.readline()
        assert "waiting for the machine" in line and f"pid {holder.pid}" in line
        assert not workers_of(bench.pid), "measured while waiting"
        holder.send_signal(signal.SIGKILL)
        out, err = bench.communicate(timeout=300)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate() == 0, err
    assert json.loads(out)["status"] == "ok"


def running_trials(studies: Path) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(studies)
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        return []
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    return study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


@pytest.mark.slow
def test_a_second_tuner_waits_and_never_fails_a_live_tuners_trial(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path, lock_file: Path) -> None:
    studies = tmp_path / "studies"
    # --fix makes the guide's defaults, the one trial the second tuner runs after the advice
    # its first worker hangs in, a finalist like any other: it has something to confirm
    args = [AUTOTUNE, str(model_path), "--studies-dir", str(studies), "--workload",
            str(tiny_workload_file), *QUICK_STUDY, "--trial-timeout", "600",
            "--fix", "n_threads=1"]
    env = {LOCK_FILE_ENV: str(lock_file)}
    first = subprocess.Popen(  # its first worker loads the model, then hangs
        [*args, "--trials", "5", "--out", str(tmp_path / "first.env")], cwd=tmp_path,
        env=clean_env(AUTOTUNE_WORKER_FAULT="hang@load", **env),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        deadline = time.monotonic() + 120
        while not running_trials(studies) and time.monotonic() < deadline:
            time.sleep(0.2)
        (mine,) = running_trials(studies)
        assert mine.user_attrs["pid"] == first.pid
        second = subprocess.Popen(
            [*args, "--trials", "1", "--out", str(tmp_path / "second.env"), "--json"],
            cwd=tmp_path, env=clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        assert second.stderr is not None
        waiting = ""
        while "waiting for the machine" not in waiting:
            line = second.stderr.readline()
            assert line, "the second tuner never said it was waiting"
            waiting += line
        assert f"pid {first.pid}" in waiting
        still = {t.number: t for t in running_trials(studies)}
        assert mine.number in still and still[mine.number].user_attrs["pid"] == first.pid
        workers = workers_of(first.pid)
        first.send_signal(signal.SIGKILL)
        first.wait()
        _gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, "the killed tuner's worker outlived it"
        out, err = second.communicate(timeout=600)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
    assert second.returncode == 0, err
    assert "Traceback" not in err
    storage = open_storage(studies)
    name = json.loads(out)["study_name"]
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    orphan = trials[mine.number]
    assert orphan.state == optuna.trial.TrialState.FAIL
    assert TrialRecord.read(orphan).status == Status.INTERRUPTED
    finished = [t for t in trials if t.number != mine.number]
    assert [t.user_attrs["status"] for t in finished] == ["ok"]
    assert not running_trials(studies)
