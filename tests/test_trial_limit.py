"""A trial's time limit follows what runs cost here (search/costs.py): the arithmetic, and a
real run that goes past the limit its measured predecessor set."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.model import inspect_model
from autotune.measure.records import RequestRecord, Status, TrialResult
from autotune.measure.settings import Settings
from autotune.measure.workload import Workload
from autotune.search import costs
from autotune.search.budget import Budget
from autotune.search.costs import RunCosts
from autotune.search.study import Measurement


def ran(wall_s: float, done: int = 16, total: int = 16) -> tuple[TrialResult, int]:
    result = TrialResult(status=Status.OK if done == total else Status.TIMED_OUT,
                         wall_s=wall_s)
    result.requests.extend(RequestRecord(index=i, id=str(i), latency_s=wall_s / total,
                                         rss_bytes=0) for i in range(done))
    return result, total


def test_the_limit_is_generous_until_a_run_has_ended_then_four_typical_runs() -> None:
    runs = RunCosts()
    assert runs.limit_s() == costs.FIRST_LIMIT_S
    runs.add(Settings(n_threads=1), *ran(30.0))  # a demo-sized run: the floor holds
    assert runs.limit_s() == costs.LIMIT_FLOOR_S
    runs.add(Settings(n_threads=2), *ran(150.0))
    runs.add(Settings(n_threads=2, context_window=8192), *ran(170.0))
    assert runs.limit_s() == 4 * 150.0  # the median configuration's run
    # the guide's defaults are the slow outlier, not a typical run
    runs.add(Settings(**GUIDE_DEFAULTS), *ran(2000.0))
    assert runs.limit_s() == 4 * 150.0
    slow = RunCosts()  # a run stopped after 4 of 16 requests counts whole: 1050 s
    slow.add(Settings(n_threads=1), *ran(600.0, done=4))
    assert slow.runs[Settings(n_threads=1)][0].whole_s == 600.0 + 12 * 600.0 / 16
    assert slow.limit_s() == costs.LIMIT_CEILING_S


def test_a_given_limit_is_kept_and_a_budget_shares_its_record_of_costs() -> None:
    workload = Workload("w", ())
    assert Measurement(workload, trial_timeout_s=42.0).trial_limit_s() == 42.0
    budget = Budget(600)
    measurement = Measurement(workload, budget=budget)
    budget.observe(Settings(n_threads=1), *ran(100.0))
    assert measurement.run_costs is budget.runs
    assert measurement.trial_limit_s() == 400.0


def test_a_trial_past_four_typical_runs_is_stopped_at_the_limit(
        model_path: Path, tiny_workload: Workload, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(costs, "LIMIT_FLOOR_S", 1.0)  # the demo model's runs are short
    model = inspect_model(model_path)
    measurement = Measurement(tiny_workload, tokens_per_request=4)
    first = measurement.run(model, Settings(n_threads=1, context_window=512))
    assert first.status == Status.OK
    limit = measurement.trial_limit_s()
    assert limit == math.ceil(4 * first.wall_s)
    monkeypatch.setenv("AUTOTUNE_WORKER_FAULT", "slow=600@warmup")  # far past any limit
    slow = measurement.run(model, Settings(n_threads=2, context_window=512))
    assert slow.status == Status.TIMED_OUT
    assert slow.reason == f"trial ran past its {limit:g} s limit"
    assert limit <= slow.wall_s < limit + 10
