"""One measurement at a time on a machine: a lock that dies with its holder.

Two llama.cpp processes on the same cores slow each other many times over (a bench run
during a tune measured 29.6x slower), and a slowed trial would steer the sampler. So every
measurement (a trial, a confirmation run, a bench) holds an exclusive flock(2) on one
file per machine for as long as its worker runs. The kernel drops a flock when the
holder's file is closed, and a process's files close however it ends, SIGKILL included:
there is never a stale lock to clean up. The file also says who holds it (pid, what, since
when) so that a waiting process can say what it waits for.

The lock is taken per measurement, not per command: two tuners (or a tuner and a bench)
take turns trial by trial, each trial measured alone. flock(2) itself keeps no order: a
tuner that lets go of the machine and asks again at once would get it back before a
waiting bench wakes, trial after trial. So the waiters queue: each holds a ticket (a file
in `LOCK.queue/`, named by when it asked, with an flock of its own that also dies with its
process) from asking until the machine is its own, and waits for the live tickets ahead
of it to leave first. A command that waits is served in the order it asked, behind at
most one measurement of each command ahead of it.

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
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from autotune.errors import AutotuneError, Option

LOCK_FILE_ENV = "AUTOTUNE_LOCK_FILE"
# Machine-wide on purpose: $TMPDIR may differ between users and sessions, /tmp does not.
DEFAULT_LOCK_FILE = "/tmp/autotune-measure.lock"
HOLDER_BYTES = 4096
QUEUE_SUFFIX = ".queue"
TICKET = re.compile(r"\d{20}-\d{1,10}")  # nanoseconds since the epoch, then the pid


class MachineBusy(AutotuneError):
    """Another measurement holds the machine and the caller asked not to wait."""

    exit_status = 1


@dataclass(frozen=True)
class Holder:
    """Who holds the machine, as its lock file says (absent fields when it could not say)."""

    pid: int | None
    purpose: str
    since: float | None
    queued: int = 0  # the other commands waiting ahead of the one that asks

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "another process"
        since = time.strftime(" since %H:%M:%S", time.localtime(self.since)) if self.since \
            else ""
        ahead = f", with {self.queued} more waiting before this one" if self.queued else ""
        return f"autotune {self.purpose} ({who}){since}{ahead}"


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
        """Hold the machine inside the block, after the commands that asked before this
        one; MachineBusy if it is taken, or others wait for it, and not waiting."""
        fd = open_lock_file(self.path)
        try:
            with Queue(queue_path(self.path)) as queue:
                told = False
                while (found := queue.next_ahead()) is not None:
                    ahead, queued = found
                    try:
                        if not told:
                            told = self.waiting(fd, queued)
                        fcntl.flock(ahead, fcntl.LOCK_SH)  # wakes as it leaves the queue
                    finally:
                        os.close(ahead)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not told:
                        self.waiting(fd, 0)
                    fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel wakes us as the holder ends
            write_holder(fd, purpose)  # the machine is ours, and our ticket gone
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def waiting(self, fd: int, queued: int) -> bool:
        """Say who holds the machine (MachineBusy when not waiting); True once said."""
        holder = read_holder(fd, queued)
        if not self.wait:
            raise MachineBusy(
                f"the machine is busy measuring: {holder.describe()}; one "
                "measurement at a time, since two on the same cores slow each other many "
                "times over (wait for it, or leave out ", Option("wait", False),
                " to queue)") from None
        if self.on_wait is not None:
            self.on_wait(holder)
        return True


def queue_path(lock: Path) -> Path:
    return lock.with_name(lock.name + QUEUE_SUFFIX)


class Queue:
    """This process's ticket in the queue of commands waiting for the machine.

    A ticket is made under a hidden name, locked, then renamed into place, so that no
    other waiter ever sees it unlocked and takes it for a dead one. Leaving the queue
    removes it, then closes it: the waiter behind, blocked on its flock, wakes.
    """

    def __init__(self, folder: Path) -> None:
        self.dir_fd = open_queue_folder(folder)
        hidden = f".new-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                              | getattr(os, "O_NOFOLLOW", 0), 0o644, dir_fd=self.dir_fd)
        except OSError as err:
            os.close(self.dir_fd)
            raise AutotuneError(f"measurement queue {folder}: cannot join it "
                                f"({err.strerror}); set {LOCK_FILE_ENV} to a file in a "
                                "folder you can write") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.name = f"{time.time_ns():020d}-{os.getpid()}"
        os.rename(hidden, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.name, dir_fd=self.dir_fd)
        os.close(self.fd)
        os.close(self.dir_fd)

    def live_ahead(self) -> list[str]:
        """The tickets that asked before this one and whose processes still live, oldest
        first; a dead one (nobody holds its flock) is removed where this user may."""
        ahead = sorted(name for name in os.listdir(self.dir_fd)
                       if TICKET.fullmatch(name) and name < self.name)
        return [name for name in ahead if self.alive(name)]

    def next_ahead(self) -> tuple[int, int] | None:
        """An open descriptor of the live ticket just ahead of this one (the caller closes
        it) and how many live ones are ahead; None when this one is first."""
        ahead = self.live_ahead()
        for name in reversed(ahead):
            try:
                return self.open_ticket(name), len(ahead)
            except OSError:
                continue  # it left the queue meanwhile
        return None

    def open_ticket(self, name: str) -> int:
        """A read-only descriptor of a ticket, which can still hold an flock; never
        through a link."""
        return os.open(name, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0),
                       dir_fd=self.dir_fd)

    def alive(self, name: str) -> bool:
        try:
            fd = self.open_ticket(name)
        except OSError:
            return False  # gone, or planted where this user cannot read: not a waiter
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):  # its process ended without leaving the queue
            os.unlink(name, dir_fd=self.dir_fd)
        return False


def open_queue_folder(folder: Path) -> int:
    """Open (or create, writable by all and sticky, as /tmp is) the queue's folder, never
    through a link planted in its place."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o1777)  # other users' commands queue here too
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                       | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise AutotuneError(f"measurement queue {folder}: cannot open it ({err.strerror}); "
                            f"set {LOCK_FILE_ENV} to a file you can write") from None


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


def read_holder(fd: int, queued: int = 0) -> Holder:
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
                  and not isinstance(since, bool) else None, queued=queued)
