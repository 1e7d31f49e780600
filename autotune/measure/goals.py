"""What a study is for: the quantity it minimises, and the limits a winner must stay within.

An `Objective` names what a trial's value is (`score`, today's mean latency plus spike and
consistency penalties, or `p95`, `p99`, `ttft`, `mean`); a `Target` is one limit on a
trial's statistics (`p95<=1.5s`, `cv<0.4`) or on its memory (`memory<=6GiB`, the worker's
peak resident memory; `gpu_memory<=10GiB`, its peak GPU memory). `Goals` holds the three,
is kept with the study (a resumed study must keep them), and gives each trial its Optuna
constraints: `measured - limit` per target, feasible when zero or less.

Pruning for a tail objective (`p95`, `p99`) is not the Wilcoxon test on per-request
latencies, which compares typical requests rather than tails: `tail_certainly_worse` stops
a candidate only once its final percentile over the workload's requests must exceed the
best trial's, whatever the requests still to come measure.

Example:
    >>> target = Target.parse("p95<=1500ms")
    >>> target.describe(), target.excess(TrialStats(p95_s=1.7)) > 0
    ('p95<=1.5s', True)
    >>> parse_size("6GiB") == 6 * 2**30, parse_size("512 MB")
    (True, 512000000)
    >>> tail_certainly_worse([2.0, 3.0], total=4, q=95, best=1.0)
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from autotune.errors import AutotuneError, Option
from autotune.measure.mapping import from_mapping
from autotune.measure.records import RequestRecord, TrialStats
from autotune.measure.scoring import Score
from autotune.measure.stats import percentile
from autotune.safe_text import visible


class Objective(StrEnum):
    """What a study minimises: each trial's value, and the winner's choice in confirmation."""

    SCORE = "score"
    P95 = "p95"
    P99 = "p99"
    TTFT = "ttft"
    MEAN = "mean"

    def describe(self) -> str:
        return OBJECTIVE_NAMES[self]

    def of(self, stats: TrialStats, score: Score | None) -> float | None:
        """The trial's value under this objective; None when it did not finish."""
        if self is Objective.SCORE:
            return score.total_s if score is not None else None
        return getattr(stats, OBJECTIVE_STATS[self])

    def per_request(self, request: RequestRecord) -> float:
        """What the trial reports at each request's index, for the pruner."""
        return request.ttft_s if self is Objective.TTFT else request.latency_s

    @property
    def tail(self) -> float | None:
        """The percentile of a tail objective (pruned by `tail_certainly_worse`), else None."""
        return {Objective.P95: 95.0, Objective.P99: 99.0}.get(self)


OBJECTIVE_NAMES = {
    Objective.SCORE: "score (mean latency + spike and consistency penalties)",
    Objective.P95: "p95 latency", Objective.P99: "p99 latency",
    Objective.TTFT: "mean time to first token", Objective.MEAN: "mean latency"}
OBJECTIVE_STATS = {Objective.P95: "p95_s", Objective.P99: "p99_s",
                   Objective.TTFT: "ttft_mean_s", Objective.MEAN: "mean_s"}


@dataclass(frozen=True)
class Metric:
    """A quantity a target limits: its TrialStats field, how it reads, its unit."""

    stat: str
    label: str
    unit: str  # "s", "" (a ratio) or "B"


METRICS = {
    "mean": Metric("mean_s", "mean", "s"), "p50": Metric("p50_s", "p50", "s"),
    "p95": Metric("p95_s", "p95", "s"), "p99": Metric("p99_s", "p99", "s"),
    "max": Metric("max_s", "max", "s"), "ttft_p95": Metric("ttft_p95_s", "ttft_p95", "s"),
    "cv": Metric("cv", "cv", ""),
    # the memory budgets, given as --max-memory and --max-gpu-memory
    "memory": Metric("peak_rss_bytes", "peak memory", "B"),
    "gpu_memory": Metric("gpu_memory_peak_bytes", "GPU memory", "B")}
