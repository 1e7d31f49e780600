"""Which of a study's trials stand: one rule for the search and for every view of a study.

A trial stands when it finished its workload (Optuna's COMPLETE, status ok), met every
constraint of the study (feasible: no failure, no context overflow, every target and
budget), and no later trial took it again. A trial measured while the machine drifted, or
while other processes kept it busy, is queued again (search/drift.py); its re-measurement
supersedes it, and so are the repeats that had reused its measurement.

The tuner's finalists, the export's best trial, "what each setting bought", the profiles'
front, the pandas tables and the plots all read `standing` or `ranked`, so none of them
rests on a trial the study itself set aside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autotune.measure.records import Status
from autotune.studies.records import BUSY_LABEL, DRIFT_LABEL, REPEAT_LABEL, TrialRecord

__all__ = ["BUSY_LABEL", "DRIFT_LABEL", "REPEAT_LABEL", "best", "feasible", "ranked",
           "standing", "superseded"]

if TYPE_CHECKING:
    import optuna

def superseded(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None
               ) -> set[int]:
    """The trials a re-measurement took again, and the repeats that reused their
    measurement: none of them stands any more."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    records = {t.number: TrialRecord.read(t, study.study_name) for t in trials}
    gone = {r.remeasures for r in records.values() if r.remeasures is not None}
    return gone | {number for number, r in records.items() if r.repeat_of in gone}


def feasible(trial: optuna.trial.FrozenTrial, study_name: str = "") -> bool:
    """Finished its workload without failing, without overflowing the context, and within
    every target and budget of the study; `study_name` names the study in a damaged-record
    error. Whether a re-measurement superseded it is `standing`'s to say."""
    import optuna

    return (trial.state == optuna.trial.TrialState.COMPLETE
            and TrialRecord.read(trial, study_name).status == Status.OK
            and all(v <= 0 for v in trial.constraints.values()))


def standing(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count, in the order they ran: feasible, and not superseded."""
    trials = study.get_trials(deepcopy=False)
    gone = superseded(study, trials)
    return [t for t in trials if t.number not in gone and feasible(t, study.study_name)]


def ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count, best first (a COMPLETE trial always has its value)."""
    valued = [(t.value, t) for t in standing(study) if t.value is not None]
    return [t for _, t in sorted(valued, key=lambda pair: pair[0])]


def best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best trial that counts, or None."""
    found = ranked(study)
    return found[0] if found else None
