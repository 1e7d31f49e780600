"""The tuner's sequence: search, finalists, confirmation against the guide's defaults, and
the winner kept in the study, given the parts it runs with.

`tune()` (tune.py) inspects the model, opens the storage and builds the live parts (a
worker per trial behind the machine lock), then calls `open_study_with` and `run_study`.
`benchmarks/replay.py` calls the same two with a measurement that replays a recorded
grid, and its strategies' samplers, pruners and baselines: a benchmark of the tuner
measures the tuner's own code, with the tuner's own defaults (`TuneOptions`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from autotune.errors import MeasurementFailed
from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.goals import Goals, closest
from autotune.measure.hardware import Hardware
from autotune.measure.model import ModelInfo
from autotune.measure.records import Status, TrialResult
from autotune.measure.settings import Settings
from autotune.search import drift
from autotune.search.budget import MAX_ROUNDS, Budget, spoken
from autotune.search.confirm import (
    BASELINE,
    Candidate,
    Outcome,
    confirm,
    is_guide_defaults,
    median_stats,
)
from autotune.search.events import OnEvent
from autotune.search.options import TuneOptions
from autotune.search.space import SearchSpace
from autotune.search.study import (
    Baseline,
    Measurement,
    PrunerFactory,
    SamplerFactory,
    open_study,
    search,
    tpe_sampler,
    wilcoxon_pruner,
)
from autotune.studies import profiles, standing
from autotune.studies.records import (
    CandidateResult,
    Confirmation,
    Profile,
    StudyRecord,
    TrialRecord,
    Winner,
    keep,
    study_attrs,
)


def guide_baselines(space: SearchSpace, model: ModelInfo, machine: Hardware) -> list[Baseline]:
    """The guide's model-size advice, then its defaults (SearchSpace.baselines)."""
    return space.baselines(model, machine)


@dataclass(frozen=True)
class Parts:
    """What a study runs with: the tuner's own, unless a benchmark swaps one.

    `measurement` is how every trial and confirmation run measures (`Measurement.run`):
    a live worker per trial, or a subclass that replays recorded runs. `seed` seeds this
    process's sampler (study.process_seed); `sampler` and `pruner` make them;
    `baselines` gives what a new study queues first.
    """

    measurement: Measurement
    seed: int | None = None
    sampler: SamplerFactory = tpe_sampler
    pruner: PrunerFactory = wilcoxon_pruner
    baselines: Callable[[SearchSpace, ModelInfo, Hardware], list[Baseline]] = guide_baselines


@dataclass(frozen=True)
class Tuned:
    """What `run_study` decided and kept: the confirmation, its winner, the profiles, and
    the notes the run adds (drift, finalists dropped by racing)."""

    outcome: Outcome
    winner: CandidateResult
    profiles: dict[str, Profile]
    notes: tuple[str, ...]


def open_study_with(parts: Parts, name: str, storage: optuna.storages.BaseStorage,
                    model: ModelInfo, machine: Hardware, space: SearchSpace,
                    warm_start: bool = True) -> optuna.Study:
    """Create or resume the study (study.open_study) with the parts' sampler, pruner and
    baselines."""
    return open_study(name, storage, model, machine, parts.measurement, space, parts.seed,
                      warm_start=warm_start, sampler=parts.sampler, pruner=parts.pruner,
                      baselines=parts.baselines(space, model, machine))


