"""Confirmation's decision and its improvement interval, on hand-made runs (logic only)."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from autotune.measure.goals import Goals, Objective
from autotune.measure.records import RequestRecord, Status, TrialResult, TrialStats
from autotune.measure.scoring import Weights, score
from autotune.measure.settings import Settings
from autotune.search.confirm import BASELINE, Candidate, confirm, decide, paired_bootstrap
from autotune.studies.records import ConfirmRun, Improvement

WINNER = "trial 3"


def run(label: str, round_no: int, latencies: list[float]) -> ConfirmRun:
    mean = sum(latencies) / len(latencies)
    return ConfirmRun(round=round_no, label=label, status=Status.OK, reason="",
                      trial_number=None, settings=Settings(), stats=TrialStats(mean_s=mean),
                      score=score(latencies), latencies=dict(enumerate(latencies)))


def candidates() -> list[Candidate]:
    return [Candidate(WINNER, Settings(n_threads=2), 3), Candidate(BASELINE, Settings())]


def test_an_exact_ratio_has_no_spread() -> None:
    rounds = [[(2.0 * x, x) for x in (0.5, 0.7, 0.9, 1.1)]] * 3
    assert paired_bootstrap(rounds, seed=1) == pytest.approx((2.0, 2.0))


def test_the_interval_holds_the_ratio_it_was_drawn_around() -> None:
    rng = random.Random(7)
    rounds = [[(2.5 * x * rng.uniform(0.8, 1.2), x) for x in
               (rng.uniform(0.3, 1.5) for _ in range(16))] for _ in range(3)]
    low, high = paired_bootstrap(rounds, seed=3)
    assert low < 2.5 < high
    assert high - low < 0.6  # 16 pairs a round pin it down
    assert paired_bootstrap(rounds, seed=3) == (low, high)  # a seed repeats it


def test_more_requests_narrow_the_interval() -> None:
    rng = random.Random(11)

    def rounds_of(n: int) -> list[list[tuple[float, float]]]:
        return [[(2 * x * rng.uniform(0.7, 1.3), x) for x in (rng.uniform(0.3, 1.5)
                                                             for _ in range(n))]
                for _ in range(2)]

    few, many = paired_bootstrap(rounds_of(4), seed=0), paired_bootstrap(rounds_of(64), seed=0)
    assert many[1] - many[0] < few[1] - few[0]


def test_decide_reports_the_interval_with_the_median_ratio() -> None:
    runs = []
    for round_no in range(2):
        runs.append(run(WINNER, round_no, [0.4, 0.5, 0.6, 0.5]))
        runs.append(run(BASELINE, round_no, [1.0, 1.1, 0.9, 1.0]))
    outcome = decide(candidates(), runs, seed=0)
    assert outcome.winner is not None and outcome.winner.label == WINNER
    improvement = outcome.improvement
    assert isinstance(improvement, Improvement)
    assert improvement.speedup == pytest.approx(2.0)
    assert improvement.low <= 2.0 <= improvement.high
    assert (improvement.rounds, improvement.requests, improvement.confidence) == (2, 4, 0.95)
    assert "95% of fresh A/Bs within" in improvement.describe()


def test_a_run_without_request_latencies_keeps_the_range_only() -> None:
    # confirmations kept before the interval existed have no latencies per request
    old = [dataclasses.replace(run(WINNER, 0, [0.5] * 4), latencies={}),
           dataclasses.replace(run(BASELINE, 0, [1.0] * 4), latencies={})]
    improvement = decide(candidates(), old).improvement
    assert improvement is not None and improvement.low is None
    assert improvement.describe().startswith("2.00x lower mean latency (range 2.00x-2.00x")



def test_the_interval_spans_the_drift_between_rounds() -> None:
    # one round at 2x, one at 3x, no spread within: a fresh A/B lands at either
    rounds = [[(2.0 * x, x) for x in (0.5, 1.0)], [(3.0 * x, x) for x in (0.5, 1.0)]]
    assert paired_bootstrap(rounds, seed=0) == pytest.approx((2.0, 3.0))


def window_run(label: str, round_no: int, latencies: list[float], window: int) -> ConfirmRun:
    return dataclasses.replace(run(label, round_no, latencies),
                               settings={"context_window": window})


def window_candidates() -> list[Candidate]:
    return [Candidate("trial 1", Settings(context_window=1024), 1),
            Candidate("trial 2", Settings(context_window=4096), 2),
            Candidate(BASELINE, Settings())]


def test_a_larger_window_within_three_percent_wins_and_says_why() -> None:
    runs = [window_run("trial 1", 0, [1.00] * 4, 1024), window_run("trial 2", 0, [1.02] * 4, 4096),
            window_run(BASELINE, 0, [3.0] * 4, 4096)]
    outcome = decide(window_candidates(), runs, seed=1)
    assert outcome.winner.label == "trial 2"
    assert "trial 2 (context window 4096) chosen over trial 1 (1024)" in outcome.tie_break
    assert outcome.improvement.speedup == pytest.approx(3.0 / 1.02)


def test_a_measurably_faster_small_window_still_wins() -> None:
    runs = [window_run("trial 1", 0, [1.00] * 4, 1024), window_run("trial 2", 0, [1.10] * 4, 4096),
            window_run(BASELINE, 0, [3.0] * 4, 4096)]
    outcome = decide(window_candidates(), runs, seed=1)
    assert (outcome.winner.label, outcome.tie_break) == ("trial 1", "")


# --- racing: a finalist clearly behind runs no further round -------------------------------

def racing_measure(latency_of: dict[int, float], failing: set[int] = frozenset()):
    """A measure that runs 16 requests at `latency_of[n_threads]` each, with a small
    per-request spread, and fails for the thread counts in `failing` (logic only)."""
    rng = random.Random(5)
    calls: list[int] = []

    def measure(candidate: Candidate) -> TrialResult:
        settings = candidate.settings
        calls.append(settings.n_threads)
        result = TrialResult(status=Status.OK, settings=settings)
        if settings.n_threads in failing:
            return dataclasses.replace(result, status=Status.CRASHED, reason="boom")
        for index in range(16):
            latency = latency_of[settings.n_threads] * (1 + 0.3 * index / 16) * rng.uniform(
                0.98, 1.02)
            result.requests.append(RequestRecord(index=index, id=str(index), latency_s=latency,
                                                 rss_bytes=0))
        return result

    return measure, calls


def two() -> list[Candidate]:
    return [Candidate("trial 1", Settings(n_threads=1), 1),
            Candidate("trial 2", Settings(n_threads=2), 2)]


def race(latency_of, finalists, rounds=3, failing=frozenset(), **options):
    measure, calls = racing_measure(latency_of, failing)
    events = []
    outcome = confirm([*finalists, Candidate(BASELINE, Settings(n_threads=8))], measure,
                      rounds, Weights(), seed=0, on_event=events.append, **options)
    return outcome, Counter(calls), events


def test_a_finalist_clearly_behind_runs_only_the_first_round() -> None:
    # the defaults within 20% of the leader: they run every round, the leader too
    outcome, calls, events = race({1: 1.5, 2: 1.0, 8: 1.15}, two())
    assert calls == {1: 1, 2: 3, 8: 3}
    assert outcome.winner.label == "trial 2"
    dropped = outcome.confirmation.candidate("trial 1").dropped
    assert dropped.startswith("clearly slower than trial 2 after round 1: median 1.5")
    assert outcome.dropped == (f"trial 1: {dropped}",)
    assert [(e.done, e.total) for e in events][-1] == (7, 7)  # the total shrank with the drop
    assert outcome.improvement.rounds == 3


def test_finalists_within_the_tie_margin_run_every_round() -> None:
    _, calls, _ = race({1: 1.02, 2: 1.0, 8: 1.15}, two())
    assert calls == {1: 3, 2: 3, 8: 3}


def test_a_profile_and_racing_off_run_every_round() -> None:
    slow = Candidate("trial 1", Settings(n_threads=1), 1, race=False)
    _, calls, _ = race({1: 1.5, 2: 1.0, 8: 1.15}, [slow, two()[1]])
    assert calls == {1: 3, 2: 3, 8: 3}
    _, calls, _ = race({1: 1.5, 2: 1.0, 8: 3.0}, two(),
        racing=False)
    assert calls == {1: 3, 2: 3, 8: 3}


def test_a_finalist_whose_run_failed_is_dropped_and_cannot_win() -> None:
    outcome, calls, _ = race({1: 0.5, 2: 1.0, 8: 1.15}, two(),
        failing={1})
    assert calls == {1: 1, 2: 3, 8: 3}
    assert outcome.confirmation.candidate("trial 1").dropped == "a run failed in round 1"
    assert outcome.winner.label == "trial 2"


def test_a_tail_objective_is_not_raced() -> None:
    _, calls, _ = race({1: 1.5, 2: 1.0, 8: 3.0}, two(),
        goals=Goals(objective=Objective.P95))
    assert calls == {1: 3, 2: 3, 8: 3}


def test_defaults_slower_than_every_finalist_rest_after_the_first_round() -> None:
    outcome, calls, events = race({1: 1.02, 2: 1.0, 8: 3.0}, two())
    assert calls == {1: 3, 2: 3, 8: 1}
    assert [(e.done, e.total) for e in events][-1] == (7, 7)
    rested = outcome.confirmation.candidate(BASELINE).dropped
    assert rested.startswith("ran no further round after round 1: slower than every "
                             "finalist by at least 2.9")
    assert rested.endswith("the improvement rests on the rounds they ran")
    found = outcome.improvement
    assert found is not None and found.rounds == 1 and found.requests == 16
    assert found.low is not None and found.low < 3.0 / 1.0 < found.high


def test_defaults_near_a_finalist_that_may_win_run_every_round() -> None:
    # a profile's trial (not raced) within the tie margin of the best may still win
    close = Candidate("trial 1", Settings(n_threads=1), 1, race=False)
    _, calls, _ = race({1: 1.025, 2: 1.0, 8: 1.21}, [close, two()[1]])
    assert calls == {1: 3, 2: 3, 8: 3}
    _, calls, _ = race({1: 1.025, 2: 1.0, 8: 1.21}, [two()[1]])
    assert calls == {2: 3, 8: 1}  # 21% slower than trial 2 alone: they rest
    # one far behind cannot: the defaults are compared with trial 2 alone, and rest
    slow = Candidate("trial 1", Settings(n_threads=1), 1, race=False)
    _, calls, _ = race({1: 2.6, 2: 1.0, 8: 3.0}, [slow, two()[1]])
    assert calls == {1: 3, 2: 3, 8: 1}


def test_the_defaults_may_lead_but_are_never_dropped() -> None:
    outcome, calls, _ = race({1: 1.5, 2: 1.4, 8: 1.0}, two())
    assert calls == {1: 1, 2: 1, 8: 3}
    assert outcome.winner.label == BASELINE
    assert "clearly slower than guide defaults" in outcome.confirmation.candidate("trial 2").dropped
