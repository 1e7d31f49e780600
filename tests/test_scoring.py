"""The score formula, checked by hand: mean + spike penalty + consistency penalty."""

from __future__ import annotations

import doctest
import math

import pytest

from autotune.measure import scoring
from autotune.measure.scoring import Score, Weights, score


def test_spike_over_three_times_the_median_and_cv_penalty() -> None:
    # mean 2, median 1: threshold min(5, 3 x 1) = 3, so 5 is a spike with excess 5 - 1 = 4
    # spike penalty 2 x 4 / 4 = 2; std = sqrt(3), cv = sqrt(3) / 2 = 0.866 > 0.5
    # consistency penalty (sqrt(3) / 2 - 0.5) x 2 = sqrt(3) - 1
    s = score([1.0, 1.0, 1.0, 5.0])
    assert s.mean_s == pytest.approx(2.0)
    assert s.spikes == 1
    assert s.spike_penalty_s == pytest.approx(2.0)
    assert s.cv == pytest.approx(math.sqrt(3) / 2)
    assert s.consistency_penalty_s == pytest.approx(math.sqrt(3) - 1)
    assert s.total_s == pytest.approx(3 + math.sqrt(3))


def test_spike_over_five_seconds_below_three_times_the_median() -> None:
    # median 4: threshold min(5, 12) = 5, so only 6 is a spike, excess 6 - 4 = 2
    # mean 4.4, spike penalty 2 x 2 / 5 = 0.8; std 0.8, cv 0.18: no consistency penalty
    s = score([4.0, 4.0, 4.0, 4.0, 6.0])
    assert s.mean_s == pytest.approx(4.4)
    assert s.spikes == 1
    assert s.spike_penalty_s == pytest.approx(0.8)
    assert s.cv == pytest.approx(0.8 / 4.4)
    assert s.consistency_penalty_s == 0.0
    assert s.total_s == pytest.approx(5.2)


def test_spike_over_three_times_the_median_only() -> None:
    # 19 x 1 s and one 3.2 s: median 1, threshold 3, excess 2.2, penalty 2 x 2.2 / 20 = 0.22
    # mean 1.11, std 0.4795, cv 0.432 <= 0.5: no consistency penalty
    s = score([1.0] * 19 + [3.2])
    assert s.mean_s == pytest.approx(1.11)
    assert s.spikes == 1
    assert s.spike_penalty_s == pytest.approx(0.22)
    assert s.cv == pytest.approx(math.sqrt(0.2299) / 1.11)
    assert s.consistency_penalty_s == 0.0
    assert s.total_s == pytest.approx(1.33)


def test_cv_penalty_without_spikes() -> None:
    # mean 2.5 = median, threshold 5: no spike; std 1.5, cv 0.6
    # consistency penalty (0.6 - 0.5) x 2.5 = 0.25
    s = score([1.0, 1.0, 4.0, 4.0])
    assert s.spikes == 0
    assert s.spike_penalty_s == 0.0
    assert s.cv == pytest.approx(0.6)
    assert s.consistency_penalty_s == pytest.approx(0.25)
    assert s.total_s == pytest.approx(2.75)


def test_no_penalty() -> None:
    # mean 1, std sqrt(0.02) = 0.14: no spike, cv well under 0.5
    s = score([1.0, 1.2, 0.8, 1.0])
    assert s == Score(total_s=pytest.approx(1.0), mean_s=pytest.approx(1.0),
                      spike_penalty_s=0.0, consistency_penalty_s=0.0, spikes=0,
                      cv=pytest.approx(math.sqrt(0.02)))


def test_exactly_at_the_threshold_is_not_a_spike() -> None:
    # median 1, threshold 3: 3 is not over it; mean 1.4, std 0.8
    # consistency penalty (0.8 / 1.4 - 0.5) x 1.4 = 0.8 - 0.7 = 0.1
    s = score([1.0, 1.0, 1.0, 1.0, 3.0])
    assert s.spikes == 0
    assert s.consistency_penalty_s == pytest.approx(0.1)
    assert s.total_s == pytest.approx(1.5)


def test_single_latency() -> None:
    assert score([0.7]) == Score(0.7, 0.7, 0.0, 0.0, 0, 0.0)


def test_all_zero_latencies() -> None:
    s = score([0.0, 0.0])
    assert (s.total_s, s.cv, s.spikes) == (0.0, 0.0, 0)


def test_weights_change_the_penalties() -> None:
    latencies = [1.0, 1.0, 1.0, 5.0]
    plain = score(latencies, Weights(spike_weight=0.0, cv_weight=0.0))
    assert plain.total_s == pytest.approx(2.0)
    assert plain.spikes == 1
    strict = score(latencies, Weights(spike_factor=10.0, spike_limit_s=6.0, cv_limit=1.0))
    assert strict.spikes == 0  # threshold min(6, 10) = 6
    assert strict.total_s == pytest.approx(2.0)


def test_empty_is_an_error() -> None:
    with pytest.raises(ValueError, match="without latencies"):
        score([])


def test_score_to_dict() -> None:
    data = score([1.0, 1.0, 1.0, 5.0]).to_dict()
    assert set(data) == {"total_s", "mean_s", "spike_penalty_s", "consistency_penalty_s",
                         "spikes", "cv"}


def test_docstring_example() -> None:
    result = doctest.testmod(scoring, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