def search_study(study: optuna.Study, model: ModelInfo, machine: Hardware,
                 space: SearchSpace, parts: Parts, options: TuneOptions,
                 on_event: OnEvent | None = None) -> tuple[str, ...]:
    """`options.trials` more trials (study.search), with the drift anchor and the busy
    check as options set them; the notes it adds (the anchor moved)."""
    checked = len(StudyRecord.read(study).anchors)
    budget = parts.measurement.budget
    go_on = None
    if budget is not None:

        def go_on() -> bool:
            # the finalists one more trial could make: the distinct ones so far, and it
            known = len(finalists(study, options.finalists, space.min_context)) - 1
            return not budget.too_small and budget.search_may_go_on(
                min(options.finalists, known + 1), options.rounds)

    before = finished_trials(study)
    with parts.measurement.costs.timing("search_s"):
        search(study, model, space, parts.measurement, machine.host, options.trials,
               options.timeout_s, on_event, sampler_seed=parts.seed,
               anchor_every=options.anchor_every, busy_limit=options.busy_limit,
               go_on=go_on)
    drifted = drift.describe(StudyRecord.read(study).anchors[checked:])
    notes = (drifted,) if drifted else ()
    if budget is not None and budget.too_small:
        raise MeasurementFailed(f"study {study.study_name!r}: {budget.too_small}; nothing "
                                "written (the study keeps its stopped trial)")
    ran = finished_trials(study) - before
    if budget is not None and ran < options.trials:
        notes = (*notes, f"{spoken(budget.seconds)} budget: the search ran {ran} of "
                         f"{options.trials} trials, leaving the time the confirmation needs")
    return notes


def run_study(study: optuna.Study, model: ModelInfo, machine: Hardware, space: SearchSpace,
              parts: Parts, options: TuneOptions, on_event: OnEvent | None = None) -> Tuned:
    """Search, confirm the finalists and the profiles' trials against the guide's defaults
    over `options.rounds`, and keep the winner in the study.

    Raises MeasurementFailed when nothing can be confirmed or nothing won.
    """
    measurement, name = parts.measurement, study.study_name
    goals = measurement.goals
    notes = search_study(study, model, machine, space, parts, options, on_event)
    points = [p for p in profiles.points_of(study)  # a resumed study may hold smaller windows
              if p.settings.context_window >= space.min_context]
    candidates = with_profiles(finalists(study, options.finalists, space.min_context),
                               profiles.choose(points))
    if len(candidates) == 1 and goals.limits:
        raise MeasurementFailed(f"study {name!r}: {unmet_in_search(study, goals)}; "
                                "nothing confirmed, nothing written")
    if len(candidates) == 1:
        raise MeasurementFailed(f"study {name!r}: no trial finished without failing or "
                                "overflowing the context, so there is nothing to confirm; see "
                                f"`autotune show {name}`")
    candidates, rounds, planned = plan_confirmation(candidates, options.rounds,
                                                    measurement.budget)
    notes = (*notes, *planned)
    with measurement.costs.timing("confirmation_s"):
        outcome = confirm(candidates, confirm_run(measurement, model), rounds,
                          measurement.weights, options.seed, on_event, goals,
                          racing=options.racing, more_rounds=more_rounds(measurement.budget),
                          extra_rounds=MAX_ROUNDS - rounds)
    winner = outcome.winner
    if winner is None and goals.limits and any(
            c.complete for c in outcome.confirmation.candidates):
        raise MeasurementFailed(f"study {name!r}: "
                                f"{unmet_in_confirmation(outcome.confirmation, goals)}"
                                " (medians over the confirmation rounds); nothing written")
    if winner is None:
        raise MeasurementFailed(f"study {name!r}: no finalist finished every confirmation "
                                "round")
    notes = (*notes, *(f"confirmation dropped {why}" for why in outcome.dropped))
    if outcome.added_rounds:
        notes = (*notes, f"confirmation ran {outcome.added_rounds} more round(s) than "
                         f"planned to separate near-tied finalists")
    if outcome.unseparated:
        notes = (*notes, outcome.unseparated)
    if measurement.budget is not None:
        notes = (*notes, measurement.budget.describe())
    kept = profiles.kept_profiles(points, outcome.confirmation, winner)
    score_s, mean_s = winner.median_score_s, winner.median_mean_s
    assert score_s is not None and mean_s is not None  # a winner finished every round
    keep(study.set_user_attr, study_attrs(confirmation=outcome.confirmation, winner=Winner(
        label=winner.label, trial_number=winner.trial_number, settings=winner.settings,
        score_s=score_s, mean_s=mean_s,
        improvement=outcome.improvement, confirmed=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        host=machine.host, tie_break=outcome.tie_break,
        objective_value=winner.median_objective), profiles=kept))
    return Tuned(outcome, winner, kept, notes)


