"""Where a tuning run's wall time goes: the measured requests, and everything around them.

The harness pays for a worker's start (interpreter and imports), the model's inspection
and load, the warm-up request, the sampler and the storage; only the requests are what a
study is for. `Costs` adds these up as a run goes, so a report (and
`benchmarks/overhead.py`) can say what share of the wall time measured anything.

`RunCosts` keeps what each configuration's runs cost here, whole: the budget plans with it
(search/budget.py), and a trial's time limit follows it (`RunCosts.limit_s`), so that no
fixed number stops a trial of a large model that is merely slow. Until a run has ended the
limit is `FIRST_LIMIT_S`; after, `LIMIT_FACTOR` typical runs, within `LIMIT_FLOOR_S` and
`LIMIT_CEILING_S`. A run over four typical runs' time cannot win, and a run stopped at
the limit still says how much slower it was, at least (confirm.lower_bound). The limit
needs no margin for a hung worker: the stall limit (measure/trial.py) stops one sooner.

Example:
    >>> costs = RunCosts()
    >>> costs.limit_s()
    1800.0
    >>> costs.runs[Settings(n_threads=2)] = [RunCost(wall_s=120.0, done=16, total=16,
    ...                                              mean_request_s=7.0)]
    >>> costs.limit_s()
    480.0
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from autotune.measure.records import TrialResult
from autotune.measure.settings import Settings
from autotune.search.confirm import is_guide_defaults
from autotune.studies.records import CostBreakdown

# A trial's time limit when --trial-timeout is not given (see the module's docstring).
FIRST_LIMIT_S = 1800.0
LIMIT_FACTOR = 4.0
LIMIT_FLOOR_S = 300.0
LIMIT_CEILING_S = 1800.0


@dataclass
class Costs:
    """Seconds spent, summed over a run's trials (search and confirmation alike)."""

    inspection_s: float = 0.0  # reading the model's GGUF header
    setup_s: float = 0.0  # opening the storage and the study, enqueuing baselines
    lock_wait_s: float = 0.0  # waiting for another measurement on the machine
    worker_start_s: float = 0.0  # spawn until the worker starts loading the model
    load_s: float = 0.0  # the model's load in each worker
    warmup_s: float = 0.0  # the warm-up request in each worker
    requests_s: float = 0.0  # the measured requests (what the study is for)
    trial_rest_s: float = 0.0  # the rest of each trial: reading events, exit, reaping
    anchor_s: float = 0.0  # the drift anchor's checks (search/drift.py), waiting included
    search_s: float = 0.0  # wall time of the search
    confirmation_s: float = 0.0  # wall time of the confirmation
    trials: int = 0
    # when each measurement (trial, anchor check, confirmation run) held the machine:
    # (from, until) in seconds since the epoch, as its worker started and ended
    held: list[tuple[float, float]] = field(default_factory=list)

    def add_trial(self, result: TrialResult, waited_s: float) -> None:
        """Split one trial's wall time into its parts."""
        self.trials += 1
        self.add_held(result)
        self.lock_wait_s += waited_s
        load = result.load_s or 0.0
        started = (result.loaded_after_s - load) if result.loaded_after_s is not None \
            else result.wall_s
        warmup = result.warmup_s or 0.0
        requests = sum(result.latencies)
        self.worker_start_s += max(0.0, started)
        self.load_s += load
        self.warmup_s += warmup
        self.requests_s += requests
        self.trial_rest_s += max(0.0, result.wall_s - max(0.0, started) - load - warmup
                                 - requests)

    def add_anchor(self, result: TrialResult, waited_s: float) -> None:
        """A drift anchor's check: a measurement of the harness's own, counted whole."""
        self.anchor_s += waited_s + result.wall_s
        self.add_held(result)

    def add_held(self, result: TrialResult) -> None:
        if result.measured_from is not None and result.measured_until is not None:
            self.held.append((result.measured_from, result.measured_until))

    @contextmanager
    def timing(self, name: str) -> Iterator[None]:
        """Add the time spent inside to the field `name`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.perf_counter() - started)

    def parts(self) -> CostBreakdown:
        """Every part of the wall time, in seconds; they add up to `total_s`."""
        in_trials = (self.lock_wait_s + self.worker_start_s + self.load_s + self.warmup_s
                     + self.requests_s + self.trial_rest_s + self.anchor_s)
        outside = max(0.0, self.search_s + self.confirmation_s - in_trials)
        return CostBreakdown(
            requests_s=self.requests_s, worker_start_s=self.worker_start_s,
            inspection_s=self.inspection_s, load_s=self.load_s, warmup_s=self.warmup_s,
            trial_rest_s=self.trial_rest_s, lock_wait_s=self.lock_wait_s,
            setup_s=self.setup_s, anchor_s=self.anchor_s, outside_s=outside)

    @property
    def total_s(self) -> float:
        return self.parts().total_s

    @property
    def overhead_share(self) -> float:
        """Share of the wall time that is the harness's own (CostBreakdown.harness_share)."""
        return self.parts().harness_share


@dataclass(frozen=True)
class RunCost:
    """What one measured run cost: its wall time, and the requests it did and did not do."""

    wall_s: float
    done: int
    total: int
    mean_request_s: float

    @property
    def whole_s(self) -> float:
        """The run's cost had it done every request: the missing ones at its own mean."""
        return self.wall_s + max(0, self.total - self.done) * self.mean_request_s


@dataclass
class RunCosts:
    """Each configuration's measured runs, as they end (see the module's docstring)."""

    runs: dict[Settings, list[RunCost]] = field(default_factory=dict)

    def add(self, settings: Settings, result: TrialResult, total: int) -> None:
        """A run of `total` requests ended (a repeat of a measurement costs nothing)."""
        latencies = result.latencies
        mean = statistics.fmean(latencies) if latencies else 0.0
        self.runs.setdefault(settings, []).append(
            RunCost(result.wall_s, len(latencies), total, mean))

    def typical_s(self) -> float | None:
        """The median whole-run cost over the configurations measured, the guide's defaults
        aside while others ran (they are the slow outlier); None: none yet."""
        costs = [statistics.median(c.whole_s for c in kept) for s, kept in self.runs.items()
                 if not is_guide_defaults(s)]
        if not costs:
            costs = [statistics.median(c.whole_s for c in kept) for kept in self.runs.values()]
        return statistics.median(costs) if costs else None

    def run_s(self, settings: Settings) -> float:
        """What a run of `settings` should cost: its own runs' median, else the typical."""
        kept = self.runs.get(settings)
        if kept:
            return statistics.median(c.whole_s for c in kept)
        return self.typical_s() or 0.0

    def defaults_costs(self) -> list[float]:
        """The whole-run costs of the guide's defaults' runs so far."""
        return [c.whole_s for s, runs in self.runs.items() if is_guide_defaults(s)
                for c in runs]

    def limit_s(self) -> float:
        """A trial's time limit when the user gave none: it follows the typical run."""
        typical = self.typical_s()
        if typical is None:
            return FIRST_LIMIT_S
        return float(min(LIMIT_CEILING_S, max(LIMIT_FLOOR_S, math.ceil(LIMIT_FACTOR * typical))))
