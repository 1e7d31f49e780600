"""What each tuned setting bought, and a diagnosis checked against a study: the pairing of
trials on hand-made studies (pure logic), the context cache's cost on hand-made requests."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import QUICK_STUDY, keep_study_record, make_hardware

from autotune.cli import cli
from autotune.guide import GUIDE_DEFAULTS
from autotune.measure import diagnosis
from autotune.measure.records import (
    Alternative,
    RequestRecord,
    Status,
    StudyEvidence,
    TrialStats,
)
from autotune.measure.settings import CORE_FIELDS, Settings
from autotune.studies import explain
from autotune.studies.records import Winner, keep, study_attrs, trial_attrs
from autotune.studies.storage import open_storage

DEFAULTS = dict(GUIDE_DEFAULTS)


def study_of(*trials: tuple[dict, float | None], winner: int | None = None,
             storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """A study (in memory, else in `storage`) whose trials ran `settings` (changes to the
    guide's defaults) with that mean latency (None: a trial that crashed), and `winner` its
    confirmed winner."""
    study = optuna.create_study(study_name="hand-made", storage=storage)
    keep_study_record(study, tuned_fields=list(CORE_FIELDS))
    for changes, mean in trials:
        settings = {**DEFAULTS, **changes}
        status = Status.OK if mean is not None else Status.CRASHED
        attrs = trial_attrs(status=status, settings=settings,
                            stats=TrialStats(mean_s=mean) if mean is not None else None)
        study.add_trial(optuna.trial.create_trial(
            value=mean if mean is not None else 600.0, user_attrs=attrs))
    if winner is not None:
        settings = {**DEFAULTS, **trials[winner][0]}
        keep(study.set_user_attr, study_attrs(winner=Winner(
            label=f"trial {winner}", trial_number=winner, settings=Settings.from_dict(settings),
            score_s=trials[winner][1] or 0.0, mean_s=trials[winner][1] or 0.0,
            improvement=None)))
    return study


def test_a_changed_setting_is_paired_with_the_otherwise_alike_trial() -> None:
    study = study_of(({}, 3.0),                                        # 0: the defaults
                     ({"n_threads": 2, "context_window": 1024}, 1.9),  # 1
                     ({"n_threads": 2}, 2.09),                         # 2
                     ({"n_threads": 8, "context_window": 1024}, 2.9),  # 3
                     winner=1)
    lines = explain.explanation(study)
    assert lines == (
        "context_window 1024 instead of 4096: 0.19 s less per request (trial 1 against "
        "trial 2, otherwise alike)",
        "n_threads 2 instead of 8: 1.00 s less per request (trial 1 against trial 3, "
        "otherwise alike)")


def test_the_pair_names_what_else_differed_and_a_value_never_measured() -> None:
    study = study_of(({}, 3.0),                                                 # 0
                     ({"n_threads": 2, "enable_context_cache": False}, 1.5),    # 1 winner
                     ({"n_threads": 3, "max_cache_size": 10}, 1.4),             # 2
                     winner=1)
    found = {b.field: b for b in explain.bought(study)}
    threads = found["n_threads"].comparison
    assert threads is not None and (threads.trial, threads.against) == (0, 1)
    assert threads.others == ("enable_context_cache",)
    assert found["n_threads"].describe() == (
        "n_threads 2 instead of 8: 1.50 s less per request (trial 1 against trial 0, also "
        "differing in enable_context_cache)")
    # the cache on: trial 0 (8 threads) and trial 2 are as alike to the winner, which ran
    # without the cache, so its size does not count; the earlier is taken
    cache = found["enable_context_cache"]
    assert cache.describe() == (
        "enable_context_cache false instead of true: 1.50 s less per request (trial 1 "
        "against trial 0, also differing in n_threads)")
    assert set(found) == {"n_threads", "enable_context_cache"}


def test_not_measured_when_no_finished_trial_ran_the_defaults_value() -> None:
    study = study_of(({"n_threads": 2}, 2.0),                           # 0 winner
                     ({"n_threads": 8, "context_window": 1024}, None),  # 1 crashed
                     ({"n_threads": 4}, 2.5), winner=0)
    (line,) = explain.explanation(study)
    assert line == "n_threads 2 instead of 8: not measured (no finished trial ran 8)"


def test_no_explanation_without_a_winner_or_when_the_defaults_won() -> None:
    assert explain.explanation(study_of(({}, 3.0), ({"n_threads": 2}, 2.0))) == ()
    assert explain.explanation(study_of(({}, 3.0), ({"n_threads": 2}, 2.0), winner=0)) == ()


def test_evidence_compares_each_other_value_with_the_nearest_trial_like_the_settings() -> None:
    study = study_of(({}, 3.0),                                                  # 0
                     ({"n_threads": 2, "enable_context_cache": False}, 1.5),     # 1
                     ({"n_threads": 2}, 1.8),                                    # 2
                     ({"n_threads": 2, "max_cache_size": 10}, 1.7))              # 3
    settings = Settings.from_dict({**DEFAULTS, "n_threads": 2, "enable_context_cache": False})
    evidence = explain.evidence_for(study, settings)
    assert evidence.study == "hand-made"
    cache_on = evidence.best("enable_context_cache", lambda v: v is True)
    assert cache_on == Alternative("enable_context_cache", True, pytest.approx(0.3), 2, 1)
    threads = evidence.best("n_threads", lambda v: v == 8)
    assert threads is not None and threads.delta_s == pytest.approx(1.5)
    assert (threads.trial, threads.against, threads.others) == (0, 1, ("enable_context_cache",))


def test_the_module_example_runs() -> None:
    study = study_of(({"context_window": 1024}, 3.0),
                     ({"context_window": 1024, "n_threads": 4}, 2.4),
                     ({"context_window": 1024, "n_threads": 2}, 2.09), winner=2)
    result = doctest.testmod(explain, globs={**vars(explain), "study": study},
                             raise_on_error=False, report=True)
    assert result.attempted > 0 and result.failed == 0


# --- the context cache's cost ------------------------------------------------------------

def request(prompt: int, reused: int, ttft: float, cache: float,
            source: str = "none", restored: int = 0) -> RequestRecord:
    return RequestRecord(id="r", index=0, latency_s=ttft + 0.1, rss_bytes=0,
                         prompt_tokens=prompt, reused_tokens=reused, ttft_s=ttft,
                         cache_s=cache, reuse_source=source if reused else "none",
                         restored_tokens=restored)


# a prompt token costs 1 ms afresh; the follow-ups restore 150 tokens each from the cache,
# of which the live context held 50 already
COSTLY = (request(200, 0, 0.2, 0.15), request(300, 0, 0.3, 0.15),
          request(250, 150, 0.16, 0.3, "cache", 100), request(260, 150, 0.17, 0.3, "cache", 100))


def test_cache_cost_weighs_save_and_restore_against_prompt_evaluation() -> None:
    cost = diagnosis.cache_cost(COSTLY)
    assert cost is not None
    assert cost.per_token_s == pytest.approx(0.001)
    assert cost.restored_tokens == 200 and cost.saved_s == pytest.approx(0.2)
    assert cost.cache_s == pytest.approx(0.9) and cost.costs_more


def test_live_reuse_is_no_saving_of_the_cache_and_no_cache_no_cost() -> None:
    live = (request(200, 0, 0.2, 0.0), request(250, 100, 0.16, 0.0, "live"))
    assert diagnosis.cache_cost(live) is None
    cheap = (request(200, 0, 0.2, 0.001), request(250, 150, 0.06, 0.002, "cache", 150))
    cost = diagnosis.cache_cost(cheap)
    assert cost is not None and not cost.costs_more


def diagnose(settings: Settings, requests=COSTLY, hit: float | None = 1.0,
             evidence: StudyEvidence | None = None):
    return diagnosis.diagnose(TrialStats(mean_s=1.0, cache_hit_rate=hit), Status.OK, None,
                              settings, make_hardware(), requests, evidence)


def test_a_cache_that_costs_more_than_it_saves_is_a_finding_with_both_numbers() -> None:
    (found,) = diagnose(Settings(n_threads=2))
    assert found.cause == diagnosis.CACHE_COST
    assert found.evidence.startswith("the context cache cost 0.90 s to save and restore and "
                                     "saved about 0.20 s of prompt evaluation")
    assert found.fix == "export JARVIS_ENABLE_CONTEXT_CACHE=false" and not found.tentative


def test_a_bigger_cache_is_only_something_to_measure_when_the_cache_costs_more() -> None:
    misses, cost = diagnose(Settings(n_threads=2, max_cache_size=4), hit=0.5)
    assert (misses.cause, cost.cause) == ("cache_misses", diagnosis.CACHE_COST)
    assert misses.tentative and "costs more than it saves" in misses.fix
    assert not misses.fix.startswith("raise")
    (cheap_misses,) = diagnose(Settings(n_threads=2, max_cache_size=4), (), hit=0.5)
    assert cheap_misses.fix == "raise JARVIS_MAX_CACHE_SIZE above 4"


def test_without_a_study_turning_the_cache_on_is_something_to_measure() -> None:
    (found,) = diagnose(Settings(n_threads=2, enable_context_cache=False), (), hit=0.0)
    assert found.cause == "cache_misses" and found.tentative
    assert "autotune bench" in found.fix and not found.fix.startswith("export")


def test_a_fix_the_study_measured_slower_is_not_recommended() -> None:
    slower = StudyEvidence("s", (Alternative("enable_context_cache", True, 0.3, 5, 2),))
    (found,) = diagnose(Settings(n_threads=2, enable_context_cache=False), (), hit=0.0,
                        evidence=slower)
    assert found.fix == "" and not found.tentative
    assert found.measured == ("study s measured enable_context_cache=true 0.30 s slower per "
                              "request (trial 5 against trial 2, otherwise alike); not "
                              "recommended")


def test_a_fix_the_study_measured_faster_stands_with_its_measurement() -> None:
    faster = StudyEvidence("s", (Alternative("enable_context_cache", True, -0.2, 5, 2, ("x",)),
                                 Alternative("enable_context_cache", True, 0.1, 6, 2),
                                 Alternative("n_threads", 8, -1.0, 7, 2)))
    (found,) = diagnose(Settings(n_threads=2, enable_context_cache=False), (), hit=0.0,
                        evidence=faster)
    assert found.fix == "export JARVIS_ENABLE_CONTEXT_CACHE=true" and not found.tentative
    assert "0.20 s faster" in found.measured and "trial 5" in found.measured


def test_turning_a_costly_cache_off_is_checked_against_the_study_too() -> None:
    off_slower = StudyEvidence("s", (Alternative("enable_context_cache", False, 0.4, 3, 1),))
    (found,) = diagnose(Settings(n_threads=2), evidence=off_slower)
    assert found.cause == diagnosis.CACHE_COST and found.fix == ""
    assert "not recommended" in found.measured


# --- the commands ------------------------------------------------------------------------

def test_show_says_what_each_setting_bought(tmp_path: Path) -> None:
    folder = tmp_path / "studies"
    study_of(({}, 3.0), ({"n_threads": 2}, 2.09), winner=1,
             storage=open_storage(folder))
    done = CliRunner().invoke(cli, ["show", "hand-made", "--studies-dir", str(folder)])
    assert done.exit_code == 0, done.output
    assert ("n_threads 2 instead of 8: 0.91 s less per request (trial 1 against trial 0, "
            "otherwise alike)") in done.output
    done = CliRunner().invoke(cli, ["show", "hand-made", "--studies-dir", str(folder),
                                    "--json"])
    assert json.loads(done.output)["explanation"] == [
        "n_threads 2 instead of 8: 0.91 s less per request (trial 1 against trial 0, "
        "otherwise alike)"]


def test_bench_refuses_an_unknown_study_before_measuring(tmp_path: Path,
                                                         small_gguf: Path) -> None:
    folder = tmp_path / "studies"
    study_of(({}, 3.0), storage=open_storage(folder))
    done = CliRunner().invoke(cli, ["bench", str(small_gguf), "--study", "nope",
                                    "--studies-dir", str(folder)])
    assert done.exit_code == 2
    assert "no study named 'nope'" in done.output


@pytest.mark.slow
def test_bench_of_a_tuned_file_gives_no_advice_its_study_measured_slower(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path, run_cli) -> None:
    """A real study measures the cache off and on, otherwise alike; bench of the cache-off
    trial's export follows what the study measured, never advising the slower."""
    studies = str(tmp_path / "studies")
    common = ("--studies-dir", studies, "--study-name", "cache-study", "--workload",
              str(tiny_workload_file), "--fix", "n_threads=2", *QUICK_STUDY)
    done = run_cli(str(model_path), "--trials", "2", "--out", str(tmp_path / "first.env"),
                   *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="cache-study", storage=open_storage(studies))
    study.enqueue_trial({"context_window": 4096, "enable_context_cache": False})
    done = run_cli(str(model_path), "--trials", "1", "--out", str(tmp_path / "second.env"),
                   *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="cache-study", storage=open_storage(studies))
    off = max(t.number for t in study.trials if t.params.get("enable_context_cache") is False)
    done = run_cli("export", "cache-study", "--studies-dir", studies, "--trial", str(off),
                   "--out", str(tmp_path / "off.env"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    settings = Settings.from_dict(study.trials[off].user_attrs["settings"])
    on = explain.evidence_for(study, settings).best(
        "enable_context_cache", lambda v: v is True)
    assert on is not None and on.against == off and on.others == ()

    done = run_cli("bench", str(model_path), "--env", str(tmp_path / "off.env"),
                   "--workload", str(tiny_workload_file), "--tokens", "4",
                   "--studies-dir", studies, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["evidence_study"] == "cache-study"
    (misses,) = [f for f in report["findings"] if f["cause"] == "cache_misses"]
    advice = " ".join(f["fix"] for f in report["findings"])
    if on.delta_s > 0:
        assert "ENABLE_CONTEXT_CACHE=true" not in advice
        assert misses["fix"] == "" and misses["measured"].endswith("; not recommended")
        assert f"trial {on.trial} against trial {off}" in misses["measured"]
    else:
        assert misses["fix"] == "export JARVIS_ENABLE_CONTEXT_CACHE=true"
    print(f"cache on against off (trial {on.trial} against {off}): {on.delta_s:+.3f} s; "
          f"finding: {misses}")


def test_a_trials_statistics_keep_the_caches_cost_and_saving() -> None:
    from autotune.measure.records import TrialResult
    from autotune.measure.stats import summarize

    stats = summarize(TrialResult(status=Status.OK, requests=list(COSTLY)))
    assert stats.cache_total_s == pytest.approx(0.9)
    assert stats.cache_saved_s == pytest.approx(0.2)
    assert summarize(TrialResult(status=Status.OK)).cache_total_s is None


@pytest.mark.slow
def test_a_one_entry_cache_on_the_real_model_costs_more_than_it_saves(
        model_path: Path, tiny_workload) -> None:
    """Two conversations take turns: a one-entry cache holds the other one's context, so it
    saves and never restores (the live context already holds the shared system prompt).
    Five passes: a save of this small model's state takes a few milliseconds, and one pass's
    four may add up to less than the 0.01 s a report shows."""
    from autotune.measure.bench import bench

    report = bench(model_path, Settings(n_threads=2, max_cache_size=1), tiny_workload,
                   iterations=5, tokens_per_request=4)
    cost = report.cache_cost
    assert cost is not None and cost.restored_tokens == 0 and cost.costs_more
    assert report.stats.cache_total_s == pytest.approx(cost.cache_s)
    (found,) = [f for f in report.findings if f.cause == diagnosis.CACHE_COST]
    assert found.evidence.startswith(f"the context cache cost {cost.cache_s:.2f} s to save and "
                                     "restore and saved about 0.00 s of prompt evaluation")
    print(found.evidence)


def test_a_setting_the_space_fixed_is_no_choice_to_explain() -> None:
    from autotune.studies.records import SpaceSummary

    study = study_of(({"n_gpu_layers": 0}, 3.0), ({"n_gpu_layers": 0, "n_threads": 2}, 2.0),
                     winner=1)
    keep(study.set_user_attr, study_attrs(space=SpaceSummary(
        n_threads=(1, 4), context_window=(1024, 4096), n_gpu_layers=None,
        max_cache_size=(1, 100), fixed={"n_gpu_layers": 0})))
    assert explain.explanation(study) == (
        "n_threads 2 instead of 8: 1.00 s less per request (trial 1 against trial 0, "
        "otherwise alike)",)


def test_a_trial_without_the_cache_has_no_cache_cost() -> None:
    from autotune.measure.records import TrialResult
    from autotune.measure.stats import summarize

    tiny_timings = [request(200, 0, 0.2, 0.000001), request(250, 100, 0.1, 0.000001, "live")]
    stats = summarize(TrialResult(status=Status.OK, requests=tiny_timings,
                                  settings=Settings(enable_context_cache=False)))
    assert stats.cache_total_s is None and stats.cache_saved_s is None
