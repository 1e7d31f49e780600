"""The embedded study journal, made to survive a killed writer and a full disk.

Optuna's JournalFileBackend appends one JSON record per line. A writer killed in the middle
of an append (SIGKILL, power loss, a full disk) leaves a last line without its newline.
Optuna reads past such a torn record, but the next append is written straight after it:
the two fuse into one line that is not JSON, and from then on every read of the file
raises, so every study in it is lost to `tune`, `compare`, `show` and `export`.

The mechanism here is repair, not a second storage: the journal stays the file Optuna and
optuna-dashboard read, and studies already kept in it stay usable.

- On open, and before every append, the journal's tail is checked. A torn last record is
  cut off (or, when it is a whole record missing only its newline, completed); a record
  fused onto a torn one is split from it. The file as it was is first copied next to it
  (`autotune.journal.<time>.bak`), the repair is written to a temporary file and renamed
  into place, and one warning line says so.
- Repairs and appends happen under the journal's own lock file (Optuna's
  JournalFileOpenLock protocol, so plain Optuna processes still exclude us), so a writer
  in another process is never repaired under its feet. Readers do not take the lock
  unless the file needs a repair.
- The lock file names its holder (host, pid, start time). A lock left by a process that
  is gone is broken at once, not after Optuna's 30 s grace period; a holder that cannot
  be told (another host, a plain Optuna process, no permission to look) counts as alive.
- A failed append (no space left, file too large, a folder made read-only, I/O error) is
  rolled back to the size before it, so the file never keeps half a record, and becomes
  one StorageFailed error (exit status 75) that says what to free or fix and to run the
  same command again; the process then writes nothing more. No lock file is left behind:
  one whose holder could not be written into it (the disk was full) is removed at once,
  since an empty lock names no holder and would make the next tuner wait out the grace
  period. Releasing a lock in a folder made read-only is that same failure, not a crash.
- A line in the middle that is not a record and cannot be explained by a torn write
  (the file was edited or overwritten) is not guessed at: dropping a record would shift
  the trial numbers of every later one. It is a one-line error naming the line, and how
  to keep the records before it.

Test-only fault switch (`AUTOTUNE_STORAGE_FAULT`, autotune.studies.faults): a process can
be made to tear its N-th append and die holding the lock, to stop itself once its N-th
trial is kept (so that a test fills the disk or remounts the folder at that point), or to
fail its writes as a full disk or a read-only folder would.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from autotune.errors import AutotuneError, Option, StorageFailed
from autotune.studies.faults import FaultSwitch
from autotune.studies.files import replace_atomically
from autotune.studies.liveness import is_alive

RECORD_START = b'{"op_code":'
LOCK_GRACE_S = 30.0
# What to do about a failed write, by its errno: free space, or make the folder writable.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)

log = logging.getLogger(__name__)


class JournalDamaged(AutotuneError):
    """The journal holds something that is not a record and is not a torn write."""


def is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
    return isinstance(record, dict) and "op_code" in record


def split_fused(line: bytes) -> bytes | None:
    """The whole record at the end of a line that a torn record was fused onto, if any."""
    if not line.startswith(RECORD_START):
        return None
    start = line.find(RECORD_START, 1)
    while start != -1:
        if is_record(line[start:]):
            return line[start:]
        start = line.find(RECORD_START, start + 1)
    return None


@dataclass
class Repair:
    data: bytes
    what: str
    tail_only: bool  # only the last line was torn: Optuna can read the file as it is


def repaired(data: bytes, path: Path) -> Repair | None:
    """The journal with torn records removed and what was done, or None when it is sound.

    Raises JournalDamaged for a line that no torn write explains.
    """
    lines = data.splitlines(keepends=True)
    kept: list[bytes] = []
    done: list[str] = []
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        body = line.rstrip(b"\r\n")
        if line.endswith(b"\n") and is_record(body):
            kept.append(line)
        elif last and not line.endswith(b"\n") and is_record(body):
            kept.append(line + b"\n")
            done.append("completed a last record that lacked its newline")
        elif last and not line.endswith(b"\n") and line.startswith(RECORD_START):
            done.append("cut off a torn last record (a write was interrupted)")
        elif (record := split_fused(body)) is not None:
            kept.append(record + b"\n")
            done.append(f"split line {number}, a record written after a torn one")
        else:
            raise JournalDamaged(*damaged_message(path, number))
    if not done:
        return None
    tail_only = len(done) == 1 and not done[0].startswith("split")
    return Repair(b"".join(kept), "; ".join(done), tail_only)


def damaged_message(path: Path, number: int) -> tuple[str | Option, ...]:
    if number == 1:
        return (f"{path} is not an Optuna study journal (its first line is not a journal "
                "record); pass the right file, or move this one away to start afresh",)
    return (f"{path}: line {number} is not a journal record (the file was edited or "
            f"overwritten), so no study in it can be read safely; keep the {number - 1} "
            f"records before it with `head -n {number - 1} {path} > repaired.journal` and "
            "pass ", Option("storage", "repaired.journal"),
            ", or move the file away to start afresh")


def backup_path(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.{stamp}.bak")
    counter = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{stamp}-{counter}.bak")
        counter += 1
    return candidate


def repair_locked(path: Path) -> None:
    """Repair the journal in place; the caller holds the journal's lock."""
    fixed = repaired(path.read_bytes(), path)
    if fixed is None:
        return
    backup = backup_path(path)
    shutil.copy2(path, backup)
    replace_atomically(path, fixed.data, path.stat().st_mode & 0o7777)
    log.warning("autotune: warning: %s: %s; the file as it was is kept as %s",
                path, fixed.what, backup)


