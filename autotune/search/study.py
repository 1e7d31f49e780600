"""The Optuna study: storage, sampler, pruner, baselines, the search, and its records.

Sampler: TPE, multivariate with `group=True`. The space is small, mixed (integers and
categories) and conditional (the cache size exists only when the cache is on): TPE models
such spaces natively, where a Gaussian process wants continuous, unconditional inputs and
CMA-ES no categories at all. TPE ranks trials rather than interpolating their values, so a
noisy latency moves it less than it moves a surrogate fit. Failed trials (crash, out of
memory, timeout, load failure) complete with a constraint violation: TPE then learns to
avoid that region, and no failure is mistaken for a fast configuration.

Pruner: Optuna's WilcoxonPruner. Every request of the workload has a fixed index, and the
trial reports each request's latency (its time to first token, for the `ttft` objective) at
that index as it arrives, so the pruner compares request for request with the best trial
and stops a candidate that is clearly worse. The worker is killed at once. A tail objective
(p95, p99) is no per-request quantity: its trial is stopped only once its final percentile
must exceed the best feasible trial's (goals.tail_certainly_worse), with no test at all.

The defaults below were chosen by replaying this very code over the recorded grid of the
demo model on a 2-core machine (benchmarks/replay.py over benchmarks/results/grid.json);
the tables, and the numbers behind each reason, are in docs/benchmarks.md.
- Budget, 5 trials (was 8, and 12 before that): the median seed is within 5% of the
  optimum after the first trial and stays there; more trials buy time, not quality (over
  1000 seeds, 96% of confirmed winners within 5% at 5 trials, 95% at 8, 43 s sooner; on
  the 1B grid 100% at both, 67 s sooner). `--trials N` on a resumed study adds N.
- Baselines, the guide's size advice first and its defaults second: the advice starts the
  search near the optimum, and the defaults, run second, are pruned once clearly worse.
- Pruner level, p=0.05 per look (was 0.02): a candidate pruned wrongly is one the test could
  barely tell from the best, so a looser level costs little; at 0.1 it costs quality.
- Pruning saves over 40% of the search time at the budget, at equal quality.
- Racing in confirmation (confirm.py) saves time at the same quality; 2 finalists instead
  of 3 would save more and lose quality.
- Sampler, TPE: random search does about as well on this small space, but TPE models the
  conditional cache size natively and prunes with the Wilcoxon test.

Constraints: besides "failed" and "context_overflow", each target and memory budget of the
study's goals (measure/goals.py) is one, `measured - limit`.

Repeats: TPE samples the small, discrete space's best region again and again, and a
configuration the study already measured whole is not measured again (`repeat_of`): the
trial keeps the earlier measurement, labelled as its repeat. A pruned one is measured
again, since it was cut short against another best. In the replay this saves search time
at the same quality (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna

from autotune import __version__
from autotune.errors import AutotuneError, Option
from autotune.measure.goals import Goals, tail_certainly_worse
from autotune.measure.hardware import Hardware, machine_class
from autotune.measure.machine_lock import MachineLock
from autotune.measure.model import ModelInfo
from autotune.measure.records import RequestRecord, Status, TrialResult
from autotune.measure.scoring import Weights, score
from autotune.measure.settings import Settings
from autotune.measure.stats import summarize
from autotune.measure.trial import DEFAULT_TOKENS, TrialSpec, run_trial
from autotune.measure.workload import Workload
from autotune.search import drift
from autotune.search.budget import Budget
from autotune.search.costs import Costs, RunCosts
from autotune.search.events import AnchorChecked, BusyTrial, OnEvent, TrialEnded
from autotune.search.space import SearchSpace
from autotune.search.warm import warm_starts
from autotune.studies import standing
from autotune.studies.liveness import process_identity
from autotune.studies.records import (
    SCHEMA_VERSION,
    MeasurementIdentity,
    StudyRecord,
    TrialRecord,
    Versions,
    keep,
    schema_of,
    study_attrs,
    trial_attrs,
)
from autotune.studies.storage import fail_orphaned_trials, storage_failure

FAILED_SCORE_S = 600.0
STARTUP_TRIALS = 5
# The pruner's level per look (the module's docstring says why 0.05, not 0.02 or 0.1).
P_THRESHOLD = 0.05
PRUNE_AFTER_REQUESTS = 4
# How long a tuner joining a study waits for the tuner creating it to write its record.
RECORD_WAIT_S = 30.0



@dataclass
class Measurement:
    """How every trial of a study measures: these must not change when a study resumes."""

    workload: Workload
    tokens_per_request: int = DEFAULT_TOKENS
    clients: int = 1
    trial_timeout_s: float | None = None  # None: follows what runs cost here (trial_limit_s)
    weights: Weights = field(default_factory=Weights)
    goals: Goals = field(default_factory=Goals)  # what the study minimises, and its limits
    # a configuration the study already measured whole is not measured again (see repeat_of)
    reuse_repeats: bool = field(default=True, compare=False)
    lock: MachineLock = field(default_factory=MachineLock, compare=False)
    costs: Costs = field(default_factory=Costs, compare=False)  # what its trials cost
    # the command's time (search/budget.py): no run goes past it, and each run's cost is
    # kept for its plans
    budget: Budget | None = field(default=None, compare=False)
    # what each configuration's runs cost (the budget's own record when there is a budget)
    run_costs: RunCosts = field(default_factory=RunCosts, compare=False)

    def __post_init__(self) -> None:
        if self.budget is not None:
            self.run_costs = self.budget.runs

    def trial_limit_s(self) -> float:
        """--trial-timeout, or a limit that follows the runs measured so far (search/costs.py)."""
        if self.trial_timeout_s is not None:
            return self.trial_timeout_s
        return self.run_costs.limit_s()

    def spec(self, model: ModelInfo, settings: Settings, limit_s: float | None = None
             ) -> TrialSpec:
        # the stall and load limits follow the trial's limit and the model's size
        timeout = self.trial_limit_s() if limit_s is None else min(limit_s,
                                                                   self.trial_limit_s())
        if self.budget is not None:
            timeout = self.budget.trial_limit_s(timeout)
        return TrialSpec(model.path, settings, self.workload,
                         tokens_per_request=self.tokens_per_request, clients=self.clients,
                         timeout_s=timeout)

    def run(self, model: ModelInfo, settings: Settings, on_request=None,
            before: Callable[[], object] | None = None, anchor: bool = False,
            limit_s: float | None = None) -> TrialResult:
        """One trial, alone on the machine, stopped at `limit_s` at the latest (or the trial
        limit, or the budget's end); `before` runs once the machine is ours. An `anchor`
        run (search/drift.py) is counted apart from the trials."""
        asked = time.perf_counter()
        with self.lock.held("tune"):
            waited = time.perf_counter() - asked
            if before is not None:
                before()
            result = run_trial(self.spec(model, settings, limit_s), on_request=on_request)
        if anchor:
            self.costs.add_anchor(result, waited)
        else:
            self.costs.add_trial(result, waited)
            total = len(self.workload.requests)
            if self.budget is not None:
                self.budget.observe(settings, result, total)
            else:
                self.run_costs.add(settings, result, total)
        return result

    def identity(self) -> MeasurementIdentity:
        requests = json.dumps([r.to_dict() for r in self.workload.requests], sort_keys=True)
        return MeasurementIdentity(
            workload=self.workload.name,
            workload_hash=hashlib.sha256(requests.encode()).hexdigest()[:16],
            requests=len(self.workload.requests), tokens_per_request=self.tokens_per_request,
            clients=self.clients)


def versions() -> Versions:
    from autotune.measure.hardware import llama_cpp_version

    return Versions(autotune=__version__, llama_cpp_python=llama_cpp_version(),
                    optuna=optuna.__version__, schema=str(SCHEMA_VERSION))


def process_seed(seed: int | None, host: str) -> int:
    """The sampler seed of one tuner process, recorded with each trial it runs.

    The tuners of a fleet share one study, and each samples its own way: a given `seed`
    is combined with the host's name (a rerun on one host samples as before); without
    one, the seed is drawn at random.
    """
    if seed is None:
        return random.SystemRandom().randrange(2**32)
    return (seed + zlib.crc32(host.encode())) % 2**32


SamplerFactory = Callable[[int | None], optuna.samplers.BaseSampler]
PrunerFactory = Callable[[], optuna.pruners.BasePruner]
Baseline = tuple[str, dict[str, object], dict[str, object]]  # label, params, pinned


def tpe_sampler(seed: int | None) -> optuna.samplers.BaseSampler:
    """The tuner's sampler (the module's docstring says why TPE)."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      n_startup_trials=STARTUP_TRIALS)


