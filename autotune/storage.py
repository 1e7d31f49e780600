"""Where studies live: an embedded journal file under studies/, or any Optuna storage URL.

The default is Optuna's JournalStorage on a file (`studies/autotune.journal`): embedded,
append-only, and safe for several processes on one machine (it takes a file lock for each
write), and readable by `optuna-dashboard studies/autotune.journal`. `--storage URL`
takes any RDB URL Optuna accepts (`sqlite:///file.db`, `postgresql://...`) or the path of
another journal file.
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import psutil

from autotune.errors import AutotuneError

DEFAULT_STUDIES_DIR = "studies"
JOURNAL_FILE = "autotune.journal"
JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")


def journal_storage(path: Path) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path.parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    return optuna.storages.JournalStorage(backend)


def location(studies_dir: str | os.PathLike[str] | None = None,
             storage: str | None = None) -> str:
    """The storage as a user would name it: a URL, or the journal file's path."""
    if storage:
        return storage
    return str(Path(studies_dir or DEFAULT_STUDIES_DIR) / JOURNAL_FILE)


def open_storage(studies_dir: str | os.PathLike[str] | None = None,
                 storage: str | None = None, create: bool = True
                 ) -> optuna.storages.BaseStorage:
    """Open the studies folder's journal, or `storage` (a URL or a journal file path)."""
    if studies_dir and storage:
        raise AutotuneError("pass --studies-dir or --storage, not both")
    where = location(studies_dir, storage)
    if "://" in where:
        try:
            return optuna.storages.get_storage(where)
        except Exception as err:
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise AutotuneError(f"--storage {where}: cannot open it ({detail})") from None
    path = Path(where)
    if path.is_dir():
        path = path / JOURNAL_FILE
    if not create and not path.is_file():
        raise AutotuneError(f"no studies at {path} (run `autotune MODEL` first, or pass "
                            "--studies-dir / --storage)")
    if path.suffix not in JOURNAL_SUFFIXES:
        raise AutotuneError(f"--storage {where}: expected a URL such as sqlite:///studies.db "
                            f"or a journal file ending in {', '.join(JOURNAL_SUFFIXES)}")
    return journal_storage(path)


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage,
                                                                      include_best_trial=False))


def load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """A study by name; an unknown name is an AutotuneError listing the known ones."""
    names = study_names(storage)
    if name not in names:
        known = ", ".join(names) if names else "none"
        raise AutotuneError(f"no study named {name!r} (studies here: {known})")
    return optuna.load_study(study_name=name, storage=storage)


def process_identity() -> dict[str, object]:
    """Enough to tell later whether the process running a trial is still alive."""
    me = psutil.Process()
    return {"pid": me.pid, "pid_started": me.create_time()}


def is_alive(pid: object, started: object) -> bool:
    """Whether the process that recorded (pid, start time) still runs; unsure means alive.

    A trial whose owner cannot be told apart from a live one is never failed: failing a
    live tuner's trial would throw away a measurement in progress.
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True  # the owner is not written yet (or unreadable): cannot tell
    try:
        process_started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, OSError):
        return True
    try:
        return abs(process_started - float(started)) < 1e-3  # else the pid was reused
    except (TypeError, ValueError):
        return True


def fail_orphaned_trials(study: optuna.Study, host: str) -> list[int]:
    """Mark FAIL the RUNNING trials whose tuner process on this host is gone (it was killed).

    Trials of other hosts, and trials whose owner this host cannot identify, are left alone.
    """
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and not is_alive(attrs.get("pid"), attrs.get("pid_started")):
            try:
                study._storage.set_trial_user_attr(trial._trial_id, "status", "interrupted")
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another tuner failed it first
            failed.append(trial.number)
    return failed
