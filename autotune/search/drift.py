"""The drift anchor: re-measure one fixed configuration every few trials of a search.

A search's trials run one after another for minutes. A machine that heats up, or a
background job that starts or ends, moves every latency measured from then on, and a
candidate measured then is ranked against others measured on another footing. As
llama.cpp's offline kernel tuner does, the search re-measures a fixed anchor every
ANCHOR_EVERY trials and takes again the candidates measured while it had drifted.

The anchor is the baseline trial (the guide's defaults or its model-size advice) whose
first ANCHOR_REQUESTS requests were fastest: the cheaper of the two to re-run. Each check
runs those requests again (the worker is stopped after them, as a pruned trial is) and
compares their total with the same requests of the anchor's own trial. Runs of one
configuration vary: on the recorded 2-core grid (benchmarks/results/grid.json), two runs of
one cell differ on those requests by DRIFT_CALIBRATION; DRIFT_LIMIT lies above that, so a
check fires on a machine that slowed or sped up by more than a run's own spread (another
process taking a core doubles a 2-thread request), not on a run's noise.

When a check finds drift, the trials measured since the last check are queued again, once
each, labelled `re-measured after drift: trial N`. The drifted trial N (and any trial that
reused its measurement as a repeat) no longer ranks: `studies.standing.superseded`. A
re-measurement is never queued again, so a machine that stays drifted costs each trial at
most one more run, and the report says the anchor moved. Each check is kept in the study's record
(`anchors`).

A shorter change needs no anchor to be seen: each trial records what the other processes
used of the CPU while its worker ran (trial.ResourceSampler). Another command's start-up
(its imports, its model inspection) beside a trial slows that trial alone. A trial during
which they used more than `busy_limit` percent of one core (BUSY_LIMIT by default) is
queued again at once, labelled `re-measured on a busy machine: trial N`, and trial N no
longer ranks. A re-measurement that finds the machine as busy means the load is the
machine's own: from then on the command keeps its trials as measured, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

import optuna

from autotune.measure.model import ModelInfo
from autotune.measure.records import RequestRecord, Status, TrialResult
from autotune.measure.settings import Settings
from autotune.measure.trial import BUSY_PERCENT, OnRequest
from autotune.search.space import ADVICE_LABEL, BASELINE_LABEL
from autotune.studies.records import (
    AnchorCheck,
    StudyRecord,
    TrialRecord,
    keep,
    study_attrs,
    trial_attrs,
)
from autotune.studies.standing import DRIFT_LABEL, superseded


class Measures(Protocol):
    """How the anchor is re-run: the study's own way of measuring (study.Measurement)."""

    def run(self, model: ModelInfo, settings: Settings, on_request: OnRequest | None = None,
            before: Callable[[], object] | None = None, anchor: bool = False
            ) -> TrialResult: ...

ANCHOR_EVERY = 4  # trials between checks; 0 turns the anchor off
ANCHOR_REQUESTS = 4  # the requests each check re-runs: the pruner's first look
# Same-cell runs on the recorded grid differ on their first 4 requests by 10% (median) and
# 30% (95th percentile); see benchmarks/results/grid.md.
DRIFT_CALIBRATION = "10% at the median and 30% at the 95th percentile"
DRIFT_LIMIT = 0.35
BUSY_LIMIT = BUSY_PERCENT  # other processes' CPU, percent of one core; 0 turns it off


