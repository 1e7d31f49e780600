"""Replay: the real study code against a recorded grid, over many seeds; regret curves.

    python benchmarks/replay.py [GRID.json] [--seeds 50] [--trials 45] [--budget 8] [--jobs 2]
        [--strategies default,no-pruning,...] [--out benchmarks/results/replay]

Nothing is measured. Each trial of a real study (`open_study`, `search`, its TPE sampler,
Wilcoxon pruner and constraints, in an in-memory storage) gets, instead of a live worker,
one recorded repeat of the grid cell its settings fall in (drawn at random), streamed
request by request through the trial's `on_request`, so the pruner sees what it would have
seen and stops the trial where it would have stopped it. The study is opened, searched for
`--budget` trials and confirmed by the tuner's own sequence (`orchestrate.open_study_with`
and `orchestrate.run_study`, as `autotune MODEL` runs them, with `TuneOptions`' defaults:
its finalists and the profiles' trials against the guide's defaults, in its rounds,
racing), which picks and keeps the winner from replayed runs too; the search then goes on
to `--trials`. A strategy is the tuner's parts and options with some swapped, never a copy
of its sequence.

A replayed trial takes the time its repeat took: its recorded wall time minus the
latencies of the requests it did not serve (start-up, load and warm-up are paid in full),
plus the study's own time (sampler, pruner, storage) as it ran here. Each latency is
jittered by a part in a million (see JITTER). The true score of a
cell is its median score over all its recorded runs; a cell that failed or overflowed its
context in any run is infeasible. Regret = (true score of the study's best feasible trial
- the best true score) / the best true score.

Strategies: `default` (the tuner as it ships: TPE multivariate, the Wilcoxon pruner at
p=0.05, the guide's size advice then its defaults first, drift anchor, racing confirmation,
`--budget` trials: `orchestrate.Parts` and `TuneOptions` as they are), `before` (the
defaults before this replay chose them: p=0.02, the guide's defaults first, 12 trials),
`p02`, `p10` (other pruner thresholds), `no-pruning`, `no-baselines`, `defaults-first`,
`random` (random sampler, baselines, pruner), `gp` (GPSampler, no pruning), `optimus`
(llama-optimus-like: Optuna's default TPE, 45 trials, 3 repeats each, no pruning, no
baselines, no confirmation), `grid` (every cell once, in random order), `measure-repeats`
(a configuration measured whole is measured again when TPE samples it again), `no-anchor`
(no drift anchor checks: on recorded runs every check that fires is a false alarm, and what
they cost shows against `default`), `no-racing` (every finalist runs every confirmation
round), `budget-12`, `budget-8`, `budget-5`, `finalists-2`, `warm-start` (the default, in
a storage that already holds an earlier replayed default study of another seed, searched
for `--budget` trials and confirmed by the tuner, which kept its winner: the new study
enqueues that winner after the baselines, as `open_study` does on a machine with an
earlier study of a similar model),
`warm-start-no-baselines` (the same without the guide's baselines: what the warm start
alone brings, against `no-baselines`).
The drift anchor's checks replay a recorded repeat of the anchor's cell too, and their time
counts in the study's. Writes JSON, Markdown and a PNG.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import math
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from autotune.errors import MeasurementFailed
from autotune.measure.hardware import Hardware
from autotune.measure.model import ModelInfo
from autotune.measure.records import RequestRecord, Status, TrialResult
from autotune.measure.scoring import Weights, score
from autotune.measure.settings import Settings
from autotune.measure.workload import Request, Workload
from autotune.search import orchestrate
from autotune.search import study as study_module
from autotune.search.options import TuneOptions
from autotune.search.orchestrate import Parts, guide_baselines
from autotune.search.space import SearchSpace
from autotune.search.study import Measurement, PrunerFactory, SamplerFactory, wilcoxon_pruner
from autotune.studies import standing
from autotune.studies.records import StudyRecord, TrialRecord

RESULTS = Path(__file__).parent / "results"
NEAR = 0.05  # "within 5% of the optimum"
CAP = 0.25  # the regret curves' top: the searches differ below it, and an infinite one shows
# Latencies are replayed jittered by a part in a million: a trial drawing the very repeat
# the best trial drew would hand the pruner exact ties, which no fresh run does (and on
# which scipy's Wilcoxon test falls back to a permutation test, a second per look).
JITTER = 1e-6


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the recorded grid ---------------------------------------------------------------------

@dataclass
class Grid:
    """A grid_truth.py file: its cells, their recorded runs and true scores."""

    doc: dict
    runs: dict[int, list[dict]]
    true: dict[int, float]  # feasible cells only
    optimum: float
    keys: list[str]

    @classmethod
    def load(cls, path: str | Path) -> Grid:
        return cls.from_doc(json.loads(Path(path).read_text()))

    @classmethod
    def from_doc(cls, doc: dict) -> Grid:
        if doc.get("format") != "autotune-grid" or doc.get("format_version") != 1:
            raise SystemExit("not a grid_truth.py file of format version 1")
        runs: dict[int, list[dict]] = {i: [] for i in range(len(doc["cells"]))}
        # The grid's own pass only: every cell the same number of repeats, interleaved in
        # one pass. The final re-measurement of the leaders ran later, under whatever the
        # machine did then; mixing it in would judge the leaders by another hour.
        for run in doc["runs"]:
            if run.get("phase", "grid") == "grid":
                runs[run["cell"]].append(run)
        true = {}
        for index, mine in runs.items():
            if mine and all(r["score_s"] is not None and r["reloads"] == 0 for r in mine):
                true[index] = statistics.median(r["score_s"] for r in mine)
        grid = cls(doc, runs, true, math.inf, [c["key"] for c in doc["cells"]])
        reachable = grid.reachable()
        if not reachable & true.keys():
            raise SystemExit("no cell of the grid finished every run within its context")
        grid.optimum = min(true[i] for i in reachable & true.keys())
        return grid

    def core(self) -> list[int]:
        """The cells of the measured product (not the baselines added beside it)."""
        cells = self.doc["cells"]
        if all("core" in c for c in cells):
            return [i for i, c in enumerate(cells) if c["core"]]
        # files without the flag: the product is what the unlabelled cells span
        plain = [c["settings"] for c in cells if c["in_space"] and not c["label"]]
        return [i for i, c in enumerate(cells) if c["in_space"] and all(
            c["settings"][name] in {p[name] for p in plain}
            for name in ("n_threads", "context_window"))]

    def reachable(self) -> set[int]:
        """What a replayed study can measure: the product and the baselines it enqueues."""
        found = set(self.core())
        model = ModelInfo.from_dict(self.doc["model"])
        machine = Hardware.from_dict(self.doc["machine"])
        space = self.space()
        for _, params, pinned in space.baselines(model, machine):
            values = {**space.fixed, **params, **pinned}
            with contextlib.suppress(KeyError):
                found.add(self.cell_for(Settings(**values)))
        return found

    def values(self, name: str) -> list:
        return sorted({self.doc["cells"][i]["settings"][name] for i in self.core()})

    def cache_sizes(self) -> list[int]:
        return sorted({self.doc["cells"][i]["settings"]["max_cache_size"] for i in self.core()
                       if self.doc["cells"][i]["settings"]["enable_context_cache"]})

    def cell_for(self, settings: Settings) -> int:
        """The cell a configuration falls in: the recorded cache size nearest in log, and
        the grid's window where it measured only one (the 1B grid records the guide's
        defaults and advice at its own window, as it measured them)."""
        want = settings.to_dict()
        offload = self.doc["space"]["gpu_layers"] is not None
        windows = {c["settings"]["context_window"] for c in self.doc["cells"]}
        if want["context_window"] not in windows and len(windows) == 1:
            want["context_window"] = next(iter(windows))
        if want["enable_context_cache"]:
            sizes = self.cache_sizes() or [want["max_cache_size"]]
            want["max_cache_size"] = min(sizes, key=lambda s: abs(
                math.log(s) - math.log(max(1, int(want["max_cache_size"])))))
        for index, cell in enumerate(self.doc["cells"]):
            have = cell["settings"]
            if (have["n_threads"] == want["n_threads"]
                    and have["context_window"] == want["context_window"]
                    and have["enable_context_cache"] == want["enable_context_cache"]
                    and (not want["enable_context_cache"]
                         or have["max_cache_size"] == want["max_cache_size"])
                    and (not offload or have["n_gpu_layers"] == want["n_gpu_layers"])):
                return index
        raise KeyError(f"no recorded cell for {want}")

    def regret(self, cell: int | None) -> float:
        if cell is None or cell not in self.true:  # never found one, or an infeasible one
            return math.inf
        return (self.true[cell] - self.optimum) / self.optimum

    def space(self) -> SearchSpace:
        threads = self.values("n_threads")
        fixed = dict(self.doc["space"]["fixed"])
        gpu = self.doc["space"]["gpu_layers"]
        return SearchSpace(n_threads=(threads[0], threads[-1]),
                           context_choices=tuple(self.values("context_window")),
                           gpu_layers=tuple(gpu) if gpu else None, extended=False, fixed=fixed)

    def one_pass_s(self) -> float:
        """The grid's own measuring time: every in-space cell once (its median wall time)."""
        return sum(statistics.median(r["wall_s"] for r in self.runs[i])
                   for i in self.core() if self.runs[i])

    def workload(self) -> Workload:
        n = self.doc["workload"]["requests"]
        return Workload(self.doc["workload"]["name"],
                        tuple(Request(i, str(i), "", 0, ()) for i in range(n)))


