"""The study storage: journal repair, its lock, and bad --storage / --studies-dir inputs.

These tests measure nothing: studies here are written with Optuna's own API into the real
journal, which is then damaged on purpose. test_storage_faults.py does the same to studies
the real tuner wrote.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import clean_env
from mounts import bound, read_only, remount, report

import autotune
from autotune.errors import AutotuneError
from autotune.studies import faults, journal
from autotune.studies.storage import location, open_storage, redact

SECRET = "s3cr3t-pa55"


def make_study(folder: Path, name: str = "kept", trials: int = 3) -> Path:
    """A study of `trials` finished trials in `folder`'s journal; returns the journal."""
    storage = open_storage(folder)
    study = optuna.create_study(study_name=name, storage=storage)
    study.set_user_attr("model", {"name": "m", "path": "/models/m.gguf"})
    for value in range(trials):
        trial = study.ask()
        trial.set_user_attr("status", "ok")
        study.tell(trial, float(value))
    return folder / "autotune.journal"


def trial_counts(location: Path) -> dict[str, int]:
    storage = open_storage(storage=str(location), create=False)
    return {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}


def tear_last_record(path: Path, keep: float = 0.5) -> None:
    """Cut the journal inside its last record, as a writer killed mid-append leaves it."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: start + int((len(data) - start) * keep)])


def repair_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == journal.__name__
            and r.levelno >= logging.WARNING]


def backups(folder: Path) -> list[Path]:
    return sorted(folder.glob("autotune.journal.*.bak"))


def one_error_line(done: subprocess.CompletedProcess[str], *needles: str, status: int = 2
                   ) -> None:
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()  # tune's progress display adds a blank line
    assert line.startswith("autotune: error: ")
    for needle in needles:
        assert needle in done.stderr


def test_a_torn_last_record_then_a_write_keeps_every_study(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = make_study(tmp_path, "first")
    make_study(tmp_path, "second", trials=2)
    before = path.read_bytes()
    tear_last_record(path)
    torn = path.read_bytes()

    study = optuna.load_study(study_name="first", storage=open_storage(tmp_path))
    study.set_user_attr("after", 1)  # the append that used to fuse onto the torn record

    assert trial_counts(tmp_path) == {"first": 3, "second": 2}
    assert len(repair_lines(caplog)) == 1 and "torn last record" in repair_lines(caplog)[0]
    (backup,) = backups(tmp_path)
    assert backup.read_bytes() == torn
    assert path.read_bytes().startswith(before[: before.rstrip(b"\n").rfind(b"\n") + 1])
    reloaded = optuna.load_study(study_name="first", storage=open_storage(tmp_path))
    assert reloaded.user_attrs["after"] == 1


def test_a_journal_broken_by_a_plain_optuna_append_is_recovered(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # What earlier versions left: a record appended straight after a torn one, on one line.
    path = make_study(tmp_path)
    tear_last_record(path)
    plain = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path)))
    optuna.load_study(study_name="kept", storage=plain).set_user_attr("fused", "yes")
    with pytest.raises(ValueError):  # Optuna itself can no longer read it after one more
        optuna.load_study(study_name="kept", storage=plain).set_user_attr("more", 1)
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))

    study = optuna.load_study(study_name="kept", storage=open_storage(tmp_path))
    assert study.user_attrs["fused"] == "yes" and study.user_attrs["more"] == 1
    assert len(study.trials) == 3
    assert len(repair_lines(caplog)) == 1 and "split line" in repair_lines(caplog)[0]
    assert len(backups(tmp_path)) == 1


def test_a_whole_last_record_missing_its_newline_is_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = make_study(tmp_path)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert trial_counts(tmp_path) == {"kept": 3}
    study = optuna.load_study(study_name="kept", storage=open_storage(tmp_path))
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert "newline" in repair_lines(caplog)[0]


def test_a_sound_journal_is_never_rewritten(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    path = make_study(tmp_path)
    inode = path.stat().st_ino
    assert trial_counts(tmp_path) == {"kept": 3}
    assert path.stat().st_ino == inode and not backups(tmp_path) and not repair_lines(caplog)


def test_garbage_in_the_middle_is_one_line_that_says_how_to_recover(
        tmp_path: Path, run_cli) -> None:
    path = make_study(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = b"this line was typed in by hand\n"
    path.write_bytes(b"".join(lines))
    damaged = path.read_bytes()
    for command in (("show", "kept"), ("compare",), ("export", "kept")):
        done = run_cli(*command, "--studies-dir", str(tmp_path), cwd=tmp_path)
        one_error_line(done, "line 4 is not a journal record", "head -n 3")
    with pytest.raises(AutotuneError, match="line 4 is not a journal record"):
        autotune.load_studies(tmp_path)
    assert path.read_bytes() == damaged and not backups(tmp_path)
    # The advice works: the first three records are a readable journal.
    kept = tmp_path / "repaired.journal"
    kept.write_bytes(b"".join(lines[:3]))
    assert trial_counts(kept) == {"kept": 1}


@pytest.mark.parametrize("content", [os.urandom(4096), b"\x00" * 100,
                                     b"SQLite format 3\x00" + os.urandom(200)])
def test_a_journal_that_is_binary_garbage_is_one_line(tmp_path: Path, content: bytes,
                                                      run_cli) -> None:
    (tmp_path / "autotune.journal").write_bytes(content)
    for command in (("show", "x"), ("compare",), ("export", "x")):
        done = run_cli(*command, "--studies-dir", str(tmp_path), cwd=tmp_path)
        one_error_line(done, "is not an Optuna study journal", "move this one away")
    assert (tmp_path / "autotune.journal").read_bytes() == content


def test_a_sqlite_file_that_is_not_a_database_is_one_line(tmp_path: Path, run_cli) -> None:
    (tmp_path / "studies.db").write_bytes(b"not a database at all\n" * 100)
    for command in (("show", "x"), ("compare",)):
        done = run_cli(*command, "--storage", "sqlite:///studies.db", cwd=tmp_path)
        one_error_line(done, "cannot open it", "Optuna database")


def test_reading_a_missing_sqlite_file_creates_nothing(tmp_path: Path, run_cli) -> None:
    for command in (("show", "x"), ("compare",), ("export", "x")):
        done = run_cli(*command, "--storage", "sqlite:///typo.db", cwd=tmp_path)
        one_error_line(done, "typo.db does not exist")
    with pytest.raises(AutotuneError, match="does not exist"):
        autotune.load_studies(f"sqlite:///{tmp_path / 'typo.db'}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url, shown", [
    (f"postgresql://tuner:{SECRET}@db.local:5432/studies",
     "postgresql://tuner:***@db.local:5432/studies"),
    (f"mysql+pymysql://tuner:{SECRET}@db.local/studies?charset=utf8",
     "mysql+pymysql://tuner:***@db.local/studies?charset=utf8"),
    (f"postgresql://tuner:{SECRET}@db.local", "postgresql://tuner:***@db.local"),
    (f"redis://:{SECRET}@localhost:6379/0", "redis://:***@localhost:6379/0"),
    (f"postgresql://db.local/studies?user=tuner&password={SECRET}",
     "postgresql://db.local/studies?user=tuner&password=***"),
    ("sqlite:////srv/with@sign/studies.db", "sqlite:////srv/with@sign/studies.db"),
    ("studies/autotune.journal", "studies/autotune.journal"),
])
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert SECRET not in location(storage=url)


def test_no_command_prints_the_password_of_a_storage_url(tmp_path: Path, small_gguf: Path,
                                                         run_cli) -> None:
    url = f"postgresql://tuner:{SECRET}@127.0.0.1:9/studies"
    for command in (("show", "x"), ("compare", "--json"), ("export", "x"),
                    (str(small_gguf), "--json", "--out", str(tmp_path / "j.env"))):
        done = run_cli(*command, "--storage", url, cwd=tmp_path)
        one_error_line(done, "postgresql://tuner:***@127.0.0.1:9/studies")
        assert SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize("studies_dir, problem", [
    ("missing/deeper/studies", "missing/deeper does not exist"),
    ("a-file/studies", "a-file is not a folder"),
    ("a-file", "cannot create the studies folder a-file"),
])
def test_a_studies_dir_that_cannot_be_made_is_one_line(tmp_path: Path, small_gguf: Path,
                                                       studies_dir: str, problem: str,
                                                       run_cli) -> None:
    (tmp_path / "a-file").write_text("in the way\n")
    done = run_cli(str(small_gguf), "--studies-dir", studies_dir, "--out", "j.env",
                   cwd=tmp_path)
    one_error_line(done, problem)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def start_holder(tmp_path: Path) -> subprocess.Popen[bytes]:
    """Another live process, whose identity a lock file can name."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                            env=clean_env())