def anchor_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The baseline trial whose first ANCHOR_REQUESTS requests were fastest, or None when
    no baseline finished them."""
    best, best_total = None, float("inf")
    for trial in study.get_trials(deepcopy=False):
        kept = TrialRecord.read(trial, study.study_name)
        if kept.label not in (BASELINE_LABEL, ADVICE_LABEL) or kept.settings is None \
                or len(kept.latencies) < ANCHOR_REQUESTS:
            continue
        total = sum(kept.latencies[:ANCHOR_REQUESTS])
        if total < best_total:
            best, best_total = trial, total
    return best


def measured_in(study: optuna.Study, numbers: Iterable[int]) -> list[optuna.trial.FrozenTrial]:
    """Of trials `numbers`, those that ran a worker over the workload and may be taken
    again: finished or pruned, neither a repeat nor a re-measurement itself, nor taken
    again already."""
    trials = study.get_trials(deepcopy=False)
    gone = superseded(study, trials)
    chosen = []
    for number in numbers:
        trial = trials[number]
        if number in gone:
            continue
        kept = TrialRecord.read(trial, study.study_name)
        if trial.state not in (optuna.trial.TrialState.COMPLETE,
                               optuna.trial.TrialState.PRUNED):
            continue
        if kept.status not in (Status.OK, Status.PRUNED) or kept.settings is None:
            continue
        if kept.repeat_of is not None or kept.remeasures is not None:
            continue
        chosen.append(trial)
    return chosen


def check(study: optuna.Study, model: ModelInfo, measurement: Measures, host: str,
          since: list[int]) -> AnchorCheck | None:
    """Re-run the anchor; when it drifted beyond DRIFT_LIMIT, queue again the trials
    `since` the last check that `measured_in` allows. The check is kept and returned;
    None when the study has no anchor yet or its run did not finish its requests."""
    anchor = anchor_trial(study)
    if anchor is None:
        return None
    kept = TrialRecord.read(anchor, study.study_name)
    if kept.settings is None:  # anchor_trial chose it for its settings: never so
        return None
    seen: list[RequestRecord] = []

    def on_request(event: RequestRecord) -> bool:
        seen.append(event)
        return len(seen) >= ANCHOR_REQUESTS  # stop the worker: the check has its requests

    result = measurement.run(model, kept.settings, on_request,
                             anchor=True)
    now = {r.index: r.latency_s for r in result.requests}
    if any(index not in now for index in range(ANCHOR_REQUESTS)):
        return None
    ratio = (sum(now[i] for i in range(ANCHOR_REQUESTS))
             / sum(kept.latencies[:ANCHOR_REQUESTS]))
    drifted = abs(ratio - 1) > DRIFT_LIMIT
    requeued = tuple(requeue(study, measured_in(study, since))) if drifted else ()
    done = AnchorCheck(after_trial=max(since, default=-1), anchor_trial=anchor.number,
                       ratio=ratio, drifted=drifted, requeued=requeued, host=host,
                       at=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    checks = StudyRecord.read(study).anchors
    keep(study.set_user_attr, study_attrs(anchors=(*checks, done)))
    return done


def requeue(study: optuna.Study, trials: list[optuna.trial.FrozenTrial],
            label: str = DRIFT_LABEL) -> Iterable[int]:
    """Queue each trial's configuration again, as its re-measurement (`label` says why)."""
    for trial in trials:
        kept = TrialRecord.read(trial, study.study_name)
        study.enqueue_trial(dict(trial.params), user_attrs=trial_attrs(
            label=f"{label}{trial.number}", remeasures=trial.number, pinned=kept.pinned))
        yield trial.number


def measured_busy(kept: TrialRecord, busy_limit: float) -> float | None:
    """What the other processes used (percent of one core) while the trial `kept`
    records ran, when that was more than `busy_limit`; None when not, or not known."""
    others = kept.stats.other_cpu_percent_mean if kept.stats else None
    return others if busy_limit > 0 and others is not None and others > busy_limit else None


def describe(checks: tuple[AnchorCheck, ...]) -> str:
    """One line on a search's anchor checks, for the report's notes; "" without any."""
    if not checks:
        return ""
    ratios = ", ".join(f"{c.ratio:.2f}x" for c in checks)
    anchor = checks[-1].anchor_trial
    moved = [c for c in checks if c.drifted]
    if not moved:
        return (f"drift anchor (trial {anchor}'s configuration) steady over {len(checks)} "
                f"check(s): {ratios} of its first run, within ±{DRIFT_LIMIT:.0%}")
    taken = sorted({n for c in moved for n in c.requeued})
    again = (f"trials {', '.join(map(str, taken))} measured again" if taken
             else "nothing to measure again")
    return (f"drift anchor (trial {anchor}'s configuration) moved beyond ±{DRIFT_LIMIT:.0%} "
            f"in {len(moved)} of {len(checks)} check(s) ({ratios} of its first run): {again}")
