"""Studies as pandas tables, for notebooks and for `autotune compare` and `show`.

Example:
    >>> import autotune
    >>> trials = autotune.load_studies(folder)     # every trial of every study kept there
    >>> len(trials), sorted(trials.groupby("study")["mean_s"].min().index) == [study]
    (3, True)
    >>> summaries = autotune.study_summaries(folder)
    >>> list(summaries["study"]), bool(summaries["speedup"].notna().all())
    ([...], True)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import optuna
import pandas as pd

from autotune.guide import DEFAULTS_LABEL
from autotune.measure.records import Status, TrialStats
from autotune.measure.settings import BY_FIELD, format_value
from autotune.studies import standing
from autotune.studies.records import StudyRecord, TrialRecord
from autotune.studies.storage import load_study, open_storage, study_names

STAT_COLUMNS = ("mean_s", "p50_s", "p95_s", "p99_s", "max_s", "std_s", "cv", "spikes",
                "ttft_mean_s", "tokens_per_s", "cache_hit_rate", "cache_mean_s", "reloads",
                "load_s", "warmup_s", "peak_rss_bytes", "requests_done")
SCORE_COLUMNS = ("total_s", "mean_s", "spike_penalty_s", "consistency_penalty_s")


def open_location(location: str | os.PathLike[str] | None) -> optuna.storages.BaseStorage:
    """A studies folder, a journal file, or any Optuna storage URL (None: ./studies)."""
    return open_storage(storage=None if location is None else str(location), create=False)


def metadata(study: optuna.Study, record: StudyRecord | None = None) -> dict[str, object]:
    """The study-level columns every trial row carries."""
    record = record or StudyRecord.read(study)
    model, hardware = record.model, record.hardware
    versions, measurement = record.versions, record.measurement
    return {
        "study": study.study_name,
        "model": model.name, "model_file": os.path.basename(model.path),
        "model_fingerprint": model.fingerprint, "architecture": model.architecture,
        "quantization": model.quantization, "model_bytes": model.size_bytes,
        "host": hardware.host,
        "machine_class": record.machine_class.name if record.machine_class else None,
        "cpu": hardware.cpu,
        "physical_cores": hardware.physical_cores, "logical_cores": hardware.logical_cores,
        "memory_bytes": hardware.total_memory_bytes,
        "gpus": ", ".join(g.name for g in hardware.gpus),
        "gpu_offload": hardware.gpu_offload,
        "llama_cpp_python": versions.llama_cpp_python,
        "autotune_version": versions.autotune, "optuna_version": versions.optuna,
        "schema": record.schema,
        "workload": measurement.workload, "workload_requests": measurement.requests,
        "tokens_per_request": measurement.tokens_per_request,
        "clients": measurement.clients,
    }


def trial_row(trial: optuna.trial.FrozenTrial, study_name: str = "") -> dict[str, object]:
    kept = TrialRecord.read(trial, study_name)
    row: dict[str, object] = {
        "trial": trial.number, "state": trial.state.name, "status": kept.status,
        "reason": kept.reason, "label": kept.label, "trial_host": kept.host,
        # the trial's value is its study's objective, the score only by default
        "score_s": kept.score.total_s if kept.status == Status.OK and kept.score else None,
        "value": trial.value if kept.status == Status.OK else None,
        "infeasible": kept.infeasible,
        "started": trial.datetime_start,
        "duration_s": trial.duration.total_seconds() if trial.duration else None,
    }
    settings = kept.settings or {}
    for name, var in BY_FIELD.items():
        if var.tuned:
            row[name] = settings.get(name, trial.params.get(name))
    for key in SCORE_COLUMNS:
        row[f"score_{key}"] = getattr(kept.score, key) if kept.score else None
    stats = kept.stats or TrialStats()
    for key in STAT_COLUMNS:
        row[key] = getattr(stats, key)
    return row


def selected(storage: optuna.storages.BaseStorage, names: Iterable[str] | None
             ) -> list[optuna.Study]:
    return [load_study(name, storage) for name in (names or study_names(storage))]


def load_studies(location: str | os.PathLike[str] | None = None,
                 studies: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per trial of every study at `location`, with the study's metadata.

    Columns: the study's model, host (that made it), machine class, hardware, versions and
    workload; each setting; the score and its parts (`score_*`); the latency statistics;
    the trial's state, status, failure reason and the host that measured it (`trial_host`).
    """
    rows = []
    for study in selected(open_location(location), studies):
        meta = metadata(study)
        rows += [{**meta, **trial_row(t, study.study_name)}
                 for t in study.get_trials(deepcopy=False)]
    return pd.DataFrame(rows)