def write_lock(journal_path: Path, pid: int, started: float) -> Path:
    lock = Path(f"{journal_path}.lock")
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": pid, "started": started}))
    return lock


def acquire_in_thread(journal_path: Path, also: threading.Event | None = None
                      ) -> threading.Event:
    """Take the journal's lock and give it back in a thread; the event says it is done
    (and so does `also`, when given)."""
    acquired = threading.Event()

    def take() -> None:
        lock = journal.HolderLock(str(journal_path))
        lock.acquire()
        lock.release()
        acquired.set()
        if also is not None:
            also.set()

    threading.Thread(target=take, daemon=True).start()
    return acquired


def left_held(monkeypatch: pytest.MonkeyPatch, times: int = 3) -> threading.Event:
    """Set once waiters have found the lock held by a holder they cannot call dead, and
    left it, `times` times: a waiter that has looked, not one that has not started yet."""
    seen = threading.Event()
    kept: list[bool] = []
    real = journal.HolderLock.break_if_stale

    def looked(self: journal.HolderLock) -> bool:
        broken = real(self)
        if not broken:
            kept.append(True)
            if len(kept) >= times:
                seen.set()
        return broken

    monkeypatch.setattr(journal.HolderLock, "break_if_stale", looked)
    return seen


def test_a_lock_waits_for_a_live_holder_and_is_broken_when_it_dies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "LOCK_GRACE_S", 1e9)  # only a dead holder frees the lock
    path = make_study(tmp_path)
    holder = start_holder(tmp_path)
    try:
        lock = write_lock(path, holder.pid, psutil.Process(holder.pid).create_time())
        kept = left_held(monkeypatch)
        acquired = acquire_in_thread(path, also=kept)  # a lock taken wrongly shows at once
        assert kept.wait(120), "the waiter neither took the lock nor looked at it"
        assert not acquired.is_set(), "took a lock whose holder is alive"
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert acquired.wait(120), "a lock left by a dead process was not broken"
    assert not lock.exists()