LATENCY_METRICS = tuple(k for k, m in METRICS.items() if m.unit != "B")
TARGET = re.compile(r"\s*([a-z_0-9]+)\s*(<=|<)\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*"
                    r"(ms|s)?\s*", re.IGNORECASE)
SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*", re.IGNORECASE)
SIZE_UNITS = {"b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
              "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


@dataclass(frozen=True)
class Target:
    """One limit: `metric op limit`, the limit in seconds, as a ratio (cv) or in bytes."""

    metric: str
    op: str
    limit: float

    @classmethod
    def parse(cls, text: str) -> Target:
        """`p95<=1.5s`, `ttft_p95<300ms`, `cv<=0.4`; AutotuneError naming `target`."""
        shown = Option("target", visible(repr(text), 60))
        found = TARGET.fullmatch(text)
        if not found:
            raise AutotuneError(shown, ": expected METRIC<=LIMIT or METRIC<LIMIT, e.g. "
                                f"p95<=1.5s (metrics: {', '.join(LATENCY_METRICS)})")
        name, op, number, unit = found[1].lower(), found[2], float(found[3]), found[4]
        if name not in LATENCY_METRICS:
            raise AutotuneError(shown, f": unknown metric {visible(name, 30)!r}; expected "
                                f"one of {', '.join(LATENCY_METRICS)}")
        if METRICS[name].unit == "s" and unit is None:
            raise AutotuneError(shown, ": give the limit's unit, s or ms (e.g. p95<=1.5s)")
        if METRICS[name].unit == "" and unit is not None:
            raise AutotuneError(shown, f": {name} is a ratio; give its limit without a unit "
                                "(e.g. cv<=0.4)")
        limit = number / 1000 if unit and unit.lower() == "ms" else number
        if limit <= 0 or not math.isfinite(limit):
            raise AutotuneError(shown, ": the limit must be a positive number")
        return cls(name, op, limit)

    @classmethod
    def budget(cls, metric: str, limit_bytes: int) -> Target:
        return cls(metric, "<=", float(limit_bytes))

    @property
    def unit(self) -> str:
        return METRICS[self.metric].unit

    def describe(self) -> str:
        """`p95<=1.5s`, `cv<0.4`, `peak memory<=6 GiB`."""
        return f"{METRICS[self.metric].label}{self.op}{self.show(self.limit, compact=True)}"

    def show(self, value: float, compact: bool = False) -> str:
        """A value of this target's metric: `0.41 s`, `0.62`, `312 MiB`."""
        if self.unit == "B":
            return size_text(value)
        if self.unit == "s":
            return f"{value:g}s" if compact else f"{value:.3f} s"
        return f"{value:g}" if compact else f"{value:.3g}"

    def measured(self, stats: TrialStats) -> float | None:
        value = getattr(stats, METRICS[self.metric].stat)
        return None if value is None else float(value)

    def excess(self, stats: TrialStats) -> float:
        """The constraint value: measured - limit (feasible at zero or less); a strict
        limit that is reached exactly counts as missed by the smallest amount. An
        unmeasured value (no GPU, a trial that failed) is no violation of its own."""
        value = self.measured(stats)
        if value is None:
            return 0.0
        over = value - self.limit
        if self.op == "<" and over == 0:
            return math.ulp(self.limit)
        return over

    def missed(self, stats: TrialStats) -> str | None:
        """`p95 0.410 s (0.110 s over p95<=0.3s)` when missed, else None."""
        over = self.excess(stats)
        if over <= 0:
            return None
        return (f"{METRICS[self.metric].label} {self.show(self.measured(stats) or 0.0)} "
                f"({self.show(over)} over {self.describe()})")

    @property
    def constraint(self) -> str:
        """The name of its Optuna constraint."""
        return f"target:{self.metric}"


def size_text(value: float) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {unit}"
    return f"{value:.0f} B"


def parse_size(text: str, option: str = "max_memory") -> int:
    """Bytes from `6GiB`, `512MiB`, `800MB`, `1000000` (B); AutotuneError naming `option`."""
    found = SIZE.fullmatch(text)
    if not found or float(found[1]) <= 0:
        raise AutotuneError(Option(option, visible(repr(text), 40)), ": expected a positive "
                            "size such as 6GiB or 800MB (units B, KiB, MiB, GiB, KB, MB, GB)")
    return int(float(found[1]) * SIZE_UNITS[(found[2] or "b").lower()])


@dataclass(frozen=True)
class Goals:
    """The objective, the targets and the memory budgets of a study."""

    objective: Objective = Objective.SCORE
    targets: tuple[Target, ...] = ()
    max_memory_bytes: int | None = None
    max_gpu_memory_bytes: int | None = None

    @classmethod
    def from_dict(cls, data: object) -> Goals:
        return from_mapping(cls, data, {
            "objective": Objective,
            "targets": lambda rows: tuple(from_mapping(Target, r) for r in rows)})

    @property
    def limits(self) -> tuple[Target, ...]:
        """The targets, then the budgets as targets on memory."""
        budgets = [Target.budget(m, b) for m, b in (("memory", self.max_memory_bytes),
                                                    ("gpu_memory", self.max_gpu_memory_bytes))
                   if b is not None]
        return (*self.targets, *budgets)

    def describe(self) -> str:
        """`objective: p95 latency; targets: p95<=1.5s, peak memory<=6 GiB`."""
        text = f"objective: {self.objective.describe()}"
        if self.limits:
            text += "; targets: " + ", ".join(t.describe() for t in self.limits)
        return text

    def constraints(self, stats: TrialStats) -> dict[str, float]:
        """Each limit's Optuna constraint value for a trial's statistics."""
        return {t.constraint: t.excess(stats) for t in self.limits}

    def missed(self, stats: TrialStats) -> tuple[str, ...]:
        """What the statistics miss, one phrase per limit (none: every limit is met)."""
        return tuple(m for t in self.limits if (m := t.missed(stats)) is not None)

    def shortfall(self, stats: TrialStats) -> float:
        """How far from meeting every limit: the largest excess as a fraction of its limit."""
        return max((t.excess(stats) / t.limit for t in self.limits), default=0.0)

    def notes(self, gpu_offload: bool) -> tuple[str, ...]:
        if self.max_gpu_memory_bytes is not None and not gpu_offload:
            return ("the GPU memory budget does not apply: this machine runs llama.cpp "
                    "without GPU offload",)
        return ()


def closest(goals: Goals, measured: Sequence[tuple[str, TrialStats]], where: str = "trial"
            ) -> str:
    """One line for a study that met no limit set: which candidate came closest, by what.

    `measured` holds (name, statistics) of every candidate that finished its workload.
    """
    wanted = ", ".join(t.describe() for t in goals.limits)
    if not measured:
        return f"no {where} finished its workload to measure {wanted} against"
    measured = [pair for pair in measured if goals.missed(pair[1])] or measured
    name, stats = min(measured, key=lambda pair: goals.shortfall(pair[1]))
    return f"no {where} met {wanted}: closest was {name}, {'; '.join(goals.missed(stats))}"


def tail_certainly_worse(seen: Sequence[float], total: int, q: float, best: float) -> bool:
    """Whether the `q`th percentile over `total` values must exceed `best`, whatever the
    values not `seen` yet turn out to be.

    A linear-interpolated percentile never falls when one value is lowered, so its least
    possible final value is the one with every unseen value at zero: the candidate is
    certainly worse when even that exceeds the best trial's.

    Example:
        >>> tail_certainly_worse([2.0], total=4, q=95, best=1.0)  # 0, 0, 0, 2: 1.70
        True
        >>> tail_certainly_worse([0.5, 2.0], total=20, q=95, best=1.0)  # 0.5 + 0.05 x 1.5
        False
    """
    if not seen or total < len(seen):
        return False
    return percentile([*seen, *[0.0] * (total - len(seen))], q) > best

