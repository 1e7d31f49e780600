"""Where studies live: an embedded journal file under studies/, or any Optuna storage URL.

The default is Optuna's JournalStorage on a file (`studies/autotune.journal`): embedded,
append-only, and safe for several processes on one machine (it takes a file lock for each
write), and readable by `optuna-dashboard studies/autotune.journal`. autotune opens it
through `autotune.journal`, which repairs a record torn by a killed writer and rolls back
a write that failed on a full disk (see there for why). `storage=URL` takes any RDB URL
Optuna accepts (`sqlite:///file.db`, `postgresql://...`) or the path of another journal
file. A URL is only ever shown with its password hidden (`redact`).

A trial whose tuner died is failed so that it leaves no hole: in a journal (or a SQLite
file), every tuner runs on one machine, and the next one to start fails the RUNNING trials
whose process is gone (`fail_orphaned_trials`). In a database server shared by a fleet, the
owner may be on another machine, so such a study uses Optuna's heartbeat instead: each
running trial records a heartbeat every `HEARTBEAT_INTERVAL_S`; before each trial a tuner
fails the trials whose last heartbeat is older than the grace period (longer than the
longest trial may take, so only a dead tuner's trial is ever failed), and queues it again
to be run by whoever comes next (`max_retry` times).
"""

from __future__ import annotations

import functools
import math
import os
import re
import time
import warnings
from pathlib import Path

import optuna

from autotune.errors import AutotuneError, Option, StorageFailed
from autotune.measure.records import Status
from autotune.studies.liveness import is_alive
from autotune.studies.records import TrialRecord, keep, trial_attrs

DEFAULT_STUDIES_DIR = "studies"
JOURNAL_FILE = "autotune.journal"
JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")
# The two ways to say where studies live, named in errors as the caller's own options do.
EITHER_PLACE = (Option("studies_dir"), " or ", Option("storage"))
# Heartbeats of an RDB study on a database server: every interval; a trial whose last
# heartbeat is older than its longest run plus the margin is failed and run again.
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_MARGIN_S = 60
HEARTBEAT_RETRIES = 2
# "INTERVAL,GRACE" in seconds, overriding both: for tests that kill a tuner on purpose.
HEARTBEAT_ENV = "AUTOTUNE_HEARTBEAT"
CREATE_ATTEMPTS = 3
SECRET_QUERY = re.compile(r"((?:password|passwd|pwd|secret|token)=)[^&;]*", re.IGNORECASE)


def redact(where: str) -> str:
    """A storage location fit to print: the password of a URL replaced by ***."""
    scheme, sep, rest = where.partition("://")
    if not sep:
        return where
    authority_end = rest.find("/", rest.rfind("@") + 1) if "@" in rest else -1
    authority = rest if authority_end == -1 else rest[:authority_end]
    userinfo, at, host = authority.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        rest = f"{user}:***@{host}" + ("" if authority_end == -1 else rest[authority_end:])
    return SECRET_QUERY.sub(r"\1***", f"{scheme}://{rest}")


def hide_secrets(text: str, where: str) -> str:
    """`text` (an error from a driver, say) without the password that `where` carries."""
    userinfo = where.partition("://")[2].rpartition("@")[0]
    password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
    return text.replace(password, "***") if password else text