def test_a_lock_of_a_reused_pid_is_stale_and_one_that_names_no_holder_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "LOCK_GRACE_S", 1e9)
    path = make_study(tmp_path)
    me = psutil.Process()
    write_lock(path, me.pid, me.create_time() - 1000)  # same pid, another process's start
    assert acquire_in_thread(path).wait(120)
    Path(f"{path}.lock").write_text("")  # a plain Optuna holder: cannot tell, so alive
    kept = left_held(monkeypatch)
    waiting = acquire_in_thread(path, also=kept)
    assert kept.wait(120), "the waiter neither took the lock nor looked at it"
    assert not waiting.is_set(), "took a lock that names no holder"
    os.unlink(f"{path}.lock")  # what the plain Optuna holder does when it is done
    assert waiting.wait(120)


WRITER = """
import sys, optuna
from autotune.studies.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="kept", storage=open_storage(sys.argv[1]))
for i in range(int(sys.argv[3])):
    study.set_user_attr(f"{sys.argv[2]}-{i}", "x" * 2000)
"""


def run_writer(folder: Path, tag: str, count: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), tag, str(count)],
                            env=clean_env(PYTHONPATH=os.pathsep.join(sys.path), **env),
                            stderr=subprocess.PIPE, text=True)


def test_concurrent_writers_and_one_killed_mid_write_lose_nothing(tmp_path: Path) -> None:
    make_study(tmp_path)
    writers = [run_writer(tmp_path, tag, 150) for tag in ("a", "b")]
    killed = run_writer(tmp_path, "killed", 150, **{faults.FAULT_VARIABLE: "torn-write:40"})
    killed.communicate(timeout=300)
    assert killed.returncode == -9
    for writer in writers:
        _, stderr = writer.communicate(timeout=300)
        assert writer.returncode == 0, stderr
        assert "Traceback" not in stderr
    attrs = optuna.load_study(study_name="kept", storage=open_storage(tmp_path)).user_attrs
    for tag in ("a", "b"):
        assert all(f"{tag}-{i}" in attrs for i in range(150))
    assert all(f"killed-{i}" in attrs for i in range(39)) and "killed-39" not in attrs
    assert trial_counts(tmp_path) == {"kept": 3}