def wilcoxon_pruner(p_threshold: float = P_THRESHOLD) -> optuna.pruners.BasePruner:
    """The tuner's pruner, at `p_threshold` per look."""
    return optuna.pruners.WilcoxonPruner(p_threshold=p_threshold,
                                         n_startup_steps=PRUNE_AFTER_REQUESTS)


def open_study(name: str, storage: optuna.storages.BaseStorage, model: ModelInfo,
               machine: Hardware, measurement: Measurement, space: SearchSpace,
               seed: int | None, warm_start: bool = True,
               sampler: SamplerFactory = tpe_sampler, pruner: PrunerFactory = wilcoxon_pruner,
               baselines: list[Baseline] | None = None) -> optuna.Study:
    """Create the study, or resume it after checking it measured the same thing.

    `seed` seeds this process's sampler (made by `sampler`) as it is (see process_seed).
    A new study queues `baselines` first (None: the space's, the guide's advice and
    defaults); one created with `warm_start` queues, after them, the winners of earlier
    studies of similar models on this kind of machine (see search.warm); `space.notes`
    says which. A resumed study keeps the context choices it was created with (see
    fit_context).
    """
    if baselines is None:
        baselines = space.baselines(model, machine)
    made_sampler, made_pruner = sampler(seed), pruner()
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=made_sampler,
                                    pruner=made_pruner, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=made_sampler,
                                  pruner=made_pruner)
        wait_for_record(study)  # another tuner of the fleet may be creating it right now
        fit_context(study, space)
    else:
        # Its creator alone enqueues the baselines, before it writes the record that the
        # others wait for: two tuners starting together enqueue them once.
        enqueue_baselines(study, baselines)
        if warm_start:
            enqueue_warm_starts(study, storage, model, machine, space, baselines)
    if not study.user_attrs:
        created = StudyRecord(model=model, hardware=machine, versions=versions(),
                              measurement=measurement.identity(), weights=measurement.weights,
                              goals=measurement.goals,
                              created=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              machine_class=machine_class(machine))
        keep(study.set_user_attr, created.attrs())
    else:
        check_same(name, StudyRecord.read(study), model, machine, measurement)
        # what it writes now (a study older than goals had the default ones)
        keep(study.set_user_attr, study_attrs(goals=measurement.goals, schema=SCHEMA_VERSION))
    keep(study.set_user_attr, study_attrs(space=space.describe(),
                                          tuned_fields=space.tuned_fields))
    fail_orphaned_trials(study, storage, machine.host)
    enqueue_baselines(study, baselines)
    return study


