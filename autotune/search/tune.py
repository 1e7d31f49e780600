"""`autotune MODEL`: search, confirm, export, as one library call.

Example:
    >>> options = TuneOptions(trials=3, finalists=1, rounds=1, workload=workload, out=None,
    ...                       studies_dir=folder, anchor_every=0, busy_limit=0)
    >>> report = tune(demo_model_path(), options)
    >>> report.n_trials, report.winner.score_s <= report.baseline.score_s
    (3, True)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import optuna

from autotune.errors import MeasurementFailed
from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.fit import DEFAULT_MARGIN
from autotune.measure.goals import Goals, closest
from autotune.measure.hardware import Hardware, detect, machine_class
from autotune.measure.machine_lock import MachineLock
from autotune.measure.model import inspect_model
from autotune.measure.records import Status
from autotune.measure.scoring import Weights
from autotune.measure.settings import Settings
from autotune.measure.trial import DEFAULT_TOKENS
from autotune.measure.workload import Workload, builtin_workload
from autotune.safe_text import visible
from autotune.search import drift
from autotune.search.confirm import BASELINE, Candidate, confirm, median_stats
from autotune.search.costs import Costs
from autotune.search.events import OnEvent, Started, Waiting
from autotune.search.space import DEFAULT_MIN_CONTEXT, build_space
from autotune.search.study import (
    Measurement,
    open_study,
    process_seed,
    search,
)
from autotune.studies import export, profiles, standing, window
from autotune.studies.explain import explanation
from autotune.studies.records import (
    Confirmation,
    ConfirmRun,
    Contender,
    StudyRecord,
    TrialRecord,
    TuneReport,
    Winner,
    keep,
    study_attrs,
)
from autotune.studies.storage import location, open_storage, study_names


@dataclass
class TuneOptions:
    trials: int = 8  # the study module's docstring says why
    timeout_s: float | None = None
    seed: int | None = None
    workload: Workload | None = None
    tokens_per_request: int = DEFAULT_TOKENS
    clients: int = 1
    extended: bool = False
    fixed: dict[str, object] = field(default_factory=dict)
    finalists: int = 3
    rounds: int = 2
    weights: Weights = field(default_factory=Weights)
    goals: Goals = field(default_factory=Goals)
    trial_timeout_s: float = 300.0
    study_name: str | None = None
    studies_dir: str | None = None
    storage: str | None = None
    out: str | None = "jarvis.env"
    fmt: str = "shell"
    force: bool = False
    wait: bool = True
    min_context: int = DEFAULT_MIN_CONTEXT  # no smaller window is a candidate
    warm_start: bool = True  # a new study starts from earlier similar studies' winners
    anchor_every: int = drift.ANCHOR_EVERY  # trials between drift checks; 0: none
    busy_limit: float = drift.BUSY_LIMIT  # others' CPU (% of a core) to re-measure at; 0: never
    racing: bool = True  # a finalist clearly behind runs no further confirmation round
    gpu_margin: int = DEFAULT_MARGIN  # left free on each offload device (measure/fit.py)


def default_study_name(model_path: str, machine: Hardware,
                       existing: Iterable[str] = ()) -> str:
    """The model file's name and the machine's class: `SmolLM2-135M-Instruct.Q4_1@2c4t-16g-
    1a2b3c4d`, the same on every host of the class, so a fleet shares one study.

    A study named after the host (`...Q4_1@laptop`, as autotune named them before machine
    classes) among `existing` is resumed under that name. A downloaded file's name may hold
    control characters; the study is named with them escaped (safe_text.visible), so the
    name can be typed back and shown as it is kept.
    """
    stem = os.path.basename(model_path).removesuffix(".gguf")
    legacy = visible(f"{stem}@{machine.host}")
    if legacy in set(existing):
        return legacy
    return visible(f"{stem}@{machine_class(machine).name}")


def finalists(study: optuna.Study, count: int, min_context: int = 0) -> list[Candidate]:
    """The best `count` feasible trials with distinct settings and a window of at least
    `min_context` (a resumed study may hold smaller ones), then the guide's defaults."""
    chosen: list[Candidate] = []
    seen = set()
    for trial in standing.ranked(study):
        kept = TrialRecord.read(trial, study.study_name)
        if kept.settings is None or (is_baseline_run(kept) and
                                     is_guide_defaults(kept.settings)):
            continue  # the guide's defaults are re-measured as the baseline anyway
        if int(kept.settings.get("context_window", 0)) < min_context:  # type: ignore[call-overload]
            continue
        key = tuple(sorted(kept.settings.items()))
        if key not in seen and len(chosen) < count:
            seen.add(key)
            chosen.append(Candidate(f"trial {trial.number}", Settings.from_dict(kept.settings),
                                    trial.number))
    return [*chosen, Candidate(BASELINE, Settings(**GUIDE_DEFAULTS))]


