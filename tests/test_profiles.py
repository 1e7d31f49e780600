"""Profiles: the latency-memory front of a study, its fast/balanced/lean picks, their export."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import QUICK_STUDY

from autotune.measure.records import Status, TrialStats
from autotune.measure.scoring import score
from autotune.measure.settings import Settings
from autotune.studies import profiles
from autotune.studies.profiles import Point, choose, front, kept_profiles
from autotune.studies.records import CandidateResult, Confirmation, ConfirmRun

Run = Callable[..., subprocess.CompletedProcess[str]]
MIB = 2**20


def settings(context: int, threads: int = 2) -> Settings:
    return Settings(context_window=context, n_threads=threads, n_gpu_layers=0)


def test_the_front_keeps_only_points_no_other_beats_on_both() -> None:
    points = [Point(0, 1.0, 400), Point(1, 1.0, 500), Point(2, 0.9, 600), Point(3, 2.0, 600),
              Point(4, 1.5, 100)]
    assert [p.trial_number for p in front(points)] == [2, 0, 4]
    assert front([]) == []


def test_one_point_is_every_profile() -> None:
    only = Point(7, 1.0, 300)
    assert choose([only]) == {"fast": only, "balanced": only, "lean": only}
    assert choose([]) == {}


def test_a_profile_saving_under_five_percent_of_memory_is_the_fast_one() -> None:
    fast, slightly_leaner = Point(0, 1.0, 1000 * MIB), Point(1, 1.5, 960 * MIB)
    assert choose([fast, slightly_leaner]) == {"fast": fast, "balanced": fast, "lean": fast}
    leaner = Point(2, 2.0, 900 * MIB)
    assert choose([fast, slightly_leaner, leaner])["lean"] == leaner


def test_the_knee_is_the_point_nearest_the_ideal_corner() -> None:
    line = [Point(0, 1.0, 1000), Point(1, 1.05, 500), Point(2, 1.9, 450), Point(3, 3.0, 400)]
    assert choose(line)["balanced"].trial_number == 1


def test_a_pruned_trial_may_be_lean_or_balanced_but_never_fast() -> None:
    whole = Point(0, 1.0, 2000 * MIB)
    quick_guess = Point(1, 0.8, 1900 * MIB, estimated_from=5)  # looked faster, was pruned
    lean_guess = Point(2, 1.4, 300 * MIB, estimated_from=6)
    chosen = choose([whole, quick_guess, lean_guess])
    assert chosen["fast"] == whole
    assert chosen["lean"] == lean_guess
    assert choose([quick_guess]) == {}  # no whole measurement: no profile


def test_an_estimated_profile_says_so_until_confirmed() -> None:
    points = [Point(3, 0.70, 400 * MIB, settings(8192)),
              Point(6, 0.95, 200 * MIB, settings(512, threads=1), estimated_from=5)]
    winner = result("trial 3", 3, 8192, 0.72)
    confirmation = Confirmation(runs=(run("trial 3", 0, 0.71, 410 * MIB, 3),),
                                candidates=(winner,))
    lean = kept_profiles(points, confirmation, winner)["lean"]
    assert not lean.confirmed and lean.estimated_from == 5
    assert "estimated from the 5 requests its pruned trial ran" in lean.describe()


def run(label: str, round_no: int, value: float, rss: int, number: int | None) -> ConfirmRun:
    return ConfirmRun(round=round_no, label=label, status=Status.OK, reason="",
                      trial_number=number, settings=Settings(), score=score([value]),
                      stats=TrialStats(peak_rss_bytes=rss, mean_s=value))


def result(label: str, number: int | None, context: int, value: float) -> CandidateResult:
    return CandidateResult(label=label, trial_number=number, settings=settings(context),
                           runs=2, ok_runs=2, median_score_s=value, median_mean_s=value,
                           median_objective=value)


def test_kept_profiles_carry_confirmed_medians_and_mark_the_rest_unconfirmed() -> None:
    points = [Point(3, 0.70, 400 * MIB, settings(8192)), Point(5, 0.75, 300 * MIB, settings(4096)),
              Point(6, 0.95, 200 * MIB, settings(512, threads=1))]
    winner = result("trial 3", 3, 8192, 0.72)
    confirmation = Confirmation(
        runs=(run("trial 3", 0, 0.71, 410 * MIB, 3), run("trial 3", 1, 0.73, 420 * MIB, 3),
              run("trial 5", 0, 0.76, 310 * MIB, 5), run("trial 5", 1, 0.78, 300 * MIB, 5)),
        candidates=(winner, result("trial 5", 5, 4096, 0.77)))
    kept = kept_profiles(points, confirmation, winner)
    fast, balanced, lean = kept["fast"], kept["balanced"], kept["lean"]
    assert (fast.trial_number, fast.confirmed, fast.confirmed_value_s, fast.rounds) == (
        3, True, 0.72, 2)
    assert fast.confirmed_memory_bytes == 410 * MIB  # the lower median of its runs
    assert (balanced.trial_number, balanced.confirmed, balanced.shown_value_s) == (5, True, 0.77)
    assert (lean.trial_number, lean.confirmed, lean.shown_value_s) == (6, False, 0.95)
    assert "unconfirmed" in lean.describe() and "confirmed over 2 rounds" in fast.describe()


def test_a_winner_that_was_not_the_searchs_fastest_anchors_the_front() -> None:
    # the search's fastest (trial 8, 4096) lost confirmation to trial 4 (8192, a larger
    # window in a tie): trial 8 is still leaner than the winner, so it is the lean profile
    points = [Point(4, 1.07, 360 * MIB, settings(8192)), Point(8, 0.98, 270 * MIB, settings(4096))]
    winner = result("trial 4", 4, 8192, 1.02)
    confirmation = Confirmation(
        runs=(run("trial 4", 0, 1.09, 361 * MIB, 4), run("trial 8", 0, 1.11, 271 * MIB, 8)),
        candidates=(winner, result("trial 8", 8, 4096, 1.03)))
    kept = kept_profiles(points, confirmation, winner)
    assert (kept["fast"].trial_number, kept["lean"].trial_number) == (4, 8)
    assert kept["lean"].confirmed and kept["balanced"].trial_number in (4, 8)


def test_a_winner_that_is_no_search_point_is_still_the_fast_profile() -> None:
    defaults = result("guide defaults", None, 4096, 2.0)
    confirmation = Confirmation(runs=(run("guide defaults", 0, 2.0, 250 * MIB, None),),
                                candidates=(defaults,))
    kept = kept_profiles([Point(1, 2.5, 240 * MIB, settings(4096))], confirmation, defaults)
    assert kept["fast"].label == "guide defaults" and kept["fast"].memory_bytes == 250 * MIB
    assert kept["lean"] == kept["fast"].__class__(**{**kept["fast"].__dict__, "name": "lean"})


@pytest.mark.slow
def test_a_study_keeps_three_profiles_shows_its_front_and_exports_each(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path, run_cli: Run) -> None:
    studies = str(tmp_path / "studies")
    done = run_cli(str(model_path), "--trials", "4", "--studies-dir", studies, "--out",
                   str(tmp_path / "jarvis.env"), "--workload", str(tiny_workload_file),
                   *QUICK_STUDY, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    kept = {p["name"]: p for p in summary["profiles"]}
    assert list(kept) == list(profiles.PROFILES)
    assert kept["fast"]["settings"] == summary["candidates"][0]["settings"] or \
        kept["fast"]["label"] == summary["winner"]["label"]
    assert kept["fast"]["confirmed"] is True
    assert kept["lean"]["memory_bytes"] <= kept["fast"]["memory_bytes"]
    name = summary["study_name"]

    shown = run_cli("show", name, "--studies-dir", studies, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "the front" in shown.stdout and "fast" in shown.stdout

    for profile in profiles.PROFILES:
        out = run_cli("export", name, "--studies-dir", studies, "--profile", profile,
                      cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert f"# profile {profile}: " in out.stdout
        wanted = Settings.from_dict(kept[profile]["settings"])
        written = {line.split("=", 1)[0].removeprefix("export "): line.split("=", 1)[1]
                   for line in out.stdout.splitlines() if line.startswith("export JARVIS")}
        assert written["JARVIS_MODEL_CONTEXT_WINDOW"] == f"'{wanted.context_window}'"
        assert written["JARVIS_N_THREADS"] == f"'{wanted.n_threads}'"

    both = run_cli("export", name, "--studies-dir", studies, "--profile", "lean", "--trial",
                   "1", cwd=tmp_path)
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1
    assert "--trial 1 and --profile lean" in both.stderr
