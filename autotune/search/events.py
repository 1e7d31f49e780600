"""What a tuning run reports as it goes, one record each: the CLI prints them as lines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from autotune.measure.records import Status


@dataclass(frozen=True)
class Waiting:
    """Another measurement holds the machine; the run waits for it."""

    holder: str


@dataclass(frozen=True)
class Started:
    study: str
    storage: str
    resumed: bool
    notes: tuple[str, ...]


@dataclass(frozen=True)
class TrialEnded:
    done: int
    total: int
    number: int
    state: str  # Optuna's trial state: COMPLETE, PRUNED, FAIL
    status: Status | None
    reason: str
    value: float | None  # the score, when the trial is feasible
    infeasible: str | None
    params: dict[str, object]
    label: str | None
    best: float | None
    other_cpu_percent: float | None
    elapsed_s: float
    objective: str = "score"  # what `value` and `best` are (goals.Objective)


@dataclass(frozen=True)
class ConfirmEnded:
    done: int
    total: int
    label: str
    status: Status
    value: float | None


@dataclass(frozen=True)
class AnchorChecked:
    """The drift anchor re-ran (search/drift.py)."""

    anchor_trial: int
    ratio: float  # of its first run's requests
    drifted: bool
    requeued: tuple[int, ...]


@dataclass(frozen=True)
class BusyTrial:
    """Other processes used more than the busy limit of the CPU while a trial ran
    (search/drift.py)."""

    number: int
    other_cpu_percent: float
    limit: float
    # queued again at once; False: it was a re-measurement busy again, and the run keeps
    # its trials as measured from now on
    remeasured: bool


ProgressEvent = Waiting | Started | TrialEnded | AnchorChecked | BusyTrial | ConfirmEnded
OnEvent = Callable[[ProgressEvent], None]
