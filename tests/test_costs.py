"""The split of a tuning run's wall time (arithmetic on hand-made results)."""

from __future__ import annotations

import time

import pytest

from autotune.measure.records import RequestRecord, Status, TrialResult
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
    assert parts["sampler, storage and records"] == pytest.approx(2.0)
    assert costs.total_s == pytest.approx(1.0 + 0.5 + 12.0)
    # the harness's own: start 1, inspection 1, rest 3, set-up 0.5, sampler 2
    assert costs.overhead_share == pytest.approx(7.5 / 13.5)


def test_a_worker_that_never_loaded_is_all_start() -> None:
    costs = Costs()
    costs.add_trial(TrialResult(status=Status.CRASHED, wall_s=2.0), waited_s=0.0)
    assert (costs.worker_start_s, costs.requests_s, costs.trial_rest_s) == (2.0, 0.0, 0.0)


def test_timing_adds_to_a_field() -> None:
    costs = Costs()
    for _ in range(2):
        with costs.timing("setup_s"):
            time.sleep(0.01)
    assert costs.setup_s >= 0.02 and costs.search_s == 0.0
