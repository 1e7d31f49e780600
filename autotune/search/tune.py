"""`autotune MODEL` as one library call: the set-up (the model inspected, the storage and
the study opened, the live parts built), the tuner's sequence (orchestrate.run_study:
search, finalists, confirmation), then the export and the report.

Example:
    >>> options = TuneOptions(trials=3, finalists=1, rounds=1, workload=workload, out=None,
    ...                       studies_dir=folder, anchor_every=0, busy_limit=0)
    >>> report = tune(demo_model_path(), options)
    >>> report.n_trials, report.winner.score_s <= report.baseline.score_s
    (3, True)
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable

import optuna

from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.hardware import Hardware, detect, machine_class
from autotune.measure.machine_lock import MachineLock
from autotune.measure.model import inspect_model
from autotune.measure.settings import Settings
from autotune.measure.workload import builtin_workload
from autotune.safe_text import visible
from autotune.search.budget import Budget
from autotune.search.confirm import BASELINE
from autotune.search.costs import LIMIT_CEILING_S, Costs
from autotune.search.events import OnEvent, Started, Waiting
from autotune.search.options import TuneOptions
from autotune.search.orchestrate import Parts, Tuned, open_study_with, run_study
from autotune.search.space import SearchSpace, build_space
from autotune.search.study import Measurement, process_seed
from autotune.studies import export, window
from autotune.studies.explain import explanation
from autotune.studies.records import ConfirmRun, Contender, TuneReport
from autotune.studies.storage import location, open_storage, study_names


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


def representative(runs: tuple[ConfirmRun, ...], label: str) -> ConfirmRun | None:
    """A candidate's run with the median score: the one its report columns show."""
    scored = [(r.score.total_s, r) for r in runs if r.label == label and r.score is not None]
    ok = [r for _, r in sorted(scored, key=lambda pair: pair[0])]
    return ok[(len(ok) - 1) // 2] if ok else None


def tune(model_path: str | os.PathLike[str], options: TuneOptions,
         on_event: OnEvent | None = None) -> TuneReport:
    """Search, confirm against the guide's defaults, and write the export script."""
    started = time.monotonic()
    budget = Budget(options.budget_s, started=started) if options.budget_s is not None else None
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
                              options.goals, lock=lock, costs=costs, budget=budget)
    with costs.timing("setup_s"):
        storage = open_storage(options.studies_dir, options.storage,
                               longest_trial_s=options.trial_timeout_s or LIMIT_CEILING_S)
        name = options.study_name or default_study_name(model.path, machine,
                                                        study_names(storage))
        parts = Parts(measurement, seed=process_seed(options.seed, machine.host))
        study = open_study_with(parts, name, storage, model, machine, space,
                                warm_start=options.warm_start)
    notes = (*space.notes, *options.goals.notes(machine.can_offload))
    if on_event is not None:
        on_event(Started(study=name, storage=location(options.studies_dir, options.storage),
                         resumed=any(t.state != optuna.trial.TrialState.WAITING
                                     for t in study.trials), notes=notes))
    tuned = run_study(study, model, machine, space, parts, options, on_event)
    done = report(study, space, options, tuned, costs, (*notes, *tuned.notes))
    return dataclasses.replace(done, budget_s=options.budget_s,
                               wall_s=time.monotonic() - started)


def report(study: optuna.Study, space: SearchSpace, options: TuneOptions, tuned: Tuned,
           costs: Costs, notes: tuple[str, ...]) -> TuneReport:
    """Write the export script (unless `options.out` is None) and say what the run found."""
    outcome, winner, kept = tuned.outcome, tuned.winner, tuned.profiles
    text = export.export_text(study, fmt=options.fmt)
    written = export.write(options.out, text, options.force) if options.out else None
    best = winner.settings.to_env(space.tuned_fields)
    runs = outcome.confirmation.runs
    baseline = outcome.confirmation.candidate(BASELINE)
    baseline_run, winner_run = representative(runs, BASELINE), representative(runs, winner.label)
    chosen_window = winner.settings.context_window
    return TuneReport(
        study_name=study.study_name, storage=location(options.studies_dir, options.storage),
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