def check_on_open(path: Path, backend: SafeJournalBackend) -> None:
    """Repair a damaged journal before Optuna replays it; sound files cost one read."""
    try:
        fixed = repaired(path.read_bytes(), path)
    except OSError as err:
        raise AutotuneError(f"cannot read the study journal {path}: {err.strerror}") from None
    if fixed is None:
        return
    try:
        with backend.locked():
            repair_locked(path)
    except OSError as err:
        if fixed.tail_only:
            # Optuna reads past a torn last record; nothing will be appended here.
            log.warning("autotune: warning: %s ends in a torn record that cannot be cut off "
                        "(%s); reading the records before it", path, err.strerror)
            return
        raise AutotuneError(f"{path} needs a repair ({fixed.what}) but cannot be written "
                            f"({err.strerror}); make its folder writable, or copy it "
                            "somewhere writable and pass ", Option("storage", "COPY")
                            ) from None


def holder() -> dict[str, object]:
    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()}


def holder_gone(text: str) -> bool:
    """True only when the lock's recorded holder is certainly not running any more."""
    try:
        recorded = json.loads(text)
        if recorded.get("host") != socket.gethostname():
            return False
        pid, started = int(recorded["pid"]), float(recorded["started"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return False  # an empty lock, a plain Optuna holder: cannot tell
    return not is_alive(pid, started)


class HolderLock(JournalFileOpenLock):
    """Optuna's exclusive lock file, holding its holder's identity so a dead one is seen."""

    def __init__(self, filepath: str) -> None:
        super().__init__(filepath, grace_period=int(LOCK_GRACE_S))
        self._journal = filepath

    def acquire(self) -> bool:
        sleep_s = 0.001
        unchanged_since, mtime = time.monotonic(), None
        while True:
            try:
                fd = os.open(self._lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self.break_if_stale():
                    continue
                try:
                    current = os.stat(self._lock_file).st_mtime
                except FileNotFoundError:
                    continue
                if current != mtime:
                    unchanged_since, mtime = time.monotonic(), current
                elif time.monotonic() - unchanged_since > LOCK_GRACE_S:
                    log.warning("autotune: warning: %s has been held for %.0f s by a process "
                                "that cannot be identified; taking it over", self._lock_file,
                                LOCK_GRACE_S)
                    with contextlib.suppress(RuntimeError):
                        self.release()
                time.sleep(sleep_s)
                sleep_s = min(sleep_s * 2, 0.25)
                continue
            try:
                with os.fdopen(fd, "w") as lock:
                    lock.write(json.dumps(holder()))
            except OSError:
                # A full disk takes the name but not the holder: an empty lock would make
                # every later tuner wait out the grace period, so it goes at once.
                with contextlib.suppress(OSError):
                    os.unlink(self._lock_file)
                raise
            return True

    def release(self) -> None:
        """Optuna's release, except that a folder made read-only under the holder is an
        OSError (a failed write) rather than Optuna's "did not possess lock"."""
        try:
            super().release()
        except RuntimeError as err:
            cause = err.__context__
            if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):
                raise cause from None
            raise

    def break_if_stale(self) -> bool:
        """Remove the lock if its holder is gone; True when it was removed (or vanished)."""
        try:
            with open(self._lock_file) as lock:
                text, inode = lock.read(), os.fstat(lock.fileno()).st_ino
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if not holder_gone(text):
            return False
        # Two waiters may both find the same dead holder: the journal's flock makes the
        # check-and-remove one step, so one of them never removes the other's fresh lock.
        with open(self._journal, "rb") as journal:
            fcntl.flock(journal.fileno(), fcntl.LOCK_EX)
            try:
                with open(self._lock_file) as lock:
                    if os.fstat(lock.fileno()).st_ino == inode and lock.read() == text:
                        os.unlink(self._lock_file)
                log.debug("removed %s, left by a process that is gone", self._lock_file)
            except FileNotFoundError:
                pass
            finally:
                fcntl.flock(journal.fileno(), fcntl.LOCK_UN)
        return True


class SafeJournalBackend(JournalFileBackend):
    """JournalFileBackend whose appends start on a sound tail and never leave half a record."""

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path, lock_obj=HolderLock(file_path))
        self.appends = 0
        self.failure: str | None = None
        self.faults = FaultSwitch()

    @contextlib.contextmanager
    def locked(self):
        self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def append_logs(self, logs: list[dict]) -> None:
        if self.failure is not None:
            # Later records may depend on the lost one (a trial's end on its measurements):
            # after one failed write, this process writes nothing more.
            raise StorageFailed(self.failure)
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in logs).encode()
        path = Path(self._file_path)
        try:
            self.faults.before_append(f"{path}.lock")
            with self.locked():
                self.appends += 1
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
                try:
                    if not ends_cleanly(fd):
                        repair_locked(path)  # a writer died mid-append since we last looked
                        os.close(fd)
                        fd = os.open(path, os.O_RDWR | os.O_APPEND)
                    append_or_roll_back(fd, data, self.faults.cut_short(self.appends))
                finally:
                    os.close(fd)
        except OSError as err:
            self.failure = failed_write(path, err)
            raise StorageFailed(self.failure) from None
        self.faults.after_append(logs)


def failed_write(path: Path, err: OSError) -> str:
    """One line for a failed append: what failed, that nothing kept is lost, what to do."""
    reason = err.strerror or errno.errorcode.get(err.errno or 0, str(err))
    if err.errno in NO_SPACE:
        fix = f"free some space on the disk that holds {path.parent}"
    elif err.errno in NOT_WRITABLE:
        fix = f"make {path.parent} writable again"
    else:
        fix = "free some space (or make the folder writable)"
    return (f"cannot write to the study journal {path}: {reason}; the trials recorded before "
            f"this are kept: {fix} and run the same command again to resume")


def ends_cleanly(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def append_or_roll_back(fd: int, data: bytes, fault: str | None = None) -> None:
    """Append `data` whole, or leave the file as it was; `fault` (the fault switch's, for
    tests) cuts the write short: "torn-write" dies after half, "no-space" fails there."""
    size = os.fstat(fd).st_size
    try:
        if fault is not None:
            os.write(fd, data[: len(data) // 2])
            os.fsync(fd)
            if fault == "torn-write":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)  # shrinking is allowed even on a full disk
        raise

