"""One measurement at a time on a machine: a lock that dies with its holder.

Two llama.cpp processes on the same cores slow each other many times over (a bench run
during a tune measured 29.6x slower), and a slowed trial would steer the sampler. So every
measurement (a trial, a confirmation run, a bench) holds an exclusive flock(2) on one
file per machine for as long as its worker runs. The kernel drops a flock when the
holder's file is closed, and a process's files close however it ends, SIGKILL included:
there is never a stale lock to clean up. The file also says who holds it (pid, what, since
when) so that a waiting process can say what it waits for.

The lock is taken per measurement, not per command: two tuners (or a tuner and a bench)
take turns trial by trial, each trial measured alone.

Example:
    >>> lock = MachineLock()  # waits its turn; wait=False raises MachineBusy instead
    >>> with lock.held("bench"):
    ...     result = run_trial(TrialSpec(demo_model_path(), Settings(n_threads=2), workload))
    >>> result.ok
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from autotune.errors import AutotuneError, Option

LOCK_FILE_ENV = "AUTOTUNE_LOCK_FILE"
# Machine-wide on purpose: $TMPDIR may differ between users and sessions, /tmp does not.
DEFAULT_LOCK_FILE = "/tmp/autotune-measure.lock"
HOLDER_BYTES = 4096


class MachineBusy(AutotuneError):
    """Another measurement holds the machine and the caller asked not to wait."""

    exit_status = 1


@dataclass(frozen=True)
class Holder:
    """Who holds the machine, as its lock file says (absent fields when it could not say)."""

    pid: int | None
    purpose: str
    since: float | None

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "another process"
        since = time.strftime(" since %H:%M:%S", time.localtime(self.since)) if self.since \
            else ""
        return f"autotune {self.purpose} ({who}){since}"


def lock_path() -> Path:
    return Path(os.environ.get(LOCK_FILE_ENV) or DEFAULT_LOCK_FILE)


class MachineLock:
    """Take the machine for one measurement at a time; wait for it, or refuse at once."""

    def __init__(self, wait: bool = True, on_wait: Callable[[Holder], None] | None = None,
                 path: str | os.PathLike[str] | None = None) -> None:
        self.wait = wait
        self.on_wait = on_wait
        self.path = Path(path) if path is not None else lock_path()

    @contextlib.contextmanager
    def held(self, purpose: str) -> Iterator[None]:
        """Hold the machine inside the block; MachineBusy if taken and not waiting."""
        fd = open_lock_file(self.path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(fd)
                if not self.wait:
                    raise MachineBusy(
                        f"the machine is busy measuring: {holder.describe()}; one measurement "
                        "at a time, since two on the same cores slow each other many times "
                        "over (wait for it, or leave out ", Option("wait", False),
                        " to queue)") from None
                if self.on_wait is not None:
                    self.on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel wakes us as the holder ends
            write_holder(fd, purpose)
            yield
        finally:
            os.close(fd)  # closing drops the lock


def open_lock_file(path: Path) -> int:
    """Open (or create) the lock file without following a link planted in its place."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except PermissionError:
        # Created by another user: a read-only descriptor can still hold a flock.
        try:
            return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as err:
            raise AutotuneError(f"measurement lock {path}: cannot open it ({err.strerror}); "
                                f"set {LOCK_FILE_ENV} to a file you can write") from None
    except OSError as err:
        raise AutotuneError(f"measurement lock {path}: cannot open it ({err.strerror}); "
                            f"set {LOCK_FILE_ENV} to a file you can write") from None
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # so that other users can take turns on the same machine
    return fd


def write_holder(fd: int, purpose: str) -> None:
    """Say who holds the lock; a read-only descriptor simply says nothing."""
    record = json.dumps({"pid": os.getpid(), "purpose": purpose, "since": time.time()})
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)


def read_holder(fd: int) -> Holder:
    """The holder as its record says; anything unreadable is "another process"."""
    try:
        data = json.loads(os.pread(fd, HOLDER_BYTES, 0) or b"{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid, since, purpose = data.get("pid"), data.get("since"), data.get("purpose")
    return Holder(pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                  purpose=purpose if purpose in ("tune", "bench") else "measurement",
                  since=float(since) if isinstance(since, (int, float))
                  and not isinstance(since, bool) else None)