# --- replayed measurement ------------------------------------------------------------------

@dataclass
class Replayed:
    cell: int
    time_s: float
    served: int
    status: Status


@dataclass
class ReplayMeasurement(Measurement):
    """A Measurement whose runs replay recorded repeats instead of running a worker.

    What ran is kept apart by what asked: a trial streams its requests to the pruner
    (`on_request`), a drift check is an `anchor`, and a confirmation run is neither.
    """

    grid: Grid | None = None
    rng: random.Random = field(default_factory=random.Random)
    repeats: int = 1
    log: list[Replayed] = field(default_factory=list)  # the trials' runs
    # the drift anchor's checks: (how many trial runs preceded it, the time it took)
    anchors: list[tuple[int, float]] = field(default_factory=list)
    confirming: list[float] = field(default_factory=list)  # each confirmation run's time
    harness_s: float = 0.0
    last: float | None = None

    def run(self, model, settings, on_request=None, before=None, anchor=False,
            limit_s=None) -> TrialResult:
        # a recorded run is replayed whole: no time limit applies (replays run no budget)
        now = time.perf_counter()
        assert self.grid is not None
        cell = self.grid.cell_for(settings)
        if on_request is None and not anchor:  # confirmation: one repeat, its time alone
            result, took = replay(self.grid, cell, self.rng, 1, None)
            self.confirming.append(took)
            self.last = None  # the search goes on later: its next trial is not charged
            return result
        study_s = 0.0 if self.last is None else now - self.last  # sampler, pruner, storage
        self.harness_s += study_s
        result, took = replay(self.grid, cell, self.rng, 1 if anchor else self.repeats,
                              on_request)
        if anchor:
            self.anchors.append((len(self.log), took + study_s))
        else:
            self.log.append(Replayed(cell, took + study_s, len(result.requests),
                                     result.status))
        self.last = time.perf_counter()
        return result

    def spent_s(self) -> float:
        """The replayed time so far: trial runs and the drift anchor's checks."""
        return sum(r.time_s for r in self.log) + sum(t for _, t in self.anchors)


