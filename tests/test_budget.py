"""`--budget`: the plan's arithmetic (a clock of its own, no measuring), confirmation's added
rounds and the stopped defaults' lower bound, and real short studies that keep to a budget
or say up front that it cannot buy a confirmed winner."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from test_confirm import racing_measure

from autotune.errors import AutotuneError
from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.records import RequestRecord, Status, TrialResult
from autotune.measure.scoring import Weights
from autotune.measure.settings import Settings
from autotune.search.budget import BASELINE_CAP, JUDGE_AFTER, Budget, parse_duration
from autotune.search.confirm import BASELINE, Candidate, confirm

Run = Callable[..., subprocess.CompletedProcess[str]]
DEFAULTS = Settings(**GUIDE_DEFAULTS)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ran(wall_s: float, done: int = 16, latency_s: float = 0.5) -> TrialResult:
    result = TrialResult(status=Status.OK if done == 16 else Status.TIMED_OUT, wall_s=wall_s)
    result.requests.extend(RequestRecord(index=i, id=str(i), latency_s=latency_s, rss_bytes=0)
                           for i in range(done))
    return result


def budget_after(seconds: float, costs: dict[int, float], elapsed: float = 0.0) -> Budget:
    """A budget whose configurations `n_threads=N` each ran once, whole, in costs[N] s."""
    clock = Clock()
    budget = Budget(seconds, clock=clock)
    for threads, wall in costs.items():
        budget.observe(Settings(n_threads=threads), ran(wall), 16)
    clock.now += elapsed
    return budget


@pytest.mark.parametrize(("text", "seconds"), [("45s", 45), ("10m", 600), ("1h", 3600),
                                                ("1h30m", 5400), ("90", 90), ("2.5m", 150)])
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "0s", "-5m", "5 minutes", "1h-30m"])
def test_a_bad_duration_is_refused(text: str) -> None:
    with pytest.raises(AutotuneError, match="--budget"):
        parse_duration(text)


def test_a_bad_budget_is_one_line_and_exit_2(model_path: Path, tmp_path: Path,
                                              run_cli: Run) -> None:
    done = run_cli(str(model_path), "--budget", "10x", "--studies-dir", str(tmp_path / "s"),
                   cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--budget '10x'" in done.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "jarvis.env").exists()


def test_a_run_that_did_not_finish_counts_its_missing_requests_at_its_own_mean() -> None:
    budget = Budget(600, clock=Clock())
    budget.observe(Settings(n_threads=1), ran(6.0, done=4, latency_s=1.0), 16)
    assert budget.runs.run_s(Settings(n_threads=1)) == 6.0 + 12 * 1.0


def test_the_search_goes_on_only_while_the_planned_confirmation_still_fits() -> None:
    # typical run 10 s; the defaults ran in 11 s, within the margin: they are planned for
    # every round, 3 finalists x 2 rounds = 2 * (30 + 11)
    costs = {1: 10.0, 2: 10.0, 8: 11.0}
    assert budget_after(82 + 10 + 2 + 1, costs).search_may_go_on(3, 2)
    assert not budget_after(82 + 10 + 2 - 1, costs).search_may_go_on(3, 2)
    assert budget_after(100, costs, elapsed=0).search_may_go_on(1, 1)


def test_clearly_slower_defaults_are_planned_for_one_round() -> None:
    # the defaults ran in 20 s, twice the typical run: racing rests them after round 1
    costs = {1: 10.0, 2: 10.0, 8: 20.0}
    assert budget_after(1000, costs).defaults_s(2) == 20.0
    assert budget_after(1000, {1: 10.0, 8: 11.0}).defaults_s(2) == 2 * 11.0
    # not run yet: every round near the typical run, or one round at the cap
    assert budget_after(1000, {1: 10.0}).defaults_s(2) == BASELINE_CAP * 10.0
    assert budget_after(1000, {1: 10.0}).defaults_s(3) == pytest.approx(3 * 1.2 * 10.0)
    assert budget_after(60 + 20 + 10 + 2 + 1, costs).search_may_go_on(3, 2)
    assert not budget_after(60 + 20 + 10 + 2 - 1, costs).search_may_go_on(3, 2)


def test_the_defaults_are_planned_at_their_cap_until_they_have_run() -> None:
    budget = budget_after(1000, {1: 10.0})
    assert budget.baseline_s() == BASELINE_CAP * 10.0
    budget.observe(DEFAULTS, ran(100.0), 16)  # far slower than the cap: stopped at it
    assert budget.runs.typical_s() == 10.0  # the defaults are not a typical run
    assert budget.baseline_s() == BASELINE_CAP * 10.0


def test_the_confirmation_gives_up_profiles_then_finalists_then_rounds() -> None:
    finals = [Settings(n_threads=n) for n in (1, 2, 3)]
    profiles = [Settings(n_threads=4)]
    costs = {1: 10.0, 2: 10.0, 3: 10.0, 4: 10.0, 8: 10.0}

    def plan(seconds: float):
        return budget_after(seconds + 2, costs).fit_confirmation(finals, profiles, 2)

    assert (plan(100).finalists, plan(100).rounds, plan(100).profiles) == (3, 2, True)
    assert (plan(80).finalists, plan(80).rounds, plan(80).profiles) == (3, 2, False)
    assert "profiles" in plan(80).gave_up[0]
    assert (plan(60).finalists, plan(60).rounds) == (2, 2)
    assert (plan(30).finalists, plan(30).rounds) == (2, 1)
    assert (plan(5).finalists, plan(5).rounds) == (1, 1)
    assert plan(5).gave_up[1:] == ("2 of 3 finalists", "1 of 2 confirmation rounds")


def test_the_first_trial_judges_the_budget_after_its_first_requests() -> None:
    budget = Budget(60, clock=Clock())
    early = [5.0] * (JUDGE_AFTER - 1)
    assert budget.first_requests(20.0, early, 16)  # too early to tell
    # 4 requests at 5 s after 25 s: the trial takes 85 s, the smallest answer 3 of them
    assert not budget.first_requests(25.0, [5.0] * JUDGE_AFTER, 16)
    assert "cannot confirm a winner" in budget.too_small
    assert "16 requests at about 5.00 s" in budget.too_small
    roomy = Budget(3600, clock=Clock())
    assert roomy.first_requests(25.0, [5.0] * JUDGE_AFTER, 16) and not roomy.too_small


def tied() -> list[Candidate]:
    return [Candidate("trial 1", Settings(n_threads=1), 1),
            Candidate("trial 2", Settings(n_threads=2), 2)]


def test_near_tied_finalists_get_rounds_while_they_fit() -> None:
    # 2.5% apart: inside the tie margin, so racing drops neither, but not shown within it
    measure, calls = racing_measure({1: 1.0, 2: 1.025, 8: 1.1})
    allowed = iter([True, True, False])
    outcome = confirm([*tied(), Candidate(BASELINE, Settings(n_threads=8))], measure, 2,
                      Weights(), seed=0, more_rounds=lambda active: next(allowed),
                      extra_rounds=4)
    assert outcome.added_rounds == 2 and Counter(calls) == {1: 4, 2: 4, 8: 4}
    assert outcome.unseparated.startswith("trial 1, trial 2 could not be separated in 4 rounds")


def test_finalists_shown_tied_get_no_added_round() -> None:
    measure, calls = racing_measure({1: 1.0, 2: 1.0, 8: 1.1})
    outcome = confirm([*tied(), Candidate(BASELINE, Settings(n_threads=8))], measure, 2,
                      Weights(), seed=0, more_rounds=lambda active: True, extra_rounds=4)
    assert outcome.added_rounds == 0 and Counter(calls) == {1: 2, 2: 2, 8: 2}
    assert outcome.unseparated.startswith("trial 1, trial 2 are tied: their mean latencies "
                                          "are within 3% of one another")


def test_separated_finalists_get_no_added_round() -> None:
    measure, _ = racing_measure({1: 1.5, 2: 1.0, 8: 3.0})
    outcome = confirm([*tied(), Candidate(BASELINE, Settings(n_threads=8))], measure, 2,
                      Weights(), seed=0, more_rounds=lambda active: True, extra_rounds=4)
    assert outcome.added_rounds == 0 and not outcome.unseparated
    assert outcome.confirmation.candidate("trial 1").dropped


def test_stopped_defaults_bound_the_improvement_from_below() -> None:
    measure, _ = racing_measure({1: 1.0, 8: 3.0})

    def stopped(candidate: Candidate) -> TrialResult:
        result = measure(candidate)
        if candidate.label == BASELINE:  # the cap stopped them after 5 of 16 requests
            del result.requests[5:]
            result.status, result.reason = Status.TIMED_OUT, "trial ran past its limit"
        return result

    outcome = confirm([Candidate("trial 1", Settings(n_threads=1), 1),
                       Candidate(BASELINE, Settings(n_threads=8))], stopped, 2, Weights(),
                      seed=0)
    found = outcome.improvement
    assert outcome.winner.label == "trial 1" and found is not None and found.at_least
    assert (found.stopped_after, found.of_requests, found.rounds) == (5, 16, 2)
    whole = 3.0 / 1.0  # what the defaults would have shown, run to their end
    assert 0.2 * whole < found.speedup < whole
    assert found.describe().startswith(f"at least {found.speedup:.2f}x lower mean latency: "
                                       "the guide's defaults were stopped at the limit after "
                                       "5 of 16 requests")


@pytest.mark.slow
def test_a_short_study_keeps_to_its_budget(model_path: Path, tiny_workload_file: Path,
                                           tmp_path: Path, run_cli: Run) -> None:
    seconds = 90
    done = run_cli(str(model_path), "--budget", f"{seconds}s", "--workload",
                   str(tiny_workload_file), "--studies-dir", str(tmp_path / "s"),
                   "--tokens", "4", "--seed", "0", "--anchor-every", "0", "--busy-limit", "0",
                   "--json",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["budget_s"] == seconds and report["wall_s"] <= seconds * 1.1
    assert report["improvement"] is not None and report["winner"]["score_s"] is not None
    assert (tmp_path / "jarvis.env").exists()
    assert any(note.startswith("budget 1m30s, used") for note in report["notes"])


@pytest.mark.slow
def test_a_budget_too_small_says_so_before_it_is_spent(model_path: Path, tmp_path: Path,
                                                        run_cli: Run) -> None:
    done = run_cli(str(model_path), "--budget", "3s", "--studies-dir", str(tmp_path / "s"),
                   "--busy-limit", "0", cwd=tmp_path)
    assert done.returncode == 1
    assert "a budget of 3s cannot confirm a winner for this model on this machine" in done.stderr
    assert "nothing written" in done.stderr and not (tmp_path / "jarvis.env").exists()