def summary_row(study: optuna.Study) -> dict[str, object]:
    record = StudyRecord.read(study)
    trials = study.get_trials(deepcopy=False)
    statuses = [TrialRecord.read(t, study.study_name).status for t in trials]
    best = standing.best(study)
    best_kept = TrialRecord.read(best, study.study_name) if best else None
    winner = record.winner
    improvement = winner.improvement if winner else None
    baseline = record.confirmation.candidate(DEFAULTS_LABEL) if record.confirmation else None
    row: dict[str, object] = {
        **metadata(study, record),
        "trials": len(trials), "ok": statuses.count(Status.OK),
        "pruned": statuses.count(Status.PRUNED),
        "failed": sum(s is not None and s.failed for s in statuses),
        "best_trial": best.number if best else None,
        "objective": str(record.goals.objective) if record.goals else "score",
        "best_value": best.value if best else None,
        "best_score_s": best_kept.score.total_s if best_kept and best_kept.score else None,
        "best_mean_s": best_kept.stats.mean_s if best_kept and best_kept.stats else None,
        "winner": winner.label if winner else None,
        "winner_score_s": winner.score_s if winner else None,
        "winner_mean_s": winner.mean_s if winner else None,
        "defaults_mean_s": baseline.median_mean_s if baseline else None,
        "speedup": improvement.speedup if improvement else None,
        "speedup_min": improvement.speedup_min if improvement else None,
        "speedup_max": improvement.speedup_max if improvement else None,
        "speedup_low": improvement.low if improvement else None,
        "speedup_high": improvement.high if improvement else None,
    }
    settings = winner.settings if winner else (best_kept.settings or {} if best_kept else {})
    for name in (f for f in record.tuned_fields if f in BY_FIELD):
        value = settings.get(name)
        row[BY_FIELD[name].name] = None if value is None else format_value(value)
    return row


def study_summaries(location: str | os.PathLike[str] | None = None,
                    studies: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per study: trial counts by outcome, best and confirmed winner, improvement."""
    return pd.DataFrame([summary_row(s) for s in selected(open_location(location), studies)])


def feasible_study(study: optuna.Study) -> optuna.Study:
    """An in-memory copy holding only the trials that count (studies.standing): for
    importances and plots.

    Failed trials carry a placeholder score that would swamp both, and a superseded one
    says what a drifted or busy machine measured.
    """
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a study the user made
    try:
        copy = optuna.create_study(direction="minimize", study_name=study.study_name)
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials(standing.standing(study))
    return copy


# Optuna's default evaluator since 4.x, and the one that needs no scikit-learn: it
# compares where good trials fall in each parameter's range with where all of them fall.
IMPORTANCE_EVALUATOR = "PED-ANOVA"


@dataclass(frozen=True)
class Importances:
    """Parameter importances, the evaluator that computed them, and its caveats."""

    scores: dict[str, float]
    evaluator: str = IMPORTANCE_EVALUATOR
    caveats: tuple[str, ...] = ()


def importance_report(study: optuna.Study) -> Importances:
    """PED-ANOVA importances over the feasible trials; what the evaluator warned of, kept.

    The evaluator warns (for example of too few trials in a range) through Python's
    warnings; those become caveats a report can print, never raw lines on the terminal.
    """
    finished = feasible_study(study)
    varied = {k for t in finished.trials for k in t.params
              if len({u.params.get(k) for u in finished.trials}) > 1}
    if len(finished.trials) < 3 or not varied:
        return Importances({})
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            scores = dict(optuna.importance.get_param_importances(finished, evaluator=evaluator))
        except (ValueError, RuntimeError):
            scores = {}
    caveats = tuple(dict.fromkeys(str(w.message).splitlines()[0] for w in caught))
    return Importances(scores, caveats=caveats)


def importances(study: optuna.Study) -> dict[str, float]:
    """Parameter importances over finished trials ({} when too few): see importance_report."""
    return importance_report(study).scores