def enqueue_baselines(study: optuna.Study, baselines: list[Baseline]) -> None:
    """Queue the baselines the study has not run or queued yet."""
    labels = {TrialRecord.read(t, study.study_name).label
              for t in study.get_trials(deepcopy=False)}
    for label, params, pinned in baselines:
        if label not in labels:
            study.enqueue_trial(params, user_attrs=trial_attrs(label=label, pinned=pinned))


def enqueue_warm_starts(study: optuna.Study, storage: optuna.storages.BaseStorage,
                        model: ModelInfo, machine: Hardware, space: SearchSpace,
                        baselines: list[Baseline]) -> None:
    """Queue earlier studies' winners after the baselines, and say so in `space.notes`."""
    queued = [{**params, **pinned} for _, params, pinned in baselines]
    found = warm_starts(storage, study.study_name, model, machine, space, queued)
    for start in found:
        study.enqueue_trial(start.params, user_attrs=trial_attrs(label=start.label,
                                                                 pinned=start.pinned))
    if found:
        names = ", ".join(start.study for start in found)
        space.notes.append(f"warm start: {len(found)} winner(s) of earlier studies of "
                           f"similar models on this kind of machine queued after the "
                           f"baselines (from {names})")


def fit_context(study: optuna.Study, space: SearchSpace) -> None:
    """Keep a resumed study's context choices: Optuna refuses a category whose choices
    change within a study. A floor above some of them still holds: the objective runs no
    window below it, and no such trial is a finalist; a floor below them cannot be met
    in this study, and the notes say so."""
    recorded = next((t.distributions["context_window"] for t in study.get_trials(deepcopy=False)
                     if "context_window" in t.distributions), None)
    choices = tuple(getattr(recorded, "choices", ()))
    if not choices or choices == space.context_choices:
        return
    space.context_choices = tuple(int(c) for c in choices)
    if all(c < space.min_context for c in space.context_choices):
        space.min_context = space.context_choices[-1]
    if space.context_choices[0] < space.min_context:
        space.notes.append(f"this study's context choices go down to "
                           f"{space.context_choices[0]} (as it was created); windows below "
                           f"{space.min_context} are no longer measured or chosen")
    elif space.context_choices[0] > space.min_context:
        space.notes.append(f"this study's context choices start at "
                           f"{space.context_choices[0]} (as it was created); a new study "
                           "searches lower")


