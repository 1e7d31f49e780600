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
  (confirm.defaults_behind); before they have run, for the larger of every round near
  the typical run and one round at their cap (`defaults_s`);
- the finalists planned are at most the distinct feasible trials so far, plus the one
  more trial would add: after one trial, a study has one finalist to confirm, not three.

Trials beyond the first buy little quality on the recorded grids (the study module's
docstring), so a budget never adds trials beyond `--trials` (5 unless given): the time
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
from autotune.search.costs import RunCosts

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
    runs: RunCosts = field(default_factory=RunCosts)  # what runs cost here (search/costs.py)
    too_small: str = ""  # why the budget cannot buy a confirmed winner, once known

    def __post_init__(self) -> None:
        self.started = self.started or self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed() - RESERVE_S

    def observe(self, settings: Settings, result: TrialResult, total: int) -> None:
        """A run ended: keep what it cost (a repeat of a measurement costs nothing)."""
        first = not self.runs.runs
        self.runs.add(settings, result, total)
        done = len(result.latencies)
        if first and not self.too_small and done < total and self.left() <= 0:
            self.too_small = (
                f"a budget of {spoken(self.seconds)} cannot confirm a winner for this model "
                f"on this machine: its first trial alone ran past it ({done} of "
                f"{total} requests in {spoken(result.wall_s)}); give a longer --budget")

    def baseline_s(self) -> float:
        """A defaults' run in confirmation: its own cost, at most BASELINE_CAP typical runs;
        the cap when they have not run yet."""
        kept = self.runs.defaults_costs()
        own = statistics.median(kept) if kept else self.baseline_limit_s()
        return min(own, self.baseline_limit_s())

    def defaults_s(self, rounds: int) -> float:
        """What the guide's defaults' runs over `rounds` confirmation rounds should cost.

        Runs so far clearly slower than the typical run (over 1 + DEFAULTS_MARGIN of it)
        are planned for one round: confirmation's racing rests them after it
        (confirm.defaults_behind). Before they have run, they are either near the typical
        run, and then run every round, or slower, and then run one round at most at
        their cap: the plan takes the larger of the two.
        """
        kept = self.runs.defaults_costs()
        near = (1 + DEFAULTS_MARGIN) * (self.runs.typical_s() or self.seconds)
        if not kept:
            return max(rounds * near, min(1, rounds) * self.baseline_limit_s())
        if statistics.median(kept) > near:
            return min(1, rounds) * self.baseline_s()
        return rounds * self.baseline_s()

    def baseline_limit_s(self) -> float:
        return BASELINE_CAP * (self.runs.typical_s() or self.seconds)

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
        return rounds * sum(self.runs.run_s(s) for s in finalists) + self.defaults_s(rounds)

    def search_may_go_on(self, finalists: int, rounds: int) -> bool:
        """One more trial, and then the planned confirmation of `finalists`, still fit."""
        typical = self.runs.typical_s()
        if typical is None:
            return True
        planned = rounds * finalists * typical + self.defaults_s(rounds)
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
        cost = sum(self.baseline_s() if is_guide_defaults(s) else self.runs.run_s(s)
                   for s in active)
        return cost <= self.left()

    def describe(self) -> str:
        """What the budget was and what of it the run used, for the report."""
        return f"budget {spoken(self.seconds)}, used {spoken(self.elapsed())}"
