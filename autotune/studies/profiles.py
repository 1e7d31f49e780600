"""Profiles: the fastest, the knee and the leanest of a study's latency-memory front.

A study's feasible trials each have a value (what the study minimises, seconds) and a peak
memory (the worker's peak resident memory, plus its GPU memory where it offloads). A trial
is on the front when no other trial is both at least as fast and at least as lean, and
strictly better in one. From the front:

- `fast`: the fastest (after confirmation, the confirmed winner);
- `lean`: the leanest;
- `balanced`: the knee, the front's point nearest the ideal corner (fastest and leanest at
  once) once both axes are scaled to the front's own range.

A profile that saves less than `MIN_SAVING` of `fast`'s memory is `fast` itself: a few
megabytes are within what one run to the next varies, and not worth a slower reply.

The pruner stops a candidate slower than the best, whatever its memory, so a pruned trial
stands on the front too, its value estimated from the requests it ran (`pruned_estimate`);
`fast` is always a whole measurement, and `balanced` and `lean` are re-measured whole in
confirmation before they are called confirmed.

Example:
    >>> points = [Point(0, 1.0, 400), Point(1, 1.1, 300), Point(2, 2.0, 200),
    ...           Point(3, 1.5, 450)]  # 3 is slower and heavier than 0: not on the front
    >>> [p.trial_number for p in front(points)]
    [0, 1, 2]
    >>> {name: p.trial_number for name, p in choose(points).items()}
    {'fast': 0, 'balanced': 1, 'lean': 2}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import optuna

from autotune.guide import DEFAULTS_LABEL
from autotune.measure.goals import Goals
from autotune.measure.records import TrialStats
from autotune.measure.scoring import Weights, score
from autotune.measure.settings import Settings
from autotune.studies import standing
from autotune.studies.records import (
    CandidateResult,
    Confirmation,
    Profile,
    StudyRecord,
    TrialRecord,
)

PROFILES = ("fast", "balanced", "lean")
MIN_SAVING = 0.05
ESTIMATE_REQUESTS = 4  # a pruned trial's requests, at least, to stand on the front


@dataclass(frozen=True)
class Point:
    """One feasible configuration: its trial, its value (s) and its peak memory (bytes)."""

    trial_number: int | None
    value_s: float
    memory_bytes: int
    settings: Settings = field(default_factory=Settings, compare=False)
    label: str = field(default="", compare=False)  # a baseline's, e.g. `guide defaults`
    # 0: measured whole; else the requests a pruned trial ran before it was stopped
    estimated_from: int = field(default=0, compare=False)


def memory_of(stats: TrialStats | None) -> int | None:
    """Peak resident memory of the worker, plus its GPU memory where it used any."""
    if stats is None or not stats.peak_rss_bytes:
        return None
    return stats.peak_rss_bytes + (stats.gpu_memory_peak_bytes or 0)


def points_of(study: optuna.Study) -> list[Point]:
    """The study's feasible trials as points, and its pruned ones as estimates; the best
    run of each distinct setting, a whole one before an estimate."""
    record = StudyRecord.read(study)
    goals = record.goals or Goals()
    best: dict[Settings, Point] = {}
    trials = study.get_trials(deepcopy=False)
    gone = standing.superseded(study, trials)
    for trial in trials:
        if trial.number in gone:
            continue  # a drifted or busy machine measured it, and it was taken again
        kept = TrialRecord.read(trial, study.study_name)
        memory = memory_of(kept.stats)
        if kept.settings is None or memory is None:
            continue
        if standing.feasible(trial, study.study_name) and trial.value is not None:
            point = Point(trial.number, trial.value, memory, kept.settings, kept.label or "")
        elif (value := pruned_estimate(trial, kept, goals, record.weights)) is not None:
            point = Point(trial.number, value, memory, kept.settings, kept.label or "",
                          estimated_from=len(kept.latencies))
        else:
            continue
        key = kept.settings
        if key not in best or (point.estimated_from, point.value_s) < (
                best[key].estimated_from, best[key].value_s):
            best[key] = point
    return list(best.values())


def pruned_estimate(trial: optuna.trial.FrozenTrial, kept: TrialRecord, goals: Goals,
                    weights: Weights) -> float | None:
    """A pruned trial's value from the requests it ran, when they are enough to go on
    (`ESTIMATE_REQUESTS`) and broke no limit of the study; None otherwise.

    The pruner stops a candidate that is slower than the best, which says nothing of its
    memory: a leaner, somewhat slower configuration is pruned as readily as a bad one. So
    pruned trials stand on the front as estimates, and a profile chosen from one is
    re-measured whole in confirmation before it is called confirmed.
    """
    if (trial.state != optuna.trial.TrialState.PRUNED or kept.stats is None
            or len(kept.latencies) < ESTIMATE_REQUESTS or kept.stats.reloads
            or goals.missed(kept.stats)):
        return None
    return goals.objective.of(kept.stats, score(kept.latencies, weights))


def front(points: Iterable[Point]) -> list[Point]:
    """The non-dominated points, fastest first (so leanest last)."""
    ordered = sorted(points, key=lambda p: (p.value_s, p.memory_bytes, p.trial_number))
    kept: list[Point] = []
    for point in ordered:
        if not kept or point.memory_bytes < kept[-1].memory_bytes:
            kept.append(point)  # slower than every kept point, so it must be leaner
    return kept


def choose(points: Iterable[Point], fast: Point | None = None) -> dict[str, Point]:
    """The three profiles: `fast` the fastest whole measurement (or the given one: the
    confirmed winner), `lean` and `balanced` from the front's points leaner than it
    (estimates included); empty without a point."""
    points = list(points)
    whole = [p for p in points if not p.estimated_from]
    if fast is None and not whole:
        return {}
    fast = fast or min(whole, key=lambda p: (p.value_s, p.memory_bytes))
    line = [fast, *(p for p in front(points) if p.memory_bytes < fast.memory_bytes)]
    values, memories = [p.value_s for p in line], [p.memory_bytes for p in line]
    value_span = (max(values) - min(values)) or 1.0
    memory_span = (max(memories) - min(memories)) or 1
    lean = min(line, key=lambda p: (p.memory_bytes, p.value_s))
    knee = min(line, key=lambda p: (math.hypot((p.value_s - min(values)) / value_span,
                                               (p.memory_bytes - min(memories)) / memory_span),
                                    p.value_s))
    return {"fast": fast, "balanced": worth(knee, fast), "lean": worth(lean, fast)}


def worth(point: Point, fast: Point) -> Point:
    """`point`, or `fast` when `point` saves too little memory to be worth its latency."""
    return point if point.memory_bytes <= (1 - MIN_SAVING) * fast.memory_bytes else fast


def kept_profiles(points: list[Point], confirmation: Confirmation,
                  winner: CandidateResult) -> dict[str, Profile]:
    """The profiles to keep once confirmation has run: `fast` is the confirmed winner;
    `balanced` and `lean` carry their confirmed medians when they were re-measured."""
    own = next((p for p in points if p.trial_number == winner.trial_number), None)
    fast = profile_of("fast", winner, confirmation, own)
    # the front is read from the winner: the search's fastest may not have won confirmation
    anchor = own or Point(fast.trial_number, fast.shown_value_s, fast.shown_memory_bytes,
                          fast.settings)
    chosen = choose(points, anchor)
    found = {"fast": fast}
    for name in PROFILES[1:]:
        point = chosen.get(name)
        if point is None or point is anchor:
            found[name] = dataclasses.replace(fast, name=name)
            continue
        result = confirmed_as(point, confirmation)
        profile = profile_of(name, result, confirmation, point)
        if profile.shown_memory_bytes > (1 - MIN_SAVING) * fast.shown_memory_bytes:
            profile = dataclasses.replace(fast, name=name)  # it saved too little after all
        found[name] = profile
    return found


def confirmed_as(point: Point, confirmation: Confirmation) -> CandidateResult | None:
    """The confirmation result of the candidate with `point`'s settings, or of the guide's
    defaults when `point` is their search trial."""
    return next((c for c in confirmation.candidates
                 if c.settings == point.settings
                 or (point.label == DEFAULTS_LABEL and c.label == DEFAULTS_LABEL)), None)


def profile_of(name: str, result: CandidateResult | None, confirmation: Confirmation,
               point: Point | None) -> Profile:
    """A profile from its search point and its confirmation result: confirmed when it
    finished every round and its medians met every target and budget of the study."""
    confirmed = (result if result is not None and result.complete and not result.missed
                 and result.median_objective is not None else None)
    runs = [r for r in confirmation.runs
            if confirmed is not None and r.label == confirmed.label and r.score is not None]
    memories = sorted(m for m in (memory_of(r.stats) for r in runs) if m is not None)
    confirmed_memory = memories[(len(memories) - 1) // 2] if memories else None
    if point is None:  # a winner that was no search point: the guide's defaults
        assert result is not None and result.median_objective is not None
        point = Point(result.trial_number, result.median_objective, confirmed_memory or 0,
                      result.settings)
    return Profile(name=name, trial_number=point.trial_number, settings=point.settings,
                   value_s=point.value_s, memory_bytes=point.memory_bytes,
                   confirmed=confirmed is not None,
                   confirmed_value_s=confirmed.median_objective if confirmed else None,
                   confirmed_memory_bytes=confirmed_memory, rounds=len(runs),
                   label=confirmed.label if confirmed else "",
                   estimated_from=point.estimated_from)


def unconfirmed_profiles(study: optuna.Study) -> dict[str, Profile]:
    """The profiles of a study that kept none (tuned before profiles, or not confirmed):
    the front of its search trials, each unconfirmed."""
    return {name: Profile(name=name, trial_number=p.trial_number, settings=p.settings,
                          value_s=p.value_s, memory_bytes=p.memory_bytes,
                          estimated_from=p.estimated_from)
            for name, p in choose(points_of(study)).items()}