def wait_for_record(study: optuna.Study, timeout_s: float = RECORD_WAIT_S) -> None:
    """Wait until the study's record is complete (its creator writes `schema` last); a
    creator that died before it finished is taken over after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        attrs = study.user_attrs
        if "schema" in attrs or schema_of(attrs) == 1:
            return
        time.sleep(0.2)


def check_same(name: str, recorded: StudyRecord, model: ModelInfo, machine: Hardware,
               measurement: Measurement) -> None:
    """A resumed study must measure the same model, kind of machine and workload.

    A study made before machine classes belongs to the host that made it.
    """
    if recorded.model.fingerprint != model.fingerprint:
        raise AutotuneError(f"study {name!r} measured another model file; pass ",
                            Option("study_name"), " to start a new study")
    if recorded.machine_class is not None:
        ours = machine_class(machine)
        if ours != recorded.machine_class:
            differences = "; ".join(ours.differences(recorded.machine_class))
            raise AutotuneError(f"study {name!r} belongs to machines of class "
                                f"{recorded.machine_class.name}, and host {machine.host!r} "
                                f"is of another ({differences}); pass ",
                                Option("study_name"), " to start a new study here")
    elif recorded.hardware.host != machine.host:
        raise AutotuneError(f"study {name!r} was measured on host "
                            f"{recorded.hardware.host!r}; pass ",
                            Option("study_name"), " to start a new study here")
    if recorded.measurement != measurement.identity():
        raise AutotuneError(f"study {name!r} measured another workload or request shape; "
                            "pass ", Option("study_name"), " to start a new study")
    check_same_goals(name, recorded.goals or Goals(), measurement.goals)


def check_same_goals(name: str, recorded: Goals, ours: Goals) -> None:
    """A resumed study keeps its objective (its values are of that quantity) and limits."""
    if recorded != ours:
        raise AutotuneError(f"study {name!r} was tuned for {recorded.describe()}, not "
                            f"{ours.describe()}; pass ", Option("study_name"),
                            " to start a new study for these goals")


def record(trial: optuna.Trial, result: TrialResult, weights: Weights,
           goals: Goals | None = None) -> float | None:
    """Store what a trial measured on it; return its value under the goals' objective
    (the score by default; None when it did not finish)."""
    parts = score(result.latencies, weights) if result.ok else None
    failed_tail = result.stderr_tail[-1500:] if result.status.failed else ""
    stats = summarize(result)
    outcome = trial_attrs(status=result.status, reason=result.reason[:500],
                          stats=stats, latencies=result.latencies,
                          settings=result.settings, score=parts, stderr_tail=failed_tail,
                          buffers=result.buffers)
    keep(trial.set_user_attr, {k: v for k, v in outcome.items()
                               if v is not None and v != "" and v != {}})
    if parts is None:
        return None
    return (goals or Goals()).objective.of(stats, parts)


def objective_for(model: ModelInfo, space: SearchSpace, measurement: Measurement,
                  host: str, sampler_seed: int | None = None
                  ) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        # Who runs the trial comes first: until it is written, another tuner cannot tell
        # whether this trial is orphaned, and so must treat it as alive.
        keep(trial.set_user_attr, trial_attrs(host=host, sampler_seed=sampler_seed,
                                              **process_identity()))
        settings = space.suggest(trial)
        if settings.context_window < space.min_context:
            # A resumed study's older, smaller choices: a broken promise, not measured.
            why = (f"context window {settings.context_window} below the minimum "
                   f"{space.min_context}")
            keep(trial.set_user_attr, trial_attrs(reason=why, settings=settings,
                                                  infeasible=why))
            trial.set_constraint("failed", 0.0)
            trial.set_constraint("below_min_context", 1.0)
            return FAILED_SCORE_S
        fit = space.offload.check(settings) if space.offload is not None else None
        if fit is not None and not fit.ok:
            # Layers the devices cannot hold would fail to load, or thrash: not run.
            why = f"does not fit on the GPU: {fit.describe()}"
            keep(trial.set_user_attr, trial_attrs(reason=why, settings=settings,
                                                  infeasible=why))
            trial.set_constraint("failed", 0.0)
            trial.set_constraint("gpu_fit", 1.0)
            return FAILED_SCORE_S
        earlier = measured_before(trial.study, settings) if measurement.reuse_repeats else None
        if earlier is not None:
            return repeat_of(trial, earlier)

        total = len(measurement.workload.requests)
        objective = measurement.goals.objective
        best = standing.best(trial.study) if objective.tail is not None else None
        seen: list[float] = []
        budget = measurement.budget
        first = budget is not None and budget.runs.typical_s() is None
        started = time.monotonic()
        latencies: list[float] = []

        def on_request(event: RequestRecord) -> bool:
            seen.append(objective.per_request(event))
            trial.report(seen[-1], event.index)
            latencies.append(event.latency_s)
            if first and budget is not None and not budget.first_requests(
                    time.monotonic() - started, latencies, total):
                return True  # the budget cannot buy a confirmed answer: said before it is spent
            if len(seen) >= total:
                return False  # a finished trial is kept
            if objective.tail is None:
                return trial.should_prune()
            return (best is not None and best.value is not None
                    and tail_certainly_worse(seen, total, objective.tail, best.value))

        # A tuner that held the machine may have been killed while we waited for it.
        result = measurement.run(model, settings, on_request,
                                 before=lambda: fail_orphaned_trials(trial.study, trial.storage,
                                                                    host))
        value = record(trial, result, measurement.weights, measurement.goals)
        if result.status == Status.PRUNED:
            raise optuna.TrialPruned(result.reason)
        trial.set_constraint("failed", 0.0 if value is not None else 1.0)
        # A window that makes the workload drop history changes what the model sees, as a
        # generation setting would: however fast, it is not a candidate.
        reloads = result.reloads
        trial.set_constraint("context_overflow", float(reloads))
        broken = [f"context overflow: {reloads} request(s) dropped history"] if reloads else []
        if value is not None:
            stats = summarize(result)
            for name, excess in measurement.goals.constraints(stats).items():
                trial.set_constraint(name, excess)
            broken += [f"missed {m}" for m in measurement.goals.missed(stats)]
        if broken:
            keep(trial.set_user_attr, trial_attrs(infeasible="; ".join(broken)))
        return FAILED_SCORE_S if value is None else value

    return objective


def measured_before(study: optuna.Study, settings: Settings
                    ) -> optuna.trial.FrozenTrial | None:
    """The earliest trial that measured `settings` whole (a pruned one was cut short, and
    is measured again; one measured while the machine drifted is being taken again), or
    None."""
    trials = study.get_trials(deepcopy=False)
    gone = standing.superseded(study, trials)
    for trial in trials:
        if trial.state != optuna.trial.TrialState.COMPLETE or trial.number in gone:
            continue
        kept = TrialRecord.read(trial, study.study_name)
        if kept.settings == settings and kept.status is not None:
            return trial
    return None


def repeat_of(trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> float:
    """Record `earlier`'s measurement on `trial` and return its value, measuring nothing.

    TPE samples a small, discrete space's best region again and again (in a 12-trial study
    of the demo model, 7 trials were repeats); each repeat measured again cost a whole
    trial for one more noisy sample of a configuration the study already ranked, which
    confirmation re-measures anyway if it is a finalist. The trial keeps the earlier
    one's record, labelled as its repeat.
    """
    kept = TrialRecord.read(earlier, trial.study.study_name)
    copied = trial_attrs(label=f"{standing.REPEAT_LABEL}{earlier.number}",
                         repeat_of=earlier.number, status=kept.status, reason=kept.reason,
                         stats=kept.stats, latencies=kept.latencies, settings=kept.settings,
                         score=kept.score, infeasible=kept.infeasible)
    keep(trial.set_user_attr, {k: v for k, v in copied.items() if v is not None and v != ""})
    for name, value in earlier.constraints.items():
        trial.set_constraint(name, value)
    assert earlier.value is not None  # measured_before takes finished trials, which have one
    return earlier.value


def search(study: optuna.Study, model: ModelInfo, space: SearchSpace, measurement: Measurement,
           host: str, trials: int, timeout_s: float | None, on_event: OnEvent | None = None,
           sampler_seed: int | None = None, anchor_every: int = drift.ANCHOR_EVERY,
           busy_limit: float = drift.BUSY_LIMIT,
           go_on: Callable[[], bool] | None = None) -> None:
    """Run `trials` more trials (or until `timeout_s`, or until `go_on()` is False after a
    trial), reporting each as it ends; every `anchor_every` trials (0: never), check the
    drift anchor (drift.py); take again at once a trial during which other processes used
    more than `busy_limit` percent of a core (0: never). The trials queued again come on
    top of `trials`."""
    started = time.monotonic()
    done = 0
    total = trials
    since: list[int] = []  # the trials run since the last anchor check
    busy_ends = False  # set once a re-measurement found the machine busy again

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal done, total, busy_ends
        done += 1
        since.append(trial.number)
        kept = TrialRecord.read(trial, study.study_name)
        busy = None if busy_ends else drift.measured_busy(kept, busy_limit)
        again: tuple[int, ...] = ()
        if busy is not None:
            # a re-measurement as busy as the run it took again: the load is the machine's
            busy_ends = kept.remeasures is not None
            if not busy_ends:
                again = tuple(drift.requeue(study, drift.measured_in(study, [trial.number]),
                                            standing.BUSY_LABEL))
                total += len(again)
        if on_event is not None:
            best = standing.best(study)
            on_event(TrialEnded(
                done=done, total=total, number=trial.number, state=trial.state.name,
                status=kept.status, reason=kept.reason,
                value=trial.value if standing.feasible(trial) else None,
                infeasible=kept.infeasible,
                params={**trial.params, **kept.pinned}, label=kept.label,
                best=best.value if best else None,
                other_cpu_percent=kept.stats.other_cpu_percent_mean if kept.stats else None,
                elapsed_s=time.monotonic() - started,
                objective=str(measurement.goals.objective)))
            if busy is not None and (again or busy_ends):
                on_event(BusyTrial(trial.number, busy, busy_limit, remeasured=bool(again)))
        if go_on is not None and done < total and not go_on():
            study.stop()

    objective = objective_for(model, space, measurement, host, sampler_seed)
    try:
        while done < total:
            left = None if timeout_s is None else timeout_s - (time.monotonic() - started)
            if left is not None and left <= 0:
                break
            chunk = total - done if anchor_every <= 0 else min(anchor_every, total - done)
            before = done
            study.optimize(objective, n_trials=chunk, timeout=left, callbacks=[after_trial],
                           gc_after_trial=False)
            if done - before < chunk:
                break  # the timeout ended it
            if anchor_every > 0:
                checked = drift.check(study, model, measurement, host, since)
                since.clear()
                if checked is not None:
                    total += len(checked.requeued)
                    if on_event is not None:
                        on_event(AnchorChecked(checked.anchor_trial, checked.ratio,
                                               checked.drifted, checked.requeued))
    except Exception as err:
        failure = storage_failure(err)  # Optuna hides a failed write behind its own error
        if failure is None or failure is err:
            raise
        raise failure from None
