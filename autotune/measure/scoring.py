"""The one score a study minimises: mean latency plus penalties for spikes and inconsistency.

    score = mean
          + spike_weight * sum(latency - median for each spike) / n
          + cv_weight * max(0, std / mean - cv_limit) * mean

A spike is a request slower than `spike_limit_s` (the guide's 5 s) or slower than
`spike_factor` times the median. Every term is in seconds, so a component reads as "this
much latency per request is charged for that". Population standard deviation is used.

Example:
    >>> s = score([1.0, 1.0, 1.0, 5.0])  # median 1, cv 0.866
    >>> s.mean_s, s.spikes, s.spike_penalty_s, round(s.consistency_penalty_s, 3)
    (2.0, 1, 2.0, 0.732)
    >>> round(s.total_s, 3)
    4.732
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from autotune.guide import CV_LIMIT, SPIKE_LIMIT_S


@dataclass(frozen=True)
class Weights:
    spike_weight: float = 2.0
    spike_factor: float = 3.0
    spike_limit_s: float = SPIKE_LIMIT_S
    cv_weight: float = 1.0
    cv_limit: float = CV_LIMIT


@dataclass(frozen=True)
class Score:
    """The score and its parts, each stored on the study's trial."""

    total_s: float
    mean_s: float
    spike_penalty_s: float
    consistency_penalty_s: float
    spikes: int
    cv: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def score(latencies: Sequence[float], weights: Weights = Weights()) -> Score:
    if not latencies:
        raise ValueError("cannot score a trial without latencies")
    n = len(latencies)
    mean = statistics.fmean(latencies)
    median = statistics.median(latencies)
    cv = statistics.pstdev(latencies) / mean if mean > 0 else 0.0
    threshold = min(weights.spike_limit_s, weights.spike_factor * median)
    excess = [x - median for x in latencies if x > threshold]
    spike_penalty = weights.spike_weight * sum(excess) / n
    consistency_penalty = weights.cv_weight * max(0.0, cv - weights.cv_limit) * mean
    return Score(total_s=mean + spike_penalty + consistency_penalty, mean_s=mean,
                 spike_penalty_s=spike_penalty, consistency_penalty_s=consistency_penalty,
                 spikes=len(excess), cv=cv)