def replay(grid: Grid, cell: int, rng: random.Random, repeats: int,
           on_request: Callable[[RequestRecord], bool] | None) -> tuple[TrialResult, float]:
    """One trial of `cell` from recorded repeats; the result and the time it would take."""
    settings = grid.doc["cells"][cell]["settings"]
    result = TrialResult(status=Status.OK, settings=Settings.from_dict(settings))
    took = 0.0
    per = grid.doc["workload"]["requests"]
    for k in range(repeats):
        run = rng.choice(grid.runs[cell])
        start = run["wall_s"] - sum(run["latencies"])  # start-up, load, warm-up, exit
        took += start
        result.load_s, result.warmup_s = run["load_s"], run["warmup_s"]
        result.peak_rss_bytes = max(result.peak_rss_bytes, run["peak_rss_bytes"])
        result.other_cpu_percent_mean = run["other_cpu_percent_mean"]
        for data in run["requests"]:
            record = RequestRecord.from_dict(data)
            record = dataclasses.replace(record, index=data["index"] + k * per, latency_s=(
                record.latency_s * (1 + rng.uniform(-JITTER, JITTER))))
            result.requests.append(record)
            took += record.latency_s
            # a repeat beyond the first is not streamed: the pruner sees one workload
            if k == 0 and on_request is not None and on_request(record):
                result.status = Status.PRUNED
                result.reason = f"stopped after {len(result.requests)} requests"
                return result, took
        if run["status"] != "ok":
            result.status, result.reason = Status(run["status"]), run["reason"]
            return result, took
    result.wall_s = took
    return result, took


# --- strategies ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Strategy:
    """A way to search: the tuner's parts (orchestrate.Parts) and options (TuneOptions)
    with those named here swapped, run by the tuner's own sequence."""

    name: str
    sampler: SamplerFactory | None = None  # None: the tuner's
    pruner: PrunerFactory | None = None  # None: the tuner's
    baselines: Callable[[SearchSpace, ModelInfo, Hardware], list] | None = None  # the tuner's
    # TuneOptions fields; "trials" is the budget before confirmation (else --budget)
    options: dict[str, object] = field(default_factory=dict)
    repeats: int = 1  # recorded repeats replayed per trial, as one
    reuse_repeats: bool = True  # a configuration measured whole is not measured again
    trials: int | None = None  # None: --trials
    confirm: bool = True  # False: search alone, no finalists, no confirmation
    warm_start: bool = False  # an earlier confirmed study of another seed in the storage

    def parts(self, measurement: Measurement, seed: int) -> Parts:
        """The tuner's parts, with this strategy's sampler, pruner and baselines."""
        swapped = {name: getattr(self, name) for name in ("sampler", "pruner", "baselines")
                   if getattr(self, name) is not None}
        return dataclasses.replace(Parts(measurement, seed=seed), **swapped)


