"""Latency statistics of a trial result, on hand-made records (logic only)."""

from __future__ import annotations

import pytest

from autotune.measure.records import RequestRecord, Status, TrialResult, TrialStats
from autotune.measure.stats import growth_per_pass, percentile, rate, summarize


def record(latency: float, pass_no: int = 0, hit: bool | None = None, reload: bool = False
           ) -> RequestRecord:
    return RequestRecord(id="c-1", index=0, latency_s=latency, rss_bytes=100, ttft_s=latency / 2,
                         generated=4, cache_hit=hit, reload=reload, pass_no=pass_no)


def test_percentile_interpolates() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([7.0], 99) == 7.0


def test_rate_ignores_unknown() -> None:
    assert rate([True, None, False, True]) == pytest.approx(2 / 3)
    assert rate([None, None]) is None
    assert rate([]) is None


def test_growth_per_pass() -> None:
    assert growth_per_pass([100, 150, 250]) == 75
    assert growth_per_pass([100]) is None


def test_summarize() -> None:
    requests = [record(1.0), record(2.0, hit=True), record(3.0, hit=False, reload=True),
                record(1.0, pass_no=1), record(1.0, pass_no=1, hit=True),
                record(1.0, pass_no=1, hit=True)]
    result = TrialResult(status=Status.OK, load_s=0.5, warmup_s=0.2, requests=requests,
                         pass_rss_bytes=[1000, 3000])
    summary = summarize(result)
    assert summary.requests_done == 6
    assert summary.mean_s == pytest.approx(1.5)
    assert summary.max_s == 3.0
    assert summary.reloads == 1
    assert summary.cache_hit_rate == pytest.approx(0.75)
    assert summary.spikes == 0
    assert summary.first_s == 1.0
    assert summary.rest_median_s == 1.0
    assert summary.pass_mean_s == pytest.approx([2.0, 1.0])
    assert summary.pass_drift == pytest.approx(-0.5)
    assert summary.rss_growth_bytes_per_pass == 2000
    assert summary.tokens_per_s == pytest.approx(24 / 9)


def test_summarize_without_requests() -> None:
    summary = summarize(TrialResult(status=Status.CRASHED, reason="killed by SIGKILL"))
    assert summary.requests_done == 0
    assert summary.mean_s is None and summary.p95_s is None
    assert summary.cache_hit_rate is None
    assert summary.reloads == 0


def test_spikes_over_five_seconds() -> None:
    summary = summarize(TrialResult(status=Status.OK, requests=[record(1.0), record(5.0),
                                                           record(5.5)]))
    assert summary.spikes == 1


def test_stats_round_trip_through_json() -> None:
    summary = summarize(TrialResult(status=Status.OK, requests=[record(1.0), record(2.0, 1)]))
    assert TrialStats.from_dict(summary.to_dict()) == summary
    assert summary.to_dict()["pass_mean_s"] == [1.0, 2.0]


def test_a_record_from_an_older_writer_takes_defaults_and_ignores_unknown_keys() -> None:
    stats = TrialStats.from_dict({"mean_s": 1.5, "requests_done": 3, "from_the_future": 1})
    assert (stats.mean_s, stats.requests_done, stats.pass_mean_s, stats.p99_s) == (1.5, 3, (), None)
