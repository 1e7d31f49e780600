"""A time the user chooses: `--budget` bounds the whole command, search and confirmation
together, on any model.

Nothing is known of a run's cost before the model has run here, so the first trial
measures it: after that trial's first few requests, the budget projects what the smallest
confirmed answer costs (that trial to its end, one finalist and the guide's defaults, one
round each) and, when it cannot fit, the run stops there and says so, before the budget
is spent. From then on every run that ends (`observe`) refines the estimate of what a
configuration's run costs (its wall time, the requests it did not reach counted at its own
mean), and the tuner plans with it:

- the search runs another trial only while the confirmation it plans (`--finalists` and
  `--rounds`) still fits after one more trial of the typical cost (`search_may_go_on`);
- a trial may run no longer than the budget leaves after that confirmation;
- the confirmation takes what fits (`fit_confirmation`), in the order the replay ranks
  what quality comes from (docs/benchmarks.md): the finalists first (3 finalists find
  a better winner than 2), then the rounds, then the profiles' re-measurement;
- the guide's defaults' runs in confirmation stop at `BASELINE_CAP` typical runs: a
  stopped run still bounds the improvement from below (confirm.lower_bound), which is
  what the report then says ("at least 3.1x");
- the defaults are planned for one confirmation round when their runs so far cost over
  1 + DEFAULTS_MARGIN typical runs: confirmation's racing then rests them after it
  (confirm.defaults_behind);
- the finalists planned are at most the distinct feasible trials so far, plus the one
  more trial would add: after one trial, a study has one finalist to confirm, not three.

Trials beyond the first buy little quality on the recorded grids (the study module's
docstring), so a budget never adds trials beyond `--trials` (8 unless given): the time
it leaves goes to confirmation rounds that separate near-tied finalists
(`may_add_round`).

Example:
    >>> parse_duration("1h30m"), parse_duration("45s"), parse_duration("90")
    (5400.0, 45.0, 90.0)
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from autotune.errors import AutotuneError
from autotune.measure.records import TrialResult
from autotune.measure.settings import Settings
from autotune.search.confirm import DEFAULTS_MARGIN, is_guide_defaults

# The command's budget when neither --budget nor --trials is given: a 1B-class model's
# study on two cores fits in it (docs/benchmarks.md, the scaling table).
DEFAULT_BUDGET_S = 300.0
# A run of the guide's defaults in confirmation stops after this many typical runs' time.
BASELINE_CAP = 3.0
# Kept free of the budget for what follows the last measurement: the export, the report.
RESERVE_S = 2.0
# Requests of the first trial after which the budget judges whether it can buy an answer.
JUDGE_AFTER = 4
# Confirmation rounds a budget may add to separate near-tied finalists.
MAX_ROUNDS = 6
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def parse_duration(text: str) -> float:
    """Seconds in `10m`, `45s`, `1h`, `1h30m` or a bare number of seconds."""
    spoken = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", spoken):
        seconds = float(spoken)
    elif spoken and DURATION.sub("", spoken) == "":
        seconds = sum(float(n) * UNITS[u] for n, u in DURATION.findall(spoken))
    else:
        raise AutotuneError(f"--budget {text[:40]!r}: give a duration such as 45s, 10m, 1h "
                            "or 1h30m")
    if seconds <= 0:
        raise AutotuneError(f"--budget {text[:40]!r}: the duration must be above zero")
    return seconds


def spoken(seconds: float) -> str:
    """`4m05s`, `45s`: a duration as the report says it."""
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.0f}s"
    return f"{whole // 60}m{whole % 60:02d}s"


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


@dataclass(frozen=True)
class ConfirmPlan:
    """The confirmation a budget can buy, and what it gave up for it."""

    finalists: int
    rounds: int
    profiles: bool
    expected_s: float
    gave_up: tuple[str, ...] = ()


@dataclass
class Budget:
    """The command's time, from its start; what runs cost here, as they end."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    runs: dict[Settings, list[RunCost]] = field(default_factory=dict)
    too_small: str = ""  # why the budget cannot buy a confirmed winner, once known

    def __post_init__(self) -> None:
        self.started = self.started or self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed() - RESERVE_S

    def observe(self, settings: Settings, result: TrialResult, total: int) -> None:
        """A run ended: keep what it cost (a repeat of a measurement costs nothing)."""
        latencies = result.latencies
        mean = statistics.fmean(latencies) if latencies else 0.0
        first = not self.runs
        self.runs.setdefault(settings, []).append(
            RunCost(result.wall_s, len(latencies), total, mean))
        if first and not self.too_small and len(latencies) < total and self.left() <= 0:
            self.too_small = (
                f"a budget of {spoken(self.seconds)} cannot confirm a winner for this model "
                f"on this machine: its first trial alone ran past it ({len(latencies)} of "
                f"{total} requests in {spoken(result.wall_s)}); give a longer --budget")

    def typical_s(self) -> float | None:
        """The median whole-run cost over the configurations measured, the guide's defaults
        aside while others ran (they are the slow outlier the cap is for); None: none yet."""
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

    def baseline_s(self) -> float:
        """A defaults' run in confirmation: its own cost, at most BASELINE_CAP typical runs;
        the cap when they have not run yet."""
        kept = self.defaults_costs()
        own = statistics.median(kept) if kept else self.baseline_limit_s()
        return min(own, self.baseline_limit_s())

    def baseline_rounds(self, rounds: int) -> int:
        """The confirmation rounds the defaults are planned for: one when their runs so far
        were clearly slower than the typical run (racing rests them after it), else all."""
        kept = self.defaults_costs()
        typical = self.typical_s()
        if kept and typical and statistics.median(kept) > (1 + DEFAULTS_MARGIN) * typical:
            return min(1, rounds)
        return rounds

    def baseline_limit_s(self) -> float:
        return BASELINE_CAP * (self.typical_s() or self.seconds)

    def first_requests(self, elapsed_s: float, latencies: list[float], total: int) -> bool:
        """During the first trial: can the smallest confirmed answer still fit?

        Its cost: this trial to its end (the requests left at the median so far), then one
        finalist's run and one of the defaults (stopped, if need be, after one such run's
        time). Judged once `JUDGE_AFTER` requests have run (the first request, with no
        prompt cached, is the slowest); False, and `too_small` says why, when it cannot.
        """
        if len(latencies) < min(JUDGE_AFTER, total):
            return True
        typical = statistics.median(latencies)
        whole = elapsed_s + (total - len(latencies)) * typical
        needed = (whole - elapsed_s) + 2 * whole
        if needed <= self.left():
            return True
        at_least = self.elapsed() + needed
        self.too_small = (
            f"a budget of {spoken(self.seconds)} cannot confirm a winner for this model on "
            f"this machine: a trial takes about {spoken(whole)} here ({total} requests at "
            f"about {typical:.2f} s), and the smallest confirmed answer (this trial, then "
            f"one finalist and the guide's defaults, one round) needs about "
            f"{spoken(at_least)}; give --budget {spoken(1.2 * at_least)} or more")
        return False

    def confirmation_s(self, finalists: list[Settings], rounds: int) -> float:
        """What `rounds` rounds of these finalists and the defaults should cost."""
        return (rounds * sum(self.run_s(s) for s in finalists)
                + self.baseline_rounds(rounds) * self.baseline_s())

    def search_may_go_on(self, finalists: int, rounds: int) -> bool:
        """One more trial, and then the planned confirmation of `finalists`, still fit."""
        typical = self.typical_s()
        if typical is None:
            return True
        planned = rounds * finalists * typical + self.baseline_rounds(rounds) * self.baseline_s()
        return self.left() >= typical + planned

    def trial_limit_s(self, limit_s: float) -> float:
        """A trial's time limit: `limit_s`, and never past the budget's end."""
        return max(1.0, min(limit_s, self.left()))

    def fit_confirmation(self, finalists: list[Settings], profiles: list[Settings],
                         rounds: int) -> ConfirmPlan:
        """The most of the wanted confirmation that fits (see the module's docstring)."""
        wanted_f, wanted_r = len(finalists), rounds
        steps = [(wanted_f, wanted_r), (min(wanted_f, 2), wanted_r), (min(wanted_f, 2), 1),
                 (1, 1)]
        left = self.left()
        full = self.confirmation_s([*finalists, *profiles], rounds)
        if profiles and full <= left:
            return ConfirmPlan(wanted_f, wanted_r, True, full)
        for f, r in steps:
            cost = self.confirmation_s(finalists[:f], r)
            if cost <= left or (f, r) == (1, 1):
                gave = []
                if profiles:
                    gave.append("the balanced and lean profiles' re-measurement (they keep "
                                "their search values)")
                if f < wanted_f:
                    gave.append(f"{wanted_f - f} of {wanted_f} finalists")
                if r < wanted_r:
                    gave.append(f"{wanted_r - r} of {wanted_r} confirmation rounds")
                return ConfirmPlan(f, r, False, cost, tuple(gave))
        raise AssertionError("unreachable: the last step is always taken")

    def may_add_round(self, active: list[Settings]) -> bool:
        """Another round of the `active` candidates fits (near-ties, see confirm.py, which
        also caps the rounds added)."""
        cost = sum(self.baseline_s() if is_guide_defaults(s) else self.run_s(s)
                   for s in active)
        return cost <= self.left()

    def describe(self) -> str:
        """What the budget was and what of it the run used, for the report."""
        return f"budget {spoken(self.seconds)}, used {spoken(self.elapsed())}"
