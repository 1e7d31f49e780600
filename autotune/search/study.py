"""The Optuna study: storage, sampler, pruner, baselines, the search, and its records.

Sampler: TPE, multivariate with `group=True`. The space is small, mixed (integers and
categories) and conditional (the cache size exists only when the cache is on): TPE models
such spaces natively, where a Gaussian process wants continuous, unconditional inputs and
CMA-ES no categories at all. TPE ranks trials rather than interpolating their values, so a
noisy latency moves it less than it moves a surrogate fit. Failed trials (crash, out of
memory, timeout, load failure) complete with a constraint violation: TPE then learns to
avoid that region, and no failure is mistaken for a fast configuration.

Pruner: Optuna's WilcoxonPruner. Every request of the workload has a fixed index, and the
trial reports each request's latency at that index as it arrives, so the pruner compares
request for request with the best trial and stops a candidate that is clearly worse. The
worker is killed at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna

from autotune import __version__
from autotune.errors import AutotuneError, Option
from autotune.measure.hardware import Hardware
from autotune.measure.machine_lock import MachineLock
from autotune.measure.model import ModelInfo
from autotune.measure.stats import summarize
from autotune.measure.trial import DEFAULT_TOKENS, OK, PRUNED, TrialResult, TrialSpec, run_trial
from autotune.measure.workload import Workload
from autotune.search.scoring import Weights, score
from autotune.search.space import PINNED_ATTR, SearchSpace
from autotune.studies.liveness import process_identity
from autotune.studies.storage import fail_orphaned_trials, storage_failure

FAILED_SCORE_S = 600.0
STARTUP_TRIALS = 5
# The pruner tests again after every request: with ~10 looks at a nominal 0.1, a candidate
# as good as the best is pruned far more often than 1 in 10. 0.02 is about the Pocock-
# corrected level for an overall 0.1 over 10 looks.
P_THRESHOLD = 0.02
PRUNE_AFTER_REQUESTS = 4
SCHEMA_VERSION = 1

Event = Callable[[str, dict], None]


@dataclass
class Measurement:
    """How every trial of a study measures: these must not change when a study resumes."""

    workload: Workload
    tokens_per_request: int = DEFAULT_TOKENS
    clients: int = 1
    trial_timeout_s: float = 300.0
    weights: Weights = field(default_factory=Weights)
    lock: MachineLock = field(default_factory=MachineLock, compare=False)

    def spec(self, model: ModelInfo, settings: object) -> TrialSpec:
        # the stall and load limits follow --trial-timeout and the model's size
        return TrialSpec(model.path, settings, self.workload,  # type: ignore[arg-type]
                         tokens_per_request=self.tokens_per_request, clients=self.clients,
                         timeout_s=self.trial_timeout_s)

    def run(self, model: ModelInfo, settings: object, on_request=None,
            before: Callable[[], object] | None = None) -> TrialResult:
        """One trial, alone on the machine; `before` runs once the machine is ours."""
        with self.lock.held("tune"):
            if before is not None:
                before()
            return run_trial(self.spec(model, settings), on_request=on_request)

    def identity(self) -> dict[str, object]:
        requests = json.dumps([r.to_dict() for r in self.workload.requests], sort_keys=True)
        return {"workload": self.workload.name,
                "workload_hash": hashlib.sha256(requests.encode()).hexdigest()[:16],
                "requests": len(self.workload.requests),
                "tokens_per_request": self.tokens_per_request, "clients": self.clients}


def versions() -> dict[str, str]:
    from autotune.measure.hardware import llama_cpp_version

    return {"autotune": __version__, "llama_cpp_python": llama_cpp_version(),
            "optuna": optuna.__version__, "schema": str(SCHEMA_VERSION)}


def open_study(name: str, storage: optuna.storages.BaseStorage, model: ModelInfo,
               machine: Hardware, measurement: Measurement, space: SearchSpace,
               seed: int | None) -> optuna.Study:
    """Create the study, or resume it after checking it measured the same thing."""
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                         n_startup_trials=STARTUP_TRIALS)
    pruner = optuna.pruners.WilcoxonPruner(p_threshold=P_THRESHOLD,
                                           n_startup_steps=PRUNE_AFTER_REQUESTS)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                pruner=pruner, direction="minimize", load_if_exists=True)
    recorded = study.user_attrs
    if not recorded:
        study.set_user_attr("model", model.to_dict())
        study.set_user_attr("hardware", machine.to_dict())
        study.set_user_attr("versions", versions())
        study.set_user_attr("measurement", measurement.identity())
        study.set_user_attr("weights", vars(measurement.weights))
        study.set_user_attr("created", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    else:
        check_same(name, recorded, model, machine, measurement)
    study.set_user_attr("space", space.describe())
    study.set_user_attr("tuned_fields", list(space.tuned_fields))
    fail_orphaned_trials(study, storage, machine.host)
    for label, params, pinned in space.baselines(model, machine):
        if not any(t.user_attrs.get("label") == label for t in study.get_trials(deepcopy=False)):
            study.enqueue_trial(params, user_attrs={"label": label, PINNED_ATTR: pinned})
    return study


def check_same(name: str, recorded: dict, model: ModelInfo, machine: Hardware,
               measurement: Measurement) -> None:
    """A resumed study must measure the same model, machine and workload."""
    if recorded.get("model", {}).get("fingerprint") != model.fingerprint:
        raise AutotuneError(f"study {name!r} measured another model file; pass ",
                            Option("study_name"), " to start a new study")
    if recorded.get("hardware", {}).get("host") != machine.host:
        raise AutotuneError(f"study {name!r} was measured on host "
                            f"{recorded.get('hardware', {}).get('host')!r}; pass ",
                            Option("study_name"), " to start a new study here")
    if recorded.get("measurement") != measurement.identity():
        raise AutotuneError(f"study {name!r} measured another workload or request shape; "
                            "pass ", Option("study_name"), " to start a new study")


def record(trial: optuna.Trial, result: TrialResult, weights: Weights) -> float | None:
    """Store what a trial measured on it; return its score (None when it did not finish)."""
    summary = summarize(result)
    trial.set_user_attr("status", result.status)
    trial.set_user_attr("reason", result.reason[:500])
    trial.set_user_attr("stats", {k: v for k, v in summary.items()
                                  if k not in ("status", "reason", "pass_mean_s")})
    trial.set_user_attr("latencies", [r["latency_s"] for r in result.requests])
    trial.set_user_attr("settings", result.settings)
    if result.status != OK:
        if result.stderr_tail and result.status != PRUNED:
            trial.set_user_attr("stderr_tail", result.stderr_tail[-1500:])
        return None
    parts = score([r["latency_s"] for r in result.requests], weights)
    trial.set_user_attr("score", parts.to_dict())
    return parts.total_s


def objective_for(model: ModelInfo, space: SearchSpace, measurement: Measurement,
                  host: str) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        # Who runs the trial comes first: until it is written, another tuner cannot tell
        # whether this trial is orphaned, and so must treat it as alive.
        trial.set_user_attr("host", host)
        for key, value in process_identity().items():
            trial.set_user_attr(key, value)
        settings = space.suggest(trial)

        total = len(measurement.workload.requests)
        reported = 0

        def on_request(event: dict) -> bool:
            nonlocal reported
            reported += 1
            trial.report(event["latency_s"], event["index"])
            return reported < total and trial.should_prune()  # a finished trial is kept

        # A tuner that held the machine may have been killed while we waited for it.
        result = measurement.run(model, settings, on_request,
                                 before=lambda: fail_orphaned_trials(trial.study, trial.storage,
                                                                    host))
        value = record(trial, result, measurement.weights)
        if result.status == PRUNED:
            raise optuna.TrialPruned(result.reason)
        trial.set_constraint("failed", 0.0 if value is not None else 1.0)
        # A window that makes the workload drop history changes what the model sees, as a
        # generation setting would: however fast, it is not a candidate.
        reloads = sum(bool(r["reload"]) for r in result.requests)
        trial.set_constraint("context_overflow", float(reloads))
        if reloads:
            trial.set_user_attr("infeasible", f"context overflow: {reloads} request(s) "
                                              "dropped history")
        return FAILED_SCORE_S if value is None else value

    return objective


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished its workload without failing and without overflowing the context."""
    return (trial.state == optuna.trial.TrialState.COMPLETE
            and trial.user_attrs.get("status") == OK
            and all(v <= 0 for v in trial.constraints.values()))


