"""Goals of a study: objectives, targets and memory budgets, parsed, kept and enforced."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import QUICK_STUDY, keep_study_record

from autotune.errors import AutotuneError
from autotune.guide import DEFAULTS_LABEL, GUIDE_DEFAULTS
from autotune.measure.goals import (
    Goals,
    Objective,
    Target,
    closest,
    parse_size,
    tail_certainly_worse,
)
from autotune.measure.records import Status, TrialStats
from autotune.measure.scoring import score
from autotune.measure.settings import Settings
from autotune.search.confirm import Candidate, decide
from autotune.search.study import check_same_goals
from autotune.studies.records import ConfirmRun, StudyRecord, study_attrs
from autotune.studies.storage import open_storage

Run = Callable[..., subprocess.CompletedProcess[str]]
MiB = 2**20


# --- parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("p95<=1.5s", Target("p95", "<=", 1.5)),
    ("ttft_p95<300ms", Target("ttft_p95", "<", 0.3)),
    (" mean <= 2 s ", Target("mean", "<=", 2.0)),
    ("cv<=0.4", Target("cv", "<=", 0.4)),
    ("MAX<5S", Target("max", "<", 5.0)),
])
def test_targets_parse(text: str, expected: Target) -> None:
    assert Target.parse(text) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("p95<=1.5", "give the limit's unit"),
    ("p95>=1.5s", "expected METRIC<=LIMIT"),
    ("p90<=1s", "unknown metric 'p90'"),
    ("cv<=0.4s", "cv is a ratio"),
    ("p95<=0s", "positive"),
    ("", "expected METRIC<=LIMIT"),
])
def test_bad_targets_are_one_line_naming_the_target(text: str, says: str) -> None:
    with pytest.raises(AutotuneError) as err:
        Target.parse(text)
    assert says in str(err.value) and str(err.value).startswith("target=")


@pytest.mark.parametrize(("text", "expected"), [
    ("6GiB", 6 * 2**30), ("512 MiB", 512 * MiB), ("800MB", 800_000_000), ("1.5KiB", 1536),
    ("1000", 1000), ("2gb", 2_000_000_000)])
def test_sizes_parse(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["6 GB/s", "-1GiB", "0", "lots", "6GiBs"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(AutotuneError, match="expected a positive size"):
        parse_size(text)


@pytest.mark.parametrize(("args", "says"), [
    (("--target", "p95<=1.5"), "--target 'p95<=1.5': give the limit's unit"),
    (("--target", "p99<1s", "--target", "lat<=1s"), "--target 'lat<=1s': unknown metric"),
    (("--max-memory", "6 GB/s"), "--max-memory '6 GB/s': expected a positive size"),
    (("--max-gpu-memory", "lots"), "--max-gpu-memory 'lots': expected a positive size"),
])
def test_the_cli_refuses_bad_goals_in_one_line(args: tuple[str, ...], says: str,
                                               small_gguf: Path, empty_cwd: Path,
                                               run_cli: Run) -> None:
    done = run_cli(str(small_gguf), *args, cwd=empty_cwd)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert not list(empty_cwd.iterdir())


# --- what goals make of a trial ----------------------------------------------------------

def test_a_trial_gets_one_constraint_per_limit_and_says_what_it_missed() -> None:
    goals = Goals(targets=(Target.parse("p95<=1s"), Target.parse("cv<0.5")),
                  max_memory_bytes=300 * MiB, max_gpu_memory_bytes=2**30)
    stats = TrialStats(p95_s=1.25, cv=0.5, peak_rss_bytes=250 * MiB)
    constraints = goals.constraints(stats)
    assert constraints["target:p95"] == pytest.approx(0.25)
    assert constraints["target:cv"] > 0  # a strict limit reached exactly is missed
    assert constraints["target:memory"] == -50 * MiB
    assert constraints["target:gpu_memory"] == 0.0  # not measured: no GPU
    assert goals.missed(stats) == ("p95 1.250 s (0.250 s over p95<=1s)",
                                   "cv 0.5 (1.11e-16 over cv<0.5)")
    assert goals.describe() == ("objective: score (mean latency + spike and consistency "
                                "penalties); targets: p95<=1s, cv<0.5, peak memory<=300 MiB, "
                                "GPU memory<=1 GiB")
    assert goals.notes(gpu_offload=False) and not goals.notes(gpu_offload=True)


def test_objectives_read_their_quantity() -> None:
    stats = TrialStats(mean_s=1.0, p95_s=2.0, p99_s=3.0, ttft_mean_s=0.2)
    parts = score([1.0, 1.0])
    assert [o.of(stats, parts) for o in Objective] == [1.0, 2.0, 3.0, 0.2, 1.0]


def test_the_closest_candidate_is_named_with_its_margin() -> None:
    goals = Goals(targets=(Target.parse("p95<=0.3s"),))
    measured = [("trial 2", TrialStats(p95_s=0.9)), ("trial 4", TrialStats(p95_s=0.41))]
    assert closest(goals, measured) == ("no trial met p95<=0.3s: closest was trial 4, p95 "
                                        "0.410 s (0.110 s over p95<=0.3s)")
    assert "no trial finished" in closest(goals, [])


@pytest.mark.parametrize(("seen", "total", "q", "best", "worse"), [
    ([2.0], 4, 95, 1.0, True),  # p95 of 4 leans on the slowest: 0.85 x 2.0 > 1.0
    ([1.1], 4, 95, 1.0, False),  # 0.85 x 1.1 = 0.935: the rest could still be fast
    ([0.1, 0.1, 1.2, 1.2], 20, 95, 1.0, True),  # two of 20 over: 1.2 + 0.05 x 0
    ([0.1, 0.1, 1.2], 20, 95, 1.0, False),  # one of 20 over: 0.05 x 1.2
    ([0.1, 0.1, 1.2], 20, 99, 0.5, True),  # p99 of 20: 0.81 x 1.2 > 0.5
    ([9.0] * 5, 5, 95, 9.0, False),  # as slow as the best is not worse
    ([], 4, 95, 1.0, False),
])
def test_a_tail_is_pruned_only_when_it_must_exceed_the_best(
        seen: list[float], total: int, q: float, best: float, worse: bool) -> None:
    assert tail_certainly_worse(seen, total, q, best) is worse


def run(label: str, round_no: int, latencies: list[float], rss: int) -> ConfirmRun:
    stats = TrialStats(mean_s=sum(latencies) / len(latencies), p95_s=max(latencies),
                       peak_rss_bytes=rss)
    return ConfirmRun(round=round_no, label=label, status=Status.OK, reason="",
                      trial_number=None, settings=Settings(), stats=stats, score=score(latencies),
                      latencies=dict(enumerate(latencies)))


def test_confirmation_picks_by_the_objective_among_those_that_meet_the_limits() -> None:
    candidates = [Candidate("trial 1", Settings(n_threads=1)),
                  Candidate("trial 2", Settings(n_threads=2)),
                  Candidate(DEFAULTS_LABEL, Settings(**GUIDE_DEFAULTS))]
    runs = [run("trial 1", r, [0.5, 0.5, 2.0], 200 * MiB) for r in (0, 1)]
    runs += [run("trial 2", r, [0.9, 0.9, 0.9], 200 * MiB) for r in (0, 1)]
    runs += [run(DEFAULTS_LABEL, r, [0.4, 0.4, 0.4], 330 * MiB) for r in (0, 1)]
    # by the score the defaults win; by p95 within 300 MiB, trial 2
    assert decide(candidates, runs).winner.label == DEFAULTS_LABEL
    goals = Goals(Objective.P95, max_memory_bytes=300 * MiB)
    outcome = decide(candidates, runs, goals=goals)
    assert (outcome.winner.label, outcome.winner.median_objective) == ("trial 2", 0.9)
    defaults = outcome.confirmation.candidate(DEFAULTS_LABEL)
    assert defaults.missed == ("peak memory 330 MiB (30 MiB over peak memory<=300 MiB)",)
    assert outcome.improvement is not None  # still the ratio of mean latencies
    strict = Goals(Objective.P95, targets=(Target.parse("p95<0.5s"),))
    assert decide(candidates, runs, goals=strict).winner.label == DEFAULTS_LABEL
    none = Goals(targets=(Target.parse("p95<=0.1s"),))
    assert decide(candidates, runs, goals=none).winner is None


# --- goals kept with a study -----------------------------------------------------------

def test_a_study_keeps_its_goals_and_older_studies_read_without(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=open_storage(tmp_path))
    goals = Goals(Objective.P99, (Target.parse("ttft_p95<250ms"),), 6 * 2**30, None)
    keep_study_record(study, **study_attrs(goals=goals))
    assert StudyRecord.read(study).goals == goals
    old = optuna.create_study(study_name="old", storage=open_storage(tmp_path))
    keep_study_record(old, drop=("goals",), schema=2)
    assert StudyRecord.read(old).goals is None


def test_resuming_with_other_goals_is_refused() -> None:
    check_same_goals("s", Goals(), Goals())
    with pytest.raises(AutotuneError) as err:
        check_same_goals("s", Goals(), Goals(Objective.P95))
    assert str(err.value) == ("study 's' was tuned for objective: score (mean latency + spike "
                              "and consistency penalties), not objective: p95 latency; pass "
                              "study_name to start a new study for these goals")


# --- real studies ----------------------------------------------------------------------

TAIL_TOKENS = "16"  # tokens a request in the tail test: 8 threads' contention shows


def tune(run_cli: Run, model: Path, workload: Path, folder: Path, *extra: str
         ) -> subprocess.CompletedProcess[str]:
    return run_cli(str(model), "--studies-dir", str(folder / "studies"), "--workload",
                   str(workload), "--out", str(folder / "jarvis.env"), *QUICK_STUDY,
                   "--json", *extra, cwd=folder, env={"AUTOTUNE_HOST": "goals-test"})


def bench_p95(run_cli: Run, model: Path, workload: Path, folder: Path, threads: int) -> float:
    done = run_cli("bench", str(model), "--workload", str(workload), "--tokens", TAIL_TOKENS,
                   "--json", cwd=folder, env={"JARVIS_N_THREADS": str(threads)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["stats"]["p95_s"]


def study_of(folder: Path) -> optuna.Study:
    storage = open_storage(folder / "studies")
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


@pytest.mark.slow
def test_a_p95_target_that_rules_out_the_defaults_is_met_by_the_winner(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path, run_cli: Run) -> None:
    # 8 threads on a 2-core machine are slower than 1, quiet (the threads contend) or busy
    # (other processes hold a core, and 2 threads wait on each other): at 16 tokens a
    # request, 2.6x at the p95 on a quiet machine. Measured here first.
    defaults = bench_p95(run_cli, model_path, tiny_workload_file, tmp_path, 8)
    one = bench_p95(run_cli, model_path, tiny_workload_file, tmp_path, 1)
    assert defaults > 1.5 * one, f"8 threads p95 {defaults:.2f} s, 1 thread {one:.2f} s"
    limit = (defaults * one) ** 0.5
    target = f"p95<={limit:.3f}s"
    done = tune(run_cli, model_path, tiny_workload_file, tmp_path, "--trials", "3",
                "--tokens", TAIL_TOKENS,
                "--fix", "n_threads=1", "--objective", "p95", "--target", target,
                "--study-name", "tail")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # the report names the target as the product writes it (0.490 s reads `0.49s`)
    assert (summary["objective"], summary["targets"]) == (
        "p95", [Target.parse(target).describe()])
    winner = summary["winner"]
    assert winner["missed"] == [] and winner["objective_value"] <= limit
    assert winner["label"] != DEFAULTS_LABEL or not summary["baseline"]["missed"]
    header = (tmp_path / "jarvis.env").read_text()
    assert f"# objective: p95 latency; targets: {Target.parse(target).describe()}\n" in header
    # the study's values are p95s; resuming it for another objective is refused
    again = tune(run_cli, model_path, tiny_workload_file, tmp_path, "--trials", "1",
                 "--tokens", TAIL_TOKENS,
                 "--fix", "n_threads=1", "--objective", "mean", "--study-name", "tail",
                 "--force")
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "pass --study-name" in again.stderr


@pytest.mark.slow
def test_a_memory_budget_below_the_defaults_peak_keeps_every_feasible_trial_under_it(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path, run_cli: Run) -> None:
    # measured on the demo model: 4096 tokens of context (the defaults) peak at ~327 MiB,
    # 1024 at ~260 MiB, 512 at ~221 MiB; seed 1 on host goals-test samples 1024 third
    budget = 290 * MiB
    done = tune(run_cli, model_path, tiny_workload_file, tmp_path, "--trials", "3",
                "--fix", "n_threads=2", "--max-memory", "290MiB", "--seed", "1",
                "--min-context", "512")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["targets"] == ["peak memory<=290 MiB"]
    assert summary["winner"]["stats"]["peak_rss_bytes"] <= budget
    assert summary["baseline"]["stats"]["peak_rss_bytes"] > budget
    assert summary["baseline"]["missed"]
    trials = study_of(tmp_path).get_trials()
    feasible = [t for t in trials if all(v <= 0 for v in t.constraints.values())]
    assert feasible and all(t.user_attrs["stats"]["peak_rss_bytes"] <= budget
                            for t in feasible)
    missed = [t for t in trials if t.constraints.get("target:memory", 0) > 0]
    assert missed and all("missed peak memory" in t.user_attrs["infeasible"] for t in missed)


@pytest.mark.slow
def test_an_impossible_target_names_the_closest_trial_and_writes_nothing(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path, run_cli: Run) -> None:
    done = tune(run_cli, model_path, tiny_workload_file, tmp_path, "--trials", "2",
                "--target", "p95<=1ms")
    assert done.returncode == 1
    error = done.stderr.splitlines()[-1]  # after a line per trial
    assert error.startswith("autotune: error: study 'SmolLM2"), done.stderr
    assert "no trial met p95<=0.001s: closest was trial " in error
    assert "s over p95<=0.001s); nothing confirmed, nothing written" in error
    assert not (tmp_path / "jarvis.env").exists()