def test_a_failed_append_leaves_no_partial_record(tmp_path: Path) -> None:
    path = make_study(tmp_path)
    before = path.read_bytes()
    limit = len(before) + 500
    code = ("import resource, signal, sys, optuna\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from autotune.studies.storage import open_storage\n"
            f"s = optuna.load_study(study_name='kept', storage=open_storage({str(tmp_path)!r}))\n"
            "s.set_user_attr('small', 1)\n"
            "try:\n    s.set_user_attr('big', 'x' * 5000)\n"
            "except Exception as err:\n    print(type(err).__name__, err)\n"
            "try:\n    s.set_user_attr('tiny', 2)\n"
            "except Exception as err:\n    print(type(err).__name__, err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(PYTHONPATH=os.pathsep.join(sys.path)), check=True)
    first, second = done.stdout.splitlines()
    assert first.startswith("StorageFailed cannot write to the study journal")
    assert "File too large" in first and "run the same command again" in first
    assert second == first  # nothing more is written after a failed write
    assert path.read_bytes().startswith(before) and path.read_bytes().endswith(b"\n")
    attrs = optuna.load_study(study_name="kept", storage=open_storage(tmp_path)).user_attrs
    assert attrs["small"] == 1 and "big" not in attrs and "tiny" not in attrs


def test_the_fault_switch_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.FAULT_VARIABLE, raising=False)
    off = faults.FaultSwitch()
    assert off.fault is None and off.cut_short(1) is None
    off.before_append("x.lock")
    monkeypatch.setenv(faults.FAULT_VARIABLE, "torn-write:3")
    torn = faults.FaultSwitch()
    assert [torn.cut_short(n) for n in (1, 2, 3, 4)] == [None, None, "torn-write", None]


def test_the_fault_switch_arms_after_the_nth_trial_is_kept() -> None:
    ended = [{"op_code": faults.SET_TRIAL_STATE, "trial_id": 0, "state": 1}]
    started = [{"op_code": faults.SET_TRIAL_STATE, "trial_id": 1, "state": 0}]
    switch = faults.FaultSwitch({faults.FAULT_VARIABLE: "no-space:2"})
    for logs in (ended, started):
        switch.after_append(logs)
        assert switch.cut_short(9) is None
    switch.after_append(ended)
    assert switch.cut_short(9) == "no-space"
    read_only = faults.FaultSwitch({faults.FAULT_VARIABLE: "read-only"})
    read_only.after_append(ended)
    with pytest.raises(OSError, match="Read-only file system"):
        read_only.before_append("x.lock")
    for bad in ("stop:0", "full", "no-space:x"):
        with pytest.raises(AutotuneError, match=faults.FAULT_VARIABLE):
            faults.FaultSwitch({faults.FAULT_VARIABLE: bad}).before_append("x.lock")


HOLD_LOCK = """
import sys
from autotune.studies.journal import SafeJournalBackend
try:
    with SafeJournalBackend(sys.argv[1]).locked():
        print("held", flush=True)
        sys.stdin.readline()  # the test makes the folder read-only meanwhile
except OSError as err:
    print(type(err).__name__, err.errno)
"""


