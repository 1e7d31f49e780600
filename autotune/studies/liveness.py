"""Who runs a trial, and whether that process still runs: one answer, "unsure" meaning alive.

A trial (and the journal's lock) records its owner as (pid, start time): the start time
tells a reused pid apart. Failing a live tuner's trial, or breaking a live writer's lock,
would lose work in progress, so only an owner that is certainly gone counts as dead.
"""

from __future__ import annotations

import psutil


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
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False  # it has exited; only its parent has not reaped it yet
        process_started = process.create_time()
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, OSError):
        return True
    if not isinstance(started, (int, float)) or isinstance(started, bool):
        return True  # an unreadable start time: cannot tell
    return abs(process_started - started) < 1e-3  # else the pid was reused
