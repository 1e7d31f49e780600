"""The journal's fault switch, for tests only: make one process's study writes fail for certain.

Set `AUTOTUNE_STORAGE_FAULT=KIND:N` in the environment of a process that writes the study
journal (a tuner). Nothing here acts unless the variable is set; a value that does not
parse fails the process's first write in one line, so a typo in a test cannot pass for a
fault. N defaults to 1.

KIND:
    torn-write  the N-th append writes half of its record, fsyncs it and SIGKILLs the
                process, still holding the journal's lock: what a tuner killed in the
                middle of a write leaves
    stop        right after the append that records the end of the process's N-th trial
                (the lock released, no file open), the process stops itself (SIGSTOP). A
                test then makes the real fault (fills the disk, remounts the folder
                read-only) and lets it go on with SIGCONT: the fault falls mid-study for
                certain, whatever the timing
    no-space    once the end of the N-th trial is written, every later append fails as on
                a full disk: half of it is written, then ENOSPC (and the append is rolled
                back); for machines where a test cannot mount a small filesystem
    read-only   once the end of the N-th trial is written, every later append fails as in
                a folder made read-only: EROFS on taking the lock, nothing written

Example:
    AUTOTUNE_STORAGE_FAULT=torn-write:12   the 12th append is torn, the tuner killed
    AUTOTUNE_STORAGE_FAULT=stop:1          the tuner stops once its first trial is kept
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass

from autotune.errors import AutotuneError

FAULT_VARIABLE = "AUTOTUNE_STORAGE_FAULT"
KINDS = ("torn-write", "stop", "no-space", "read-only")
# Optuna's journal: the operation that sets a trial's state, and the states that end one.
SET_TRIAL_STATE = 6  # JournalOperation.SET_TRIAL_STATE_VALUES
ENDED_STATES = (1, 2, 3)  # TrialState COMPLETE, PRUNED, FAIL


@dataclass(frozen=True)
class StorageFault:
    kind: str
    count: int = 1


def parse(text: str) -> StorageFault | None:
    """`stop:2` -> StorageFault("stop", 2); "" -> None; ValueError naming the value."""
    text = text.strip()
    if not text:
        return None
    kind, _, count = text.partition(":")
    if kind not in KINDS or (count and (not count.isdigit() or int(count) == 0)):
        raise ValueError(f"{FAULT_VARIABLE}={text!r} is not KIND:N with KIND one of "
                         f"{', '.join(KINDS)} and N a count from 1")
    return StorageFault(kind, int(count or 1))


def trials_ended(logs: list[dict]) -> int:
    """How many trials the journal records `logs` end."""
    return sum(1 for log in logs if log.get("op_code") == SET_TRIAL_STATE
               and log.get("state") in ENDED_STATES)


class FaultSwitch:
    """What the switch does to one journal backend's appends (nothing when it is unset)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        text = (os.environ if environ is None else environ).get(FAULT_VARIABLE, "")
        try:
            self.fault, self.bad = parse(text), None
        except ValueError as err:
            self.fault, self.bad = None, str(err)
        self.ended = 0  # trials whose end this process has written

    def _armed(self, kind: str) -> bool:
        return (self.fault is not None and self.fault.kind == kind
                and self.ended >= self.fault.count)

    def before_append(self, lock_file: str) -> None:
        """Raise what taking the lock would raise in a folder made read-only."""
        if self.bad is not None:
            raise AutotuneError(self.bad)
        if self._armed("read-only"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), lock_file)

    def cut_short(self, number: int) -> str | None:
        """How the `number`-th append is cut short: "torn-write", "no-space" or None."""
        fault = self.fault
        if fault is not None and fault.kind == "torn-write" and number == fault.count:
            return "torn-write"
        return "no-space" if self._armed("no-space") else None

    def after_append(self, logs: list[dict]) -> None:
        """Count the trials `logs` ended; stop the process when the `stop` fault says so."""
        before = self.ended
        self.ended += trials_ended(logs)
        fault = self.fault
        if fault is not None and fault.kind == "stop" and before < fault.count <= self.ended:
            os.kill(os.getpid(), signal.SIGSTOP)