def no_baselines(space: SearchSpace, model: ModelInfo, machine: Hardware) -> list:
    return []


def defaults_first(space: SearchSpace, model: ModelInfo, machine: Hardware) -> list:
    return list(reversed(guide_baselines(space, model, machine)))


def gp_sampler(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=study_module.STARTUP_TRIALS)


def wilcoxon(p: float) -> Callable[[], optuna.pruners.BasePruner]:
    return functools.partial(wilcoxon_pruner, p)


STRATEGIES = {
    "default": Strategy("default"),
    # the tuner's defaults before the replay of the full grid chose the present ones
    "before": Strategy("before", pruner=wilcoxon(0.02), baselines=defaults_first,
                       options={"trials": 12}),
    "p02": Strategy("p02", pruner=wilcoxon(0.02)),
    "p10": Strategy("p10", pruner=wilcoxon(0.1)),
    "no-pruning": Strategy("no-pruning", pruner=optuna.pruners.NopPruner),
    "no-baselines": Strategy("no-baselines", baselines=no_baselines),
    "defaults-first": Strategy("defaults-first", baselines=defaults_first),
    "random": Strategy("random", sampler=lambda seed: optuna.samplers.RandomSampler(seed)),
    "gp": Strategy("gp", sampler=gp_sampler, pruner=optuna.pruners.NopPruner),
    "optimus": Strategy("optimus", sampler=lambda seed: optuna.samplers.TPESampler(seed=seed),
                        pruner=optuna.pruners.NopPruner, baselines=no_baselines,
                        options={"anchor_every": 0}, repeats=3, reuse_repeats=False,
                        trials=45, confirm=False),  # as Optuna alone
    "measure-repeats": Strategy("measure-repeats", reuse_repeats=False),
    "no-anchor": Strategy("no-anchor", options={"anchor_every": 0}),
    "no-racing": Strategy("no-racing", options={"racing": False}),
    "budget-12": Strategy("budget-12", options={"trials": 12}),
    "budget-5": Strategy("budget-5", options={"trials": 5}),
    "budget-8": Strategy("budget-8", options={"trials": 8}),
    "finalists-2": Strategy("finalists-2", options={"finalists": 2}),
    "warm-start": Strategy("warm-start", warm_start=True),
    "warm-start-no-baselines": Strategy("warm-start-no-baselines", baselines=no_baselines,
                                        warm_start=True),
}
EARLIER_SEED = 100_003  # the earlier study's seed is this plus the seed: another one


def gp_unavailable() -> str | None:
    """Why GPSampler cannot run here (it needs PyTorch and SciPy), or None."""
    try:
        import scipy  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        return f"GPSampler needs {err.name}, which is not installed"
    return None


def replayed_parts(grid: Grid, strategy: Strategy, seed: int
                   ) -> tuple[ModelInfo, Hardware, SearchSpace, ReplayMeasurement, Parts]:
    """What a replayed study of `strategy` runs on and with: the grid's model, machine and
    space, and the tuner's parts with its measurement replaying the grid."""
    measurement = ReplayMeasurement(grid.workload(), grid.doc["tokens_per_request"],
                                    weights=Weights(**grid.doc["weights"]), grid=grid,
                                    rng=random.Random(seed * 7919 + 17),
                                    repeats=strategy.repeats,
                                    reuse_repeats=strategy.reuse_repeats)
    parts = strategy.parts(measurement, seed)
    return (ModelInfo.from_dict(grid.doc["model"]), Hardware.from_dict(grid.doc["machine"]),
            grid.space(), measurement, parts)


