"""Fault injection, for tests only: make a trial worker fail in a chosen way at a chosen point.

Set `AUTOTUNE_WORKER_FAULT=KIND@POINT` in the environment of the process that starts the
worker (several, comma-separated, fire in order). POINT defaults to `start`. Nothing here
runs unless the variable is set; a value that does not parse ends the worker with status 2
and one line on stderr, so a typo in a test cannot pass for a fault.

KIND:
    hang      emits nothing more and sleeps until killed (or until its parent is gone, so
              a failing test leaves no worker behind)
    abort     os.abort(): SIGABRT, as a failed GGML_ASSERT in llama.cpp ends a process
    segfault  reads address 0: a real SIGSEGV
    exit      exit status 1 after a last line on stderr
    oom       what an allocation failure inside llama.cpp does: the C++ runtime prints
              `std::bad_alloc` and aborts (SIGABRT). The kernel's OOM killer (SIGKILL once
              memory is gone) is not simulated: it cannot be caused both cheaply and surely.
    garbage   writes lines that are neither JSON nor valid UTF-8 to the event stream and to
              stderr, then carries on
    mute      closes the event stream and hangs: a worker that stopped talking but lives on
    stop      stops itself (SIGSTOP) until the parent sends SIGCONT: a test holds the worker
              at a point, changes the world (kills its offload device), then lets it go on
    slow      from then on, every request takes SLOW_S longer (a sleep inside its measured
              time): a machine that got busier, for the drift anchor's tests.
              `slow=SECONDS` sizes the sleep, so a test can make it outweigh whatever its
              requests take on this machine (a plain `slow` sleeps SLOW_S)
    busy      starts BUSY_PER_CORE busy-looping processes per core beside the worker, until
              it ends: another program taking the CPU while the trial runs, as the parent's
              resource sampler counts it (other processes' CPU)

POINT:
    start      first thing, before the trial spec is read from stdin
    load       after the `loaded` event
    warmup     after the `warmup` event
    request:N  after the N-th `request` event

Example:
    AUTOTUNE_WORKER_FAULT=hang@load        loads the model, then never answers
    AUTOTUNE_WORKER_FAULT=garbage@start,segfault@request:2
    AUTOTUNE_WORKER_FAULT=slow=1.5@warmup   every measured request takes 1.5 s longer
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from typing import TextIO

ENV = "AUTOTUNE_WORKER_FAULT"
KINDS = ("hang", "abort", "segfault", "exit", "oom", "garbage", "mute", "stop", "slow", "busy")
SLOW_S = 0.5
BUSY_PER_CORE = 2
EVENT_AT = {"start": "start", "load": "loaded", "warmup": "warmup", "request": "request"}
GARBAGE = b"\xff\xfe\x80 not json {\x00\n[1, 2]\n\xe2\x82\n"
BAD_ALLOC = ("terminate called after throwing an instance of 'std::bad_alloc'\n"
             "  what():  std::bad_alloc\n")
ORPHANED = 70  # the worker's exit status when its parent is gone


@dataclass(frozen=True)
class Fault:
    kind: str
    event: str  # fires after this event ("start": before the spec is read)
    count: int = 1  # ... the count-th time it is emitted
    seconds: float | None = None  # a `slow` fault's sleep per request; None: SLOW_S

    def __str__(self) -> str:
        point = next(name for name, event in EVENT_AT.items() if event == self.event)
        size = f"={self.seconds:g}" if self.seconds is not None else ""
        return f"{self.kind}{size}@{point}" + (f":{self.count}" if point == "request" else "")


def parse(text: str) -> list[Fault]:
    """`hang@load,exit@request:2,slow=1.5@warmup` -> faults; ValueError naming the bad part."""
    faults = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, point = part.partition("@")
        kind, sized, size = kind.partition("=")
        name, _, count = (point or "start").partition(":")
        seconds = seconds_of(size) if sized and kind == "slow" else None
        if kind not in KINDS or name not in EVENT_AT or (count and not count.isdigit()) \
                or (count and name != "request") or count == "0" \
                or (sized and seconds is None):
            raise ValueError(f"{ENV}={text!r}: {part!r} is not KIND@POINT with KIND one of "
                             f"{', '.join(KINDS)} (or slow=SECONDS, SECONDS above 0) and "
                             "POINT start, load, warmup or request:N")
        faults.append(Fault(kind, EVENT_AT[name], int(count or 1), seconds))
    return faults


def seconds_of(text: str) -> float | None:
    """`1.5` -> 1.5; None unless a finite number of seconds above 0."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


class Faults:
    """The faults this worker was told to inject, fired by `after` as events go out."""

    def __init__(self, faults: list[Fault]) -> None:
        self.faults = faults
        self.seen: dict[str, int] = {}
        self.delay_s = 0.0  # what a `slow` fault adds to every request from then on

    @classmethod
    def from_env(cls) -> Faults:
        return cls(parse(os.environ.get(ENV, "")))

    def after(self, event: str, stream: TextIO) -> None:
        """Called after each event is written to `stream` (and once with "start")."""
        if not self.faults:
            return
        self.seen[event] = self.seen.get(event, 0) + 1
        for fault in self.faults:
            if fault.event == event and fault.count == self.seen[event]:
                if fault.kind == "slow":
                    say(f"{ENV}: {fault}")
                    self.delay_s = SLOW_S if fault.seconds is None else fault.seconds
                else:
                    inject(fault, stream)

    def delay(self) -> None:
        """Called inside each request's measured time: a `slow` fault's sleep."""
        if self.delay_s:
            time.sleep(self.delay_s)


def inject(fault: Fault, stream: TextIO) -> None:
    say(f"{ENV}: {fault}")
    if fault.kind in ("abort", "segfault", "oom"):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file left in the cwd
    if fault.kind == "hang":
        hang()
    elif fault.kind == "abort":
        os.abort()
    elif fault.kind == "segfault":
        ctypes.string_at(0)
    elif fault.kind == "exit":
        say("fault injected: exiting with status 1")
        os._exit(1)
    elif fault.kind == "oom":
        say(BAD_ALLOC.rstrip("\n"))
        os.abort()
    elif fault.kind == "garbage":
        stream.flush()
        stream.buffer.write(GARBAGE)
        stream.buffer.flush()
        sys.stderr.flush()
        sys.stderr.buffer.write(GARBAGE)
        sys.stderr.buffer.flush()
    elif fault.kind == "mute":
        stream.close()
        hang()
    elif fault.kind == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif fault.kind == "busy":
        for _ in range(BUSY_PER_CORE * (os.cpu_count() or 1)):
            if os.fork() == 0:
                spin()


def spin() -> None:
    """Use a core until the worker that forked this process is gone, then exit."""
    parent = os.getppid()
    while os.getppid() == parent:
        pass
    os._exit(0)


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def hang() -> None:
    """Sleep, emitting nothing, until killed; exit once the parent is gone."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.1)
    os._exit(ORPHANED)