def journal_storage(path: Path, create: bool = True) -> optuna.storages.BaseStorage:
    """The journal at `path` through autotune's safe backend, checked (and repaired) first.

    With `create`, the folder is made and writing is tried for real (the lock file is
    taken and released) so that a tuner finds out before it measures anything.
    """
    from autotune.studies.journal import NO_SPACE, SafeJournalBackend, check_on_open

    if create:
        make_studies_folder(path.parent)
    try:
        backend = SafeJournalBackend(str(path))
        if create:
            open(path, "ab").close()  # the journal itself may be read-only
            with backend.locked():
                pass
    except OSError as err:
        if err.errno in NO_SPACE:  # nothing is wrong with the command: run it again
            raise StorageFailed(f"the studies folder {path.parent} cannot be written "
                                f"({err.strerror}): nothing was measured; free some space "
                                "on its disk and run the same command again") from None
        raise AutotuneError(f"the studies folder {path.parent} cannot be written "
                            f"({err.strerror}): the study could not be saved; make it "
                            "writable, or pass another ", *EITHER_PLACE) from None
    check_on_open(path, backend)
    try:
        return optuna.storages.JournalStorage(backend)
    except Exception as err:  # a record Optuna cannot replay
        raise AutotuneError(f"{path} cannot be read as a study journal ({first_line(err)}); "
                            "restore it from a backup, or move it away to start afresh"
                            ) from None


def make_studies_folder(folder: Path) -> None:
    """Create the studies folder itself, never a missing parent (that is a typo)."""
    if folder.is_dir():
        return
    parent = folder.parent
    if not parent.is_dir():
        raise AutotuneError(f"cannot create the studies folder {folder}: {parent} "
                            f"{'is not a folder' if parent.exists() else 'does not exist'}; "
                            "fix the path, or create the folder first")
    try:
        folder.mkdir()
    except OSError as err:
        raise AutotuneError(f"cannot create the studies folder {folder}: {err.strerror}; "
                            "pass another ", *EITHER_PLACE) from None


def first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def location(studies_dir: str | os.PathLike[str] | None = None,
             storage: str | None = None) -> str:
    """The storage as a user would name it, fit to print: a URL (password hidden) or a path."""
    if storage:
        return redact(storage)
    return str(Path(studies_dir or DEFAULT_STUDIES_DIR) / JOURNAL_FILE)


def open_storage(studies_dir: str | os.PathLike[str] | None = None,
                 storage: str | None = None, create: bool = True,
                 longest_trial_s: float | None = None) -> optuna.storages.BaseStorage:
    """Open the studies folder's journal, or `storage` (a URL or a journal file path).

    With `create=False` (every command that only reads) nothing is created: a missing
    journal or SQLite file is an error, not a new empty storage. `longest_trial_s`
    (given by a tuner) turns on the heartbeat of a database server's trials; see above.
    """
    if studies_dir and storage:
        raise AutotuneError("pass ", *EITHER_PLACE, ", not both")
    where = storage or str(Path(studies_dir or DEFAULT_STUDIES_DIR) / JOURNAL_FILE)
    if "://" in where:
        return url_storage(where, create, longest_trial_s)
    path = Path(where)
    if path.is_dir():
        path = path / JOURNAL_FILE
    if not create and not path.is_file():
        raise AutotuneError(f"no studies at {path} (run `autotune MODEL` first, or pass "
                            "another ", *EITHER_PLACE, ")")
    if path.suffix not in JOURNAL_SUFFIXES:
        raise AutotuneError(Option("storage", where), ": expected a URL such as "
                            "sqlite:///studies.db or a journal file ending in "
                            f"{', '.join(JOURNAL_SUFFIXES)}")
    return journal_storage(path, create)


def url_storage(url: str, create: bool, longest_trial_s: float | None = None
                ) -> optuna.storages.BaseStorage:
    shown = redact(url)
    database = sqlite_file(url)
    if database is not None and not create and not Path(database).is_file():
        raise AutotuneError(f"no studies at {shown} ({database} does not exist); check the "
                            "path (sqlite:///relative.db, sqlite:////absolute.db)")
    try:
        return rdb_storage(url, longest_trial_s)
    except Exception as err:
        detail = hide_secrets(first_line(err), url)
        if url.lower().startswith("postgres") and "import" in detail.lower():
            raise AutotuneError(Option("storage", shown), f": cannot open it ({detail}); "
                                "install the PostgreSQL client with `pip install "
                                "'autotune[postgres]'` (psycopg 3), or write the URL as "
                                "postgresql+psycopg2://... to use psycopg2") from None
        raise AutotuneError(Option("storage", shown), f": cannot open it ({detail}); check "
                            "the URL, and that it names an Optuna database") from None