def run_study(grid: Grid, strategy: Strategy, seed: int, trials: int, budget: int,
              storage: optuna.storages.BaseStorage | None = None) -> dict:
    """One replayed study: per trial its time, cell and the regret of the incumbent, and
    what the tuner's confirmation after the budget chose. The study is kept in `storage`
    (a fresh in-memory one by default) as `replay-<strategy>-<seed>`."""
    model, machine, space, measurement, parts = replayed_parts(grid, strategy, seed)
    options = dataclasses.replace(TuneOptions(trials=budget, seed=seed, out=None),
                                  **strategy.options)
    storage = storage or optuna.storages.InMemoryStorage()
    if strategy.warm_start:
        earlier_study(grid, storage, seed + EARLIER_SEED, budget)
    study = orchestrate.open_study_with(parts, f"replay-{strategy.name}-{seed}", storage,
                                        model, machine, space, warm_start=options.warm_start)
    total = strategy.trials or trials
    budget = options.trials
    first = min(budget, total) if strategy.confirm else total
    confirmed = None
    if strategy.confirm:
        failed = ""
        try:
            orchestrate.run_study(study, model, machine, space, parts,
                                  dataclasses.replace(options, trials=first))
        except MeasurementFailed as err:  # as a user's tune would have ended: no winner
            failed = str(err)
        confirmed = confirmation_of(grid, study, measurement, failed)
    else:
        orchestrate.search_study(study, model, machine, space, parts,
                                 dataclasses.replace(options, trials=first))
    measurement.last = None
    if total > first:
        orchestrate.search_study(study, model, machine, space, parts,
                                 dataclasses.replace(options, trials=total - first))
    checks = StudyRecord.read(study).anchors
    return {"seed": seed, **curve(grid, study, measurement), "confirmed": confirmed,
            "budget": budget, "harness_s": measurement.harness_s, "anchor_checks": len(checks),
            "anchor_fired": sum(c.drifted for c in checks),
            "anchor_s": sum(t for _, t in measurement.anchors)}


def confirmation_of(grid: Grid, study: optuna.Study, measurement: ReplayMeasurement,
                    failed: str) -> dict:
    """What the tuner kept in the study once it confirmed (nothing when it `failed`): the
    winner's cell and regret, and the confirmation's rounds, candidates and time."""
    record = StudyRecord.read(study)
    winner = record.winner if not failed else None
    cell = grid.cell_for(winner.settings) if winner else None
    ran = record.confirmation if winner else None
    return {"trials": len(measurement.log), "search_s": measurement.spent_s(),
            "confirm_s": sum(measurement.confirming), "regret": grid.regret(cell), "cell": cell,
            "rounds": len({r.round for r in ran.runs}) if ran else 0,
            "candidates": [c.label for c in ran.candidates] if ran else [],
            "dropped": sum(bool(c.dropped) for c in ran.candidates) if ran else 0,
            "failed": failed}


def earlier_study(grid: Grid, storage: optuna.storages.BaseStorage, seed: int,
                  budget: int) -> None:
    """What an earlier default study on this machine leaves in the storage: `budget`
    replayed trials and, when one won, its confirmed winner, kept by the tuner's own
    sequence."""
    model, machine, space, _, parts = replayed_parts(grid, STRATEGIES["default"], seed)
    study = orchestrate.open_study_with(parts, f"replay-earlier-{seed}", storage, model,
                                        machine, space, warm_start=False)
    with contextlib.suppress(MeasurementFailed):
        orchestrate.run_study(study, model, machine, space, parts,
                              TuneOptions(trials=budget, seed=seed, out=None))


def curve(grid: Grid, study: optuna.Study, measurement: ReplayMeasurement) -> dict:
    """Per trial: cumulative time and the regret of the best feasible trial so far.

    A repeat of a configuration measured whole (study.repeat_of) replays nothing: it takes
    no measuring time and stands in the earlier trial's cell.
    """
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    records = {t.number: TrialRecord.read(t) for t in trials}
    repeats = {n: r.repeat_of for n, r in records.items() if r.repeat_of is not None}
    if len(trials) - len(repeats) != len(measurement.log):
        raise RuntimeError(f"{len(trials)} trials, {len(repeats)} repeats, but "
                           f"{len(measurement.log)} replayed runs")
    runs = iter(measurement.log)
    anchors = list(measurement.anchors)  # each is paid before the next trial run
    cell_of: dict[int, int] = {}
    elapsed, best_value, best_cell, consumed = 0.0, math.inf, None, 0
    times, regrets, cells, pruned = [], [], [], 0
    gone: set[int] = set()  # superseded so far: a re-measurement ran (standing.superseded)
    for trial in trials:
        if trial.number in repeats:
            cell = cell_of[repeats[trial.number]]
        else:
            while anchors and anchors[0][0] <= consumed:
                elapsed += anchors.pop(0)[1]
            run = next(runs)
            consumed += 1
            cell = run.cell
            elapsed += run.time_s
        cell_of[trial.number] = cell
        if trial.state == optuna.trial.TrialState.PRUNED:
            pruned += 1
        if (taken := records[trial.number].remeasures) is not None:
            # measured again after the anchor drifted or the machine was busy: the earlier
            # run (and its repeats) no longer ranks, and the incumbent is chosen again
            gone |= {taken} | {n for n, of in repeats.items() if of == taken}
            best_value, best_cell = incumbent(trials[:trial.number + 1], gone, cell_of)
        elif standing.feasible(trial) and trial.value < best_value:
            best_value, best_cell = trial.value, cell
        times.append(elapsed)
        regrets.append(grid.regret(best_cell))
        cells.append(cell)
    return {"times": times, "regrets": regrets, "pruned": pruned, "cells": cells,
            "repeats": len(repeats)}