def is_baseline_run(kept: TrialRecord) -> bool:
    """The guide-defaults baseline trial, or a re-measurement (drift.py): of the defaults,
    when its settings are theirs."""
    return kept.label == BASELINE or kept.remeasures is not None


def is_guide_defaults(settings: dict[str, object]) -> bool:
    """The guide's defaults as the baseline trial ran them: a `--fix` (say n_threads=1)
    makes that trial another configuration, a finalist like any other. GPU layers aside:
    a build without offload runs the guide's -1 as 0."""
    return all(settings.get(k) == v for k, v in GUIDE_DEFAULTS.items() if k != "n_gpu_layers")


def with_profiles(candidates: list[Candidate], chosen: dict[str, profiles.Point]
                  ) -> list[Candidate]:
    """The finalists, then the balanced and lean profiles' trials not among them, then the
    guide's defaults: every profile is re-measured against the defaults like the winner."""
    *finals, baseline = candidates
    for name in profiles.PROFILES[1:]:
        point = chosen.get(name)
        if point is None or point.label == BASELINE:
            continue  # the guide's defaults run in confirmation anyway
        settings = Settings.from_dict(point.settings)
        if all(c.settings != settings for c in [*finals, baseline]):
            finals.append(Candidate(f"trial {point.trial_number}", settings,
                                    point.trial_number, race=False))
    return [*finals, baseline]