def search(study: optuna.Study, model: ModelInfo, space: SearchSpace, measurement: Measurement,
           host: str, trials: int, timeout_s: float | None, on_event: Event | None = None
           ) -> None:
    """Run `trials` more trials (or until `timeout_s`), reporting each as it ends."""
    started = time.monotonic()
    done = 0

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal done
        done += 1
        if on_event is not None:
            best = best_feasible(study)
            on_event("trial", {"done": done, "total": trials, "number": trial.number,
                               "state": trial.state.name, "status": trial.user_attrs.get("status"),
                               "reason": trial.user_attrs.get("reason", ""),
                               "value": trial.value if feasible(trial) else None,
                               "infeasible": trial.user_attrs.get("infeasible"),
                               "params": {**trial.params,
                                          **trial.user_attrs.get(PINNED_ATTR, {})},
                               "label": trial.user_attrs.get("label"),
                               "best": best.value if best else None,
                               "other_cpu_percent": trial.user_attrs.get("stats", {}).get(
                                   "other_cpu_percent_mean"),
                               "elapsed_s": time.monotonic() - started})

    try:
        study.optimize(objective_for(model, space, measurement, host), n_trials=trials,
                       timeout=timeout_s, callbacks=[after_trial], gc_after_trial=False)
    except Exception as err:
        failure = storage_failure(err)  # Optuna hides a failed write behind its own error
        if failure is None or failure is err:
            raise
        raise failure from None


def best_feasible(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    ranked = ranked_feasible(study)
    return ranked[0] if ranked else None


def ranked_feasible(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    trials = [t for t in study.get_trials(deepcopy=False) if feasible(t)]
    return sorted(trials, key=lambda t: t.value)
