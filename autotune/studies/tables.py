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

import datetime
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import optuna
import pandas as pd

from autotune.guide import DEFAULTS_LABEL
from autotune.measure.records import Status, TrialStats
from autotune.measure.scoring import Score
from autotune.measure.settings import BY_FIELD, format_value
from autotune.studies import standing
from autotune.studies.records import Improvement, StudyRecord, TrialRecord
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


@dataclass(frozen=True)
class TrialRow:
    """One trial as `show` prints it and `load_studies` tabulates it (`flat`)."""

    trial: int
    state: str  # Optuna's: COMPLETE, PRUNED, FAIL, RUNNING
    status: Status | None
    reason: str
    label: str | None
    trial_host: str | None
    score_s: float | None  # the score, when it finished
    value: float | None  # the study's objective (the score only by default)
    infeasible: str | None
    started: datetime.datetime | None
    duration_s: float | None
    settings: dict[str, object]  # each tuned setting, by field name
    score: Score | None
    stats: TrialStats

    def flat(self) -> dict[str, object]:
        """One flat row: the fields, each setting, the score's parts (`score_*`) and the
        latency statistics, as pandas and `show --json` take it."""
        row: dict[str, object] = {name: getattr(self, name) for name in FLAT_TRIAL_FIELDS}
        row.update(self.settings)
        for key in SCORE_COLUMNS:
            row[f"score_{key}"] = getattr(self.score, key) if self.score else None
        for key in STAT_COLUMNS:
            row[key] = getattr(self.stats, key)
        return row


FLAT_TRIAL_FIELDS = ("trial", "state", "status", "reason", "label", "trial_host", "score_s",
                     "value", "infeasible", "started", "duration_s")


def trial_row(trial: optuna.trial.FrozenTrial, study_name: str = "") -> TrialRow:
    kept = TrialRecord.read(trial, study_name)
    finished = kept.status == Status.OK
    return TrialRow(
        trial=trial.number, state=trial.state.name, status=kept.status, reason=kept.reason,
        label=kept.label, trial_host=kept.host,
        score_s=kept.score.total_s if finished and kept.score else None,
        value=trial.value if finished else None, infeasible=kept.infeasible,
        started=trial.datetime_start,
        duration_s=trial.duration.total_seconds() if trial.duration else None,
        settings={name: kept.settings.value(name) if kept.settings else trial.params.get(name)
                  for name, var in BY_FIELD.items() if var.tuned},
        score=kept.score, stats=kept.stats or TrialStats())


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
        rows += [{**meta, **trial_row(t, study.study_name).flat()}
                 for t in study.get_trials(deepcopy=False)]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class SummaryRow:
    """One study as `compare` prints it and `study_summaries` tabulates it (`flat`)."""

    metadata: dict[str, object]  # the study-level columns (`metadata`)
    trials: int
    ok: int
    pruned: int
    failed: int
    best_trial: int | None
    objective: str
    best_value: float | None
    best_score_s: float | None
    best_mean_s: float | None
    winner: str | None
    winner_score_s: float | None
    winner_mean_s: float | None
    defaults_mean_s: float | None
    improvement: Improvement | None
    exports: dict[str, str | None]  # the winner's tuned JARVIS_* variables (else the best's)

    def flat(self) -> dict[str, object]:
        """One flat row: the metadata, the counts and results, the speedup and its interval
        (`speedup*`), then the variables, as pandas and `compare --json` take it."""
        found = self.improvement
        return {**self.metadata,
                **{name: getattr(self, name) for name in FLAT_SUMMARY_FIELDS},
                "speedup": found.speedup if found else None,
                "speedup_min": found.speedup_min if found else None,
                "speedup_max": found.speedup_max if found else None,
                "speedup_low": found.low if found else None,
                "speedup_high": found.high if found else None,
                "speedup_at_least": found.at_least if found else None,
                **self.exports}


FLAT_SUMMARY_FIELDS = ("trials", "ok", "pruned", "failed", "best_trial", "objective",
                       "best_value", "best_score_s", "best_mean_s", "winner",
                       "winner_score_s", "winner_mean_s", "defaults_mean_s")


def summary_row(study: optuna.Study) -> SummaryRow:
    record = StudyRecord.read(study)
    trials = study.get_trials(deepcopy=False)
    statuses = [TrialRecord.read(t, study.study_name).status for t in trials]
    best = standing.best(study)
    best_kept = TrialRecord.read(best, study.study_name) if best else None
    winner = record.winner
    baseline = record.confirmation.candidate(DEFAULTS_LABEL) if record.confirmation else None
    settings = winner.settings if winner else best_kept.settings if best_kept else None
    exports = {BY_FIELD[name].name: None if settings is None
               else format_value(settings.value(name))
               for name in record.tuned_fields if name in BY_FIELD}
    return SummaryRow(
        metadata=metadata(study, record), trials=len(trials), ok=statuses.count(Status.OK),
        pruned=statuses.count(Status.PRUNED),
        failed=sum(s is not None and s.failed for s in statuses),
        best_trial=best.number if best else None,
        objective=str(record.goals.objective) if record.goals else "score",
        best_value=best.value if best else None,
        best_score_s=best_kept.score.total_s if best_kept and best_kept.score else None,
        best_mean_s=best_kept.stats.mean_s if best_kept and best_kept.stats else None,
        winner=winner.label if winner else None,
        winner_score_s=winner.score_s if winner else None,
        winner_mean_s=winner.mean_s if winner else None,
        defaults_mean_s=baseline.median_mean_s if baseline else None,
        improvement=winner.improvement if winner else None, exports=exports)


def study_summaries(location: str | os.PathLike[str] | None = None,
                    studies: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per study: trial counts by outcome, best and confirmed winner, improvement."""
    return pd.DataFrame([summary_row(s).flat()
                         for s in selected(open_location(location), studies)])


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