def representative(runs: tuple[ConfirmRun, ...], label: str) -> ConfirmRun | None:
    """A candidate's run with the median score: the one its report columns show."""
    ok = sorted((r for r in runs if r.label == label and r.score is not None),
                key=lambda r: r.score.total_s)  # type: ignore[union-attr]
    return ok[(len(ok) - 1) // 2] if ok else None


def tune(model_path: str | os.PathLike[str], options: TuneOptions,
         on_event: OnEvent | None = None) -> TuneReport:
    """Search, confirm against the guide's defaults, and write the export script."""
    costs = Costs()
    with costs.timing("inspection_s"):
        model = inspect_model(model_path)
    if options.out:
        export.check_writable(options.out, options.force)
    export.check_format(options.fmt)
    machine = detect()
    space = build_space(model, machine, options.extended, options.fixed, options.min_context,
                        gpu_margin=options.gpu_margin,
                        gpu_budget=options.goals.max_gpu_memory_bytes)
    lock = MachineLock(wait=options.wait, on_wait=None if on_event is None else
                       lambda holder: on_event(Waiting(holder.describe())))
    measurement = Measurement(options.workload or builtin_workload(), options.tokens_per_request,
                              options.clients, options.trial_timeout_s, options.weights,
                              options.goals, lock=lock, costs=costs)
    with costs.timing("setup_s"):
        storage = open_storage(options.studies_dir, options.storage,
                               longest_trial_s=options.trial_timeout_s)
        name = options.study_name or default_study_name(model.path, machine,
                                                        study_names(storage))
        seed = process_seed(options.seed, machine.host)
        study = open_study(name, storage, model, machine, measurement, space, seed,
                           warm_start=options.warm_start)
    notes = (*space.notes, *options.goals.notes(machine.can_offload))
    if on_event is not None:
        on_event(Started(study=name, storage=location(options.studies_dir, options.storage),
                         resumed=any(t.state != optuna.trial.TrialState.WAITING
                                     for t in study.trials), notes=notes))
    checked = len(StudyRecord.read(study).anchors)
    with costs.timing("search_s"):
        search(study, model, space, measurement, machine.host, options.trials,
               options.timeout_s, on_event, sampler_seed=seed,
               anchor_every=options.anchor_every, busy_limit=options.busy_limit)
    drifted = drift.describe(StudyRecord.read(study).anchors[checked:])
    notes = (*notes, *((drifted,) if drifted else ()))
    points = [p for p in profiles.points_of(study)  # a resumed study may hold smaller windows
              if int(p.settings.get("context_window", 0)) >= space.min_context]  # type: ignore[call-overload]
    candidates = with_profiles(finalists(study, options.finalists, space.min_context),
                               profiles.choose(points))
    if len(candidates) == 1 and options.goals.limits:
        raise MeasurementFailed(f"study {name!r}: {unmet_in_search(study, options.goals)}; "
                                "nothing confirmed, nothing written")
    if len(candidates) == 1:
        raise MeasurementFailed(f"study {name!r}: no trial finished without failing or "
                            "overflowing the context, so there is nothing to confirm; see "
                            f"`autotune show {name}`")
    with costs.timing("confirmation_s"):
        outcome = confirm(candidates, lambda s: measurement.run(model, s), options.rounds,
                          options.weights, options.seed, on_event, options.goals,
                          racing=options.racing)
    winner = outcome.winner
    if winner is None and options.goals.limits and any(
            c.complete for c in outcome.confirmation.candidates):
        raise MeasurementFailed(f"study {name!r}: "
                                f"{unmet_in_confirmation(outcome.confirmation, options.goals)}"
                                " (medians over the confirmation rounds); nothing written")
    if winner is None:
        raise MeasurementFailed(f"study {name!r}: no finalist finished every confirmation "
                                "round")
    notes = (*notes, *(f"confirmation dropped {why}" for why in outcome.dropped))
    kept = profiles.kept_profiles(points, outcome.confirmation, winner)
    keep(study.set_user_attr, study_attrs(confirmation=outcome.confirmation, winner=Winner(
        label=winner.label, trial_number=winner.trial_number, settings=winner.settings,
        score_s=winner.median_score_s, mean_s=winner.median_mean_s,  # type: ignore[arg-type]
        improvement=outcome.improvement, confirmed=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        host=machine.host, tie_break=outcome.tie_break,
        objective_value=winner.median_objective), profiles=kept))
    text = export.export_text(study, fmt=options.fmt)
    written = export.write(options.out, text, options.force) if options.out else None
    best = Settings.from_dict(winner.settings).to_env(space.tuned_fields)
    runs = outcome.confirmation.runs
    baseline = outcome.confirmation.candidate(BASELINE)
    baseline_run, winner_run = representative(runs, BASELINE), representative(runs, winner.label)
    chosen_window = int(winner.settings["context_window"])  # type: ignore[call-overload]
    return TuneReport(
        study_name=name, storage=location(options.studies_dir, options.storage),
        n_trials=len(study.trials), best=best,
        winner=Contender(winner.label, best, winner.median_score_s,
                         winner_run.stats if winner_run else None, winner.trial_number,
                         winner.median_objective, winner.missed),
        baseline=Contender(BASELINE, Settings(**GUIDE_DEFAULTS).to_env(space.tuned_fields),
                           baseline.median_score_s if baseline else None,
                           baseline_run.stats if baseline_run else None, None,
                           baseline.median_objective if baseline else None,
                           baseline.missed if baseline else ()),
        improvement=outcome.improvement, candidates=outcome.confirmation.candidates,
        notes=notes, out=str(written) if written else None, export=text,
        costs=costs.parts(), held=tuple(costs.held), profiles=tuple(kept.values()),
        phases={"search": costs.search_s, "confirmation": costs.confirmation_s},
        context=window.holds(chosen_window, winner_run.stats if winner_run else None),
        context_warning=window.warning(chosen_window) or "", tie_break=outcome.tie_break,
        explanation=explanation(study), objective=str(options.goals.objective),
        targets=tuple(t.describe() for t in options.goals.limits))


def unmet_in_search(study: optuna.Study, goals: Goals) -> str:
    """No trial met the goals' limits: which came closest, by what (see goals.closest)."""
    measured = []
    for trial in study.get_trials(deepcopy=False):
        kept = TrialRecord.read(trial, study.study_name)
        others = {k: v for k, v in trial.constraints.items() if not k.startswith("target:")}
        if (trial.state == optuna.trial.TrialState.COMPLETE and kept.stats is not None
                and kept.status == Status.OK and all(v <= 0 for v in others.values())):
            measured.append((f"trial {trial.number}", kept.stats))
    return closest(goals, measured)


def unmet_in_confirmation(confirmation: Confirmation, goals: Goals) -> str:
    """No finalist (nor the guide's defaults) met the limits in confirmation: the closest."""
    measured = []
    for candidate in confirmation.candidates:
        stats = median_stats(goals, [r.stats for r in confirmation.runs
                                     if r.label == candidate.label and r.score is not None])
        if candidate.complete and stats is not None:
            measured.append((candidate.label, stats))
    return closest(goals, measured, where="finalist")