def finished_trials(study: optuna.Study) -> int:
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def plan_confirmation(candidates: list[Candidate], rounds: int, budget: Budget | None
                      ) -> tuple[list[Candidate], int, tuple[str, ...]]:
    """The candidates and rounds that fit the budget (all of them without one), and the
    notes saying what the budget gave up (search/budget.py)."""
    if budget is None:
        return candidates, rounds, ()
    *rest, baseline = candidates
    finals = [c for c in rest if c.race]
    extra = [c for c in rest if not c.race]
    plan = budget.fit_confirmation([c.settings for c in finals], [c.settings for c in extra],
                                   rounds)
    chosen = [*finals[:plan.finalists], *(extra if plan.profiles else []), baseline]
    notes = tuple(f"{spoken(budget.seconds)} budget: the confirmation gave up {what}"
                  for what in plan.gave_up)
    return chosen, plan.rounds, notes


def confirm_run(measurement: Measurement, model: ModelInfo
                ) -> Callable[[Candidate], TrialResult]:
    """How confirmation measures a candidate: whole, but the guide's defaults stopped at
    the budget's cap (search/budget.py), their improvement then a lower bound."""
    budget = measurement.budget

    def run(candidate: Candidate) -> TrialResult:
        limit = (budget.baseline_limit_s() if budget is not None and candidate.label == BASELINE
                 else None)
        return measurement.run(model, candidate.settings, limit_s=limit)

    return run


def more_rounds(budget: Budget | None) -> Callable[[list[Candidate]], bool] | None:
    """With a budget, another round for near-tied finalists while one fits."""
    if budget is None:
        return None

    def fits(active: list[Candidate]) -> bool:
        return budget.may_add_round([c.settings for c in active])

    return fits


def finalists(study: optuna.Study, count: int, min_context: int = 0) -> list[Candidate]:
    """The best `count` feasible trials with distinct settings and a window of at least
    `min_context` (a resumed study may hold smaller ones), then the guide's defaults."""
    chosen: list[Candidate] = []
    seen: set[Settings] = set()
    for trial in standing.ranked(study):
        kept = TrialRecord.read(trial, study.study_name)
        if kept.settings is None or (is_baseline_run(kept) and
                                     is_guide_defaults(kept.settings)):
            continue  # the guide's defaults are re-measured as the baseline anyway
        if kept.settings.context_window < min_context:
            continue
        if kept.settings not in seen and len(chosen) < count:
            seen.add(kept.settings)
            chosen.append(Candidate(f"trial {trial.number}", kept.settings, trial.number))
    return [*chosen, Candidate(BASELINE, Settings(**GUIDE_DEFAULTS))]


def is_baseline_run(kept: TrialRecord) -> bool:
    """The guide-defaults baseline trial, or a re-measurement (drift.py): of the defaults,
    when its settings are theirs."""
    return kept.label == BASELINE or kept.remeasures is not None


def with_profiles(candidates: list[Candidate], chosen: dict[str, profiles.Point]
                  ) -> list[Candidate]:
    """The finalists, then the balanced and lean profiles' trials not among them, then the
    guide's defaults: every profile is re-measured against the defaults like the winner."""
    *finals, baseline = candidates
    for name in profiles.PROFILES[1:]:
        point = chosen.get(name)
        if point is None or point.label == BASELINE:
            continue  # the guide's defaults run in confirmation anyway
        if all(c.settings != point.settings for c in [*finals, baseline]):
            finals.append(Candidate(f"trial {point.trial_number}", point.settings,
                                    point.trial_number, race=False))
    return [*finals, baseline]


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