def test_a_folder_made_read_only_under_a_held_lock_is_a_failed_write(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
        ) -> None:
    # Between taking the lock and releasing it no file is open, so a read-only remount can
    # fall there: the release must be a failed write (OSError), not Optuna's RuntimeError.
    folder = tmp_path / "studies"
    folder.mkdir()
    journal_path = folder / "autotune.journal"
    with bound(folder) as mounted:
        command = [sys.executable, "-c", HOLD_LOCK, str(journal_path)]
        holder = subprocess.Popen(command if mounted else read_only(command), text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE,
                                  env=clean_env(PYTHONPATH=os.pathsep.join(sys.path)))
        assert holder.stdout.readline() == "held\n", holder.stderr.read()
        if mounted:
            remount(folder, writable=False)
        else:
            folder.chmod(0o555)
        try:
            out, err = holder.communicate("go\n", timeout=60)
        finally:
            if mounted:
                remount(folder, writable=True)
            folder.chmod(0o755)
    assert holder.returncode == 0 and "Traceback" not in err, err
    expected = "OSError 30" if mounted else "PermissionError 13"
    assert out.strip() == expected
    assert Path(f"{journal_path}.lock").exists()  # it could not go; its holder is gone
    with journal.SafeJournalBackend(str(journal_path)).locked():
        pass  # taken at once: a lock whose holder is gone is broken without waiting
    assert not repair_lines(caplog) and not Path(f"{journal_path}.lock").exists()
    report(request, ("a read-only bind remount" if mounted else "chmod 555 (mounting is "
                     "not allowed here)") + f": the release raised {expected}")


def test_open_storage_copies_nothing_when_the_journal_is_sound(tmp_path: Path) -> None:
    make_study(tmp_path)
    shutil.copy(tmp_path / "autotune.journal", tmp_path / "other.journal")
    assert trial_counts(tmp_path / "other.journal") == {"kept": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["autotune.journal", "other.journal"]


def test_a_record_optuna_cannot_replay_is_one_line(tmp_path: Path, run_cli) -> None:
    path = make_study(tmp_path)
    with path.open("ab") as journal_file:
        journal_file.write(b'{"op_code":99,"worker_id":"from-the-future"}\n')
    for command in (("show", "kept"), ("compare",)):
        done = run_cli(*command, "--studies-dir", str(tmp_path), cwd=tmp_path)
        one_error_line(done, "cannot be read as a study journal", "restore it from a backup")


ORPHAN = """
import sys
import optuna
from autotune.studies.liveness import process_identity
from autotune.studies.storage import open_storage
where = sys.argv[1]
storage = open_storage(storage=where) if "://" in where else open_storage(where)
study = optuna.create_study(study_name="kept", storage=storage, load_if_exists=True)
trial = study.ask()
trial.set_user_attr("host", "here")
for key, value in process_identity().items():
    trial.set_user_attr(key, value)
"""


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_trial_whose_tuner_is_gone_is_failed_as_interrupted_once(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The orphan was created by another process, as a killed tuner's is; a rival that
    finds it already failed leaves it as it is."""
    from autotune.studies.storage import fail_orphaned_trials

    where = str(tmp_path) if kind == "journal" else f"sqlite:///{tmp_path / 'studies.db'}"
    subprocess.run([sys.executable, "-c", ORPHAN, where], check=True, timeout=120,
                   env=clean_env(PYTHONPATH=str(Path(autotune.__file__).parent.parent)))
    storage = open_storage(storage=where) if kind == "sqlite" else open_storage(tmp_path)
    study = optuna.load_study(study_name="kept", storage=storage)
    mine = study.ask()  # a live owner: this process
    mine.set_user_attr("host", "here")
    mine.set_user_attr("pid", os.getpid())
    mine.set_user_attr("pid_started", psutil.Process().create_time())
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))

    assert fail_orphaned_trials(study, storage, "elsewhere") == []
    assert fail_orphaned_trials(study, storage, "here") == [0]
    orphan, live = study.get_trials()
    assert orphan.state == optuna.trial.TrialState.FAIL
    assert orphan.user_attrs["status"] == "interrupted"
    assert live.state == optuna.trial.TrialState.RUNNING and "status" not in live.user_attrs

    monkeypatch.setattr(study, "get_trials", lambda **_: running)  # a rival's stale view
    assert fail_orphaned_trials(study, storage, "here") == []