def incumbent(trials, gone, cell_of) -> tuple[float, int | None]:
    """The best feasible trial among `trials` that no re-measurement superseded."""
    best_value, best_cell = math.inf, None
    for trial in trials:
        if trial.number not in gone and standing.feasible(trial) and trial.value < best_value:
            best_value, best_cell = trial.value, cell_of.get(trial.number)
    return best_value, best_cell


def run_grid(grid: Grid, seed: int) -> dict:
    """The grid itself: every cell of the product once, in a random order, one recorded repeat."""
    rng = random.Random(seed * 7919 + 17)
    cells = [i for i in grid.core() if grid.runs[i]]
    rng.shuffle(cells)
    elapsed, best_value, best_cell = 0.0, math.inf, None
    times, regrets = [], []
    for cell in cells:
        result, took = replay(grid, cell, rng, 1, None)
        elapsed += took
        if result.ok and result.reloads == 0:
            value = score(result.latencies, Weights(**grid.doc["weights"])).total_s
            if value < best_value:
                best_value, best_cell = value, cell
        times.append(elapsed)
        regrets.append(grid.regret(best_cell))
    return {"seed": seed, "times": times, "regrets": regrets, "pruned": 0,
            "cells": cells, "confirmed": None, "harness_s": 0.0}


# --- summaries -----------------------------------------------------------------------------

def first_within(values: list[float], regrets: list[float], near: float = NEAR) -> float:
    """When the incumbent got within `near` for good: a lucky draw of a worse cell can
    take the lead later, so the first time it got there is not counted if it left again."""
    reached = math.inf
    for value, regret in zip(reversed(values), reversed(regrets), strict=True):
        if regret > near:
            break
        reached = value
    return reached


def regret_at(times: list[float], regrets: list[float], t: float) -> float:
    best = math.inf
    for when, regret in zip(times, regrets, strict=True):
        if when > t:
            break
        best = regret
    return best


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarize(grid: Grid, results: dict[str, list[dict]], budget: int) -> dict:
    one_pass = grid.one_pass_s()
    rows = {}
    for name, runs in results.items():
        trials_to = [first_within(list(range(1, len(r["regrets"]) + 1)), r["regrets"])
                     for r in runs]
        time_to = [first_within(r["times"], r["regrets"]) for r in runs]
        own = [r.get("budget") or budget for r in runs]  # a strategy may have its own
        at_budget = [r["regrets"][min(b, len(r["regrets"])) - 1]
                     for r, b in zip(runs, own, strict=True)]
        time_budget = [r["times"][min(b, len(r["times"])) - 1]
                       for r, b in zip(runs, own, strict=True)]
        at_third = [regret_at(r["times"], r["regrets"], one_pass / 3) for r in runs]
        confirmed = [r["confirmed"] for r in runs if r["confirmed"]]
        rows[name] = {
            "seeds": len(runs), "trials": median([len(r["regrets"]) for r in runs]),
            "median_trials_to_5pct": median(trials_to),
            "median_time_to_5pct_s": median(time_to),
            "reached_5pct": sum(t < math.inf for t in time_to) / len(runs),
            "median_regret_at_budget": median(at_budget),
            "median_time_at_budget_s": median(time_budget),
            "median_regret_at_third_of_grid_time": median(at_third),
            "median_final_regret": median([r["regrets"][-1] for r in runs]),
            "median_total_time_s": median([r["times"][-1] for r in runs]),
            "pruned_share": median([r["pruned"] / len(r["regrets"]) for r in runs]),
            "median_harness_s": median([r["harness_s"] for r in runs]),
            "confirmed_median_regret": median([c["regret"] for c in confirmed]),
            "confirmed_within_5pct": (sum(c["regret"] <= NEAR for c in confirmed)
                                      / len(confirmed)) if confirmed else math.nan,
            "confirmed_median_time_s": median([c["search_s"] + c["confirm_s"]
                                               for c in confirmed]),
            "confirm_median_s": median([c["confirm_s"] for c in confirmed]),
            "anchor_checks": sum(r.get("anchor_checks", 0) for r in runs),
            "anchor_fired": sum(r.get("anchor_fired", 0) for r in runs),
            "median_anchor_s": median([r.get("anchor_s", 0.0) for r in runs]),
        }
    goals = {}
    default, nop = rows.get("default"), rows.get("no-pruning")
    if default:
        goals["default_time_to_5pct_share_of_grid"] = default["median_time_to_5pct_s"] / one_pass
    if default and nop:
        goals["pruning_time_saving_at_budget"] = 1 - (default["median_time_at_budget_s"]
                                                      / nop["median_time_at_budget_s"])
        goals["pruning_time_saving_to_5pct"] = 1 - (default["median_time_to_5pct_s"]
                                                    / nop["median_time_to_5pct_s"])
    return {"grid_one_pass_s": one_pass, "rows": rows, "goals": goals}