def rdb_storage(url: str, longest_trial_s: float | None) -> optuna.storages.BaseStorage:
    """Optuna's storage for `url`, with heartbeats on a server when a tuner opens it.

    Tuners of a fleet that start at once on a new database each create Optuna's tables;
    all but one then fail on a duplicate key (IntegrityError) or a table or type another
    created a moment before (PostgreSQL's DuplicateTable, DuplicateObject), and try again.
    """
    from sqlalchemy.exc import DBAPIError, IntegrityError

    server = not url.lower().startswith("sqlite")
    for attempt in range(CREATE_ATTEMPTS):
        try:
            if not server or longest_trial_s is None:
                return optuna.storages.get_storage(url)
            interval, grace = heartbeat(longest_trial_s)
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=HEARTBEAT_RETRIES)
                return optuna.storages.RDBStorage(url, heartbeat_interval=interval,
                                                  grace_period=grace,
                                                  heartbeat_stale_trial_callback=retry)
        except DBAPIError as err:
            duplicate = isinstance(err, IntegrityError) or type(
                err.orig).__name__.startswith("Duplicate")
            if not duplicate or attempt == CREATE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def heartbeat(longest_trial_s: float) -> tuple[int, int]:
    """The heartbeat interval and grace period, in seconds, for trials of at most
    `longest_trial_s`; $AUTOTUNE_HEARTBEAT ("INTERVAL,GRACE") overrides both."""
    override = os.environ.get(HEARTBEAT_ENV, "").strip()
    if override:
        try:
            interval, grace = (int(part) for part in override.split(","))
            if interval > 0 and grace > 0:
                return interval, grace
        except ValueError:
            pass
        raise AutotuneError(f"{HEARTBEAT_ENV}={override!r}: expected INTERVAL,GRACE in whole "
                            "seconds, both above 0")
    return HEARTBEAT_INTERVAL_S, math.ceil(longest_trial_s) + HEARTBEAT_MARGIN_S


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Whether the storage fails its dead tuners' trials by heartbeat (a study wraps an
    RDBStorage in a cache of Optuna's, which answers the same)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def sqlite_file(url: str) -> str | None:
    """The file a sqlite:// URL names (None for other URLs and in-memory databases)."""
    if not url.lower().startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(url).database
    except ArgumentError:
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def storage_failure(err: BaseException | None) -> AutotuneError | None:
    """The storage error behind `err`, if any.

    Optuna turns an error raised while it records a trial's end into an AssertionError
    of its own; the original is kept in the exception's context.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, AutotuneError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


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


def fail_orphaned_trials(study: optuna.Study, storage: optuna.storages.BaseStorage,
                         host: str) -> list[int]:
    """Mark FAIL the RUNNING trials whose tuner process on this host is gone (it was killed).

    Trials of other hosts, and trials whose owner this host cannot identify, are left alone.
    Each orphan gets the status `interrupted` through the storage's own methods (a user
    attribute is set only on a live Trial otherwise, and never on a finished one) and is
    then finished by `tell`; an orphan that another tuner fails first is left as it made it.
    Returns the numbers of the orphans found, all finished now. A storage with heartbeats
    recovers its trials itself, on every host, and queues them again: nothing is done here.
    """
    from optuna.trial import TrialState

    if has_heartbeat(storage):
        return []
    failed = []
    study_id = None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        kept = TrialRecord.read(trial, study.study_name)
        if kept.host == host and not is_alive(kept.pid, kept.pid_started):
            if study_id is None:
                study_id = storage.get_study_id_from_name(study.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            try:
                keep(functools.partial(storage.set_trial_user_attr, trial_id),
                     trial_attrs(status=Status.INTERRUPTED))
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another tuner failed it first
            failed.append(trial.number)
    return failed
