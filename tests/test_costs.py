"""The split of a tuning run's wall time (arithmetic on hand-made results)."""

from __future__ import annotations

import types

import pytest

from autotune.measure.records import RequestRecord, Status, TrialResult
from autotune.search import costs as costs_module
from autotune.search.costs import Costs


def result(wall: float, loaded_after: float | None, load: float, warmup: float,
           latencies: list[float]) -> TrialResult:
    return TrialResult(status=Status.OK, wall_s=wall, loaded_after_s=loaded_after, load_s=load,
                       warmup_s=warmup, requests=[RequestRecord(id=f"r/{i}", index=i,
                                                                latency_s=x, rss_bytes=1)
                                                  for i, x in enumerate(latencies)])


def test_a_trial_splits_into_start_load_warmup_requests_and_rest() -> None:
    costs = Costs()
    costs.add_trial(result(10.0, loaded_after=1.5, load=0.5, warmup=0.5,
                           latencies=[2.0, 3.0]), waited_s=4.0)
    assert (costs.worker_start_s, costs.load_s, costs.warmup_s) == (1.0, 0.5, 0.5)
    assert costs.requests_s == 5.0 and costs.lock_wait_s == 4.0
    assert costs.trial_rest_s == pytest.approx(3.0)  # 10 - 1 - 0.5 - 0.5 - 5


def test_the_parts_add_up_to_the_wall_time() -> None:
    costs = Costs(inspection_s=1.0, setup_s=0.5)
    costs.add_trial(result(10.0, 1.5, 0.5, 0.5, [2.0, 3.0]), waited_s=0.0)
    costs.search_s = 12.0  # 2 s of sampling and storage around the trial
    parts = costs.parts()
    assert parts.outside_s == pytest.approx(2.0)
    assert costs.total_s == pytest.approx(1.0 + 0.5 + 12.0)
    # the harness's own: start 1, inspection 1, rest 3, set-up 0.5, sampler 2
    assert costs.overhead_share == pytest.approx(7.5 / 13.5)


def test_a_worker_that_never_loaded_is_all_start() -> None:
    costs = Costs()
    costs.add_trial(TrialResult(status=Status.CRASHED, wall_s=2.0), waited_s=0.0)
    assert (costs.worker_start_s, costs.requests_s, costs.trial_rest_s) == (2.0, 0.0, 0.0)


def test_timing_adds_to_a_field(monkeypatch: pytest.MonkeyPatch) -> None:
    # the clock is the test's: each timed part reads it once going in and once going out
    ticks = iter([10.0, 10.25, 20.0, 20.5, 30.0, 31.0])
    monkeypatch.setattr(costs_module, "time", types.SimpleNamespace(
        perf_counter=lambda: next(ticks)))
    costs = Costs()
    for _ in range(2):
        with costs.timing("setup_s"):
            pass
    assert costs.setup_s == 0.75 and costs.search_s == 0.0
    with pytest.raises(KeyboardInterrupt), costs.timing("search_s"):
        raise KeyboardInterrupt  # an interrupted part is counted all the same
    assert costs.search_s == 1.0


def test_a_drift_anchor_check_is_its_own_part_of_the_harness() -> None:
    costs = Costs()
    costs.add_trial(result(10.0, 1.5, 0.5, 0.5, [2.0, 3.0]), waited_s=0.0)
    costs.add_anchor(result(3.0, 1.5, 0.5, 0.5, [0.5]), waited_s=1.0)
    costs.search_s = 14.0
    parts = costs.parts()
    assert parts.anchor_s == 4.0 and costs.trials == 1
    assert parts.outside_s == pytest.approx(0.0)
    assert costs.total_s == pytest.approx(14.0)
    # start 1 + rest 3 + the anchor 4: the anchor measures nothing the study ranks
    assert costs.overhead_share == pytest.approx(8.0 / 14.0)


def test_the_before_and_after_breakdown_reads_any_study_the_same_way(tmp_path) -> None:
    import importlib.util
    from pathlib import Path

    import optuna
    from optuna.storages.journal import JournalFileBackend

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "overhead.py"
    spec = importlib.util.spec_from_file_location("overhead", script)
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    journal = tmp_path / "autotune.journal"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="s", storage=storage)
    measured = {"stats": {"load_s": 0.5, "warmup_s": 0.25}, "latencies": [1.0, 2.0]}
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs=measured))
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={
        **measured, "label": "repeat of trial 0"}))  # no worker ran: not counted
    study.set_user_attr("confirmation", {"runs": [
        {"stats": {"load_s": 0.5, "warmup_s": 0.25, "mean_s": 1.5, "requests_done": 2}},
        {"stats": {"load_s": 0.5, "warmup_s": 0.25}, "latencies": {"0": 1.0, "1": 1.0}}]})
    parts = overhead.breakdown(journal, wall=20.0)
    assert parts["worker runs"] == 3 and parts["measured requests"] == 3.0 + 3.0 + 2.0
    assert (parts["model load"], parts["warm-up"]) == (1.5, 0.75)
    assert parts["the rest"] == pytest.approx(20.0 - 8.0 - 2.25)
    assert parts["harness share"] == pytest.approx(parts["the rest"] / 20.0)


def test_the_breakdown_is_written_under_its_labels() -> None:
    from autotune.studies.records import as_json

    costs = Costs(inspection_s=1.0, setup_s=0.5, search_s=3.0)
    assert as_json(costs.parts()) == {
        "measured requests": 0.0, "worker start": 0.0, "model inspection": 1.0,
        "model load": 0.0, "warm-up": 0.0, "rest of each trial": 0.0,
        "waiting for the machine": 0.0, "storage and study set-up": 0.5, "drift anchor": 0.0,
        "sampler, storage and records": 3.0}