def fmt(value: float, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == math.inf:
        return "never"
    return f"{value:.{digits}f}{unit}"


def markdown(grid: Grid, summary: dict, args, skipped: dict[str, str]) -> str:
    doc = grid.doc
    defaults = TuneOptions()
    best = min(grid.reachable() & grid.true.keys(), key=grid.true.get)
    lines = [
        f"Replay of `{args.grid}` ({doc['created']}; {doc['model']['name']} on "
        f"{doc['machine']['cpu']}, {doc['machine']['logical_cores']} logical cores; "
        f"llama-cpp-python {doc['versions']['llama_cpp_python']}, optuna "
        f"{optuna.__version__}): {len(grid.keys)} cells, true optimum {grid.keys[best]} "
        f"({grid.optimum:.3f} s); one pass of the grid takes "
        f"{summary['grid_one_pass_s']:.0f} s. {args.seeds} seeds, {args.trials} trials, "
        f"budget {args.budget} trials + the tuner's confirmation ({defaults.finalists} "
        f"finalists and the profiles' trials x {defaults.rounds} rounds).",
        "",
        "| strategy | trials to 5% | time to 5% | reached | regret @budget | time @budget "
        "| regret @1/3 grid time | final regret | pruned | confirmed regret | confirmed <=5% "
        "| confirm time | search+confirm time | anchor fired |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in summary["rows"].items():
        lines.append(
            f"| {name} | {fmt(row['median_trials_to_5pct'], '', 0)} | "
            f"{fmt(row['median_time_to_5pct_s'], ' s', 0)} | {row['reached_5pct']:.0%} | "
            f"{fmt(100 * row['median_regret_at_budget'], '%')} | "
            f"{fmt(row['median_time_at_budget_s'], ' s', 0)} | "
            f"{fmt(100 * row['median_regret_at_third_of_grid_time'], '%')} | "
            f"{fmt(100 * row['median_final_regret'], '%')} | {row['pruned_share']:.0%} | "
            f"{fmt(100 * row['confirmed_median_regret'], '%')} | "
            f"{fmt(100 * row['confirmed_within_5pct'], '%', 0)} | "
            f"{fmt(row['confirm_median_s'], ' s', 0)} | "
            f"{fmt(row['confirmed_median_time_s'], ' s', 0)} | "
            f"{anchors(row)} |")
    goals = summary["goals"]
    if "default_time_to_5pct_share_of_grid" in goals:
        share = goals["default_time_to_5pct_share_of_grid"]
        lines.append(f"\nGoal, within 5% after at most 1/3 of the grid's time: the default "
                     f"gets there in {fmt(100 * share, '%', 0)} of it "
                     f"({'met' if share <= 1 / 3 else 'not met'}).")
    if "pruning_time_saving_at_budget" in goals:
        rows = summary["rows"]
        with_, without = (fmt(100 * rows[k]["median_regret_at_budget"], "%")
                          for k in ("default", "no-pruning"))
        lines.append(
            f"\nGoal, pruning saves at least 40% of trial time at equal quality: "
            f"{fmt(100 * goals['pruning_time_saving_at_budget'], '%', 0)} of the search time "
            f"at {args.budget} trials (regret {with_} with, {without} without); "
            f"{fmt(100 * goals['pruning_time_saving_to_5pct'], '%', 0)} of the time to reach 5%.")
    for name, why in skipped.items():
        lines.append(f"\n{name}: skipped, {why}.")
    lines += ["", "Medians over seeds; regret relative to the true optimum's score. \"to 5%\": "
              "the trial (time) after which the best trial found stays within 5%; \"never\": "
              "the median seed did not stay there; \"reached\": the share of seeds that did. "
              "Times include the drift anchor's checks; \"anchor fired\": its checks that found "
              "drift, over all seeds (on recorded runs, false alarms)."]
    return "\n".join(lines) + "\n"


def anchors(row: dict) -> str:
    """How often the drift anchor fired on recorded runs (no drift but a run's own
    spread): its false alarms."""
    if not row["anchor_checks"]:
        return "-"
    return f"{row['anchor_fired']}/{row['anchor_checks']}"


def plot(grid: Grid, results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_trial, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    horizon = max(max(r["times"][-1] for r in runs) for runs in results.values())
    grid_t = [horizon * i / 200 for i in range(1, 201)]
    for number, (name, runs) in enumerate(results.items()):
        style = ("-", "--", "-.", ":")[number // 10 % 4]  # the colours repeat after ten
        n = max(len(r["regrets"]) for r in runs)
        xs = list(range(1, n + 1))
        med = [median([r["regrets"][min(i, len(r["regrets"])) - 1] for r in runs]) for i in xs]
        by_trial.plot(xs, [100 * clip(v) for v in med], style, label=name)
        med_t = [median([regret_at(r["times"], r["regrets"], t) for r in runs]) for t in grid_t]
        by_time.plot([t / 60 for t in grid_t], [100 * clip(v) for v in med_t], style,
                     label=name)
    for axis, label in ((by_trial, "trials"), (by_time, "replayed minutes")):
        axis.set_xlabel(label)
        axis.set_ylabel(f"median regret, % (capped at {100 * CAP:.0f})")
        axis.axhline(100 * NEAR, color="grey", linestyle=":", linewidth=1)
        axis.set_ylim(0, 100 * CAP)
        axis.grid(alpha=0.3)
    by_time.axvline(grid.one_pass_s() / 3 / 60, color="grey", linestyle="--", linewidth=1,
                    label="1/3 of the grid's time")
    by_time.set_xlim(0, 2 * grid.one_pass_s() / 60)  # the grid's own time, twice over
    by_trial.legend(fontsize=8)
    fig.suptitle(f"Regret vs trials and time: {grid.doc['model']['name']}, "
                 f"{len(grid.keys)} cells, {len(next(iter(results.values())))} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finite(value: object) -> object:
    """JSON without Infinity or NaN: either becomes null (never reached, no value)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def clip(value: float) -> float:
    return min(value, CAP)


def replay_one(grid: Grid, trials: int, budget: int, task: tuple[str, int]) -> dict:
    name, seed = task
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return run_grid(grid, seed) if name == "grid" else run_study(
        grid, STRATEGIES[name], seed, trials, budget)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", default=str(RESULTS / "grid.json"))
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--trials", type=int, default=45)
    parser.add_argument("--budget", type=int, default=TuneOptions().trials,
                        help="trials before confirmation (the tuner's default)")
    parser.add_argument("--strategies", default=",".join(
        [s for s in STRATEGIES if not s.startswith("warm-start")] + ["grid"]))
    parser.add_argument("--out", help="output path without suffix (results/replay-<grid>)")
    parser.add_argument("--jobs", type=int, default=1, help="processes (seeds run apart)")
    args = parser.parse_args(argv)
    grid = Grid.load(args.grid)
    out = Path(args.out or RESULTS / f"replay-{Path(args.grid).stem}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    skipped: dict[str, str] = {}
    results: dict[str, list[dict]] = {}
    names = []
    for name in args.strategies.split(","):
        if name == "gp" and (why := gp_unavailable()):
            skipped[name] = why
        elif name != "grid" and name not in STRATEGIES:
            raise SystemExit(f"unknown strategy {name!r}; one of: grid, {', '.join(STRATEGIES)}")
        else:
            names.append(name)
    started = time.monotonic()
    tasks = [(name, seed) for name in names for seed in range(args.seeds)]
    one = functools.partial(replay_one, grid, args.trials, args.budget)
    if args.jobs > 1:  # each seed's replay is independent: one process per core
        with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
            done = list(pool.map(one, tasks, chunksize=4))
    else:
        done = [one(task) for task in tasks]
    for (name, _), run in zip(tasks, done, strict=True):
        results.setdefault(name, []).append(run)
    log(f"{len(names)} strategies x {args.seeds} seeds in {time.monotonic() - started:.0f} s")
    summary = summarize(grid, results, args.budget)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(finite(
        {"format": "autotune-replay", "format_version": 1, "grid": str(args.grid),
         "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "optuna": optuna.__version__,
         "seeds": args.seeds, "trials": args.trials, "budget": args.budget,
         "skipped": skipped, "summary": summary, "runs": results})))
    table = markdown(grid, summary, args, skipped)
    out.with_suffix(".md").write_text(table)
    plot(grid, results, out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
