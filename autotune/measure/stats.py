"""Latency statistics of a trial result: the numbers every report and score start from."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from autotune.guide import SPIKE_LIMIT_S
from autotune.measure.records import CacheCost, RequestRecord, TrialResult, TrialStats


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rate(flags: Sequence[bool | None]) -> float | None:
    counted = [f for f in flags if f is not None]
    return sum(counted) / len(counted) if counted else None


def summarize(result: TrialResult) -> TrialStats:
    """The trial's statistics; latency fields are None when no request finished."""
    requests = result.requests
    latencies = result.latencies
    common: dict[str, Any] = dict(
        requests_done=len(requests), load_s=result.load_s, warmup_s=result.warmup_s,
        peak_rss_bytes=result.peak_rss_bytes,
        gpu_memory_peak_bytes=result.gpu_memory_peak_bytes,
        gpu_free_min_bytes=result.gpu_free_min_bytes,
        cpu_percent_mean=result.cpu_percent_mean,
        other_cpu_percent_mean=result.other_cpu_percent_mean,
        measured_from=result.measured_from, measured_until=result.measured_until,
        reloads=result.reloads, cache_hit_rate=rate([r.cache_hit for r in requests]),
        rss_growth_bytes_per_pass=growth_per_pass(result.pass_rss_bytes),
        **conversation_sizes(requests),
        **cache_columns(cache_cost(requests)
                        if result.settings.enable_context_cache else None))
    if not latencies:
        return TrialStats(**common)
    mean = statistics.fmean(latencies)
    service = sum(r.latency_s - r.queue_s for r in requests)
    first = [r for r in requests if r.pass_no == 0][:1]
    rest = [r.latency_s for r in requests if not (first and r is first[0])]
    passes = sorted({r.pass_no for r in requests})
    pass_means = tuple(statistics.fmean(r.latency_s for r in requests if r.pass_no == p)
                       for p in passes)
    ttfts = [r.ttft_s for r in requests]
    return TrialStats(
        **common,
        mean_s=mean,
        p50_s=percentile(latencies, 50),
        p95_s=percentile(latencies, 95),
        p99_s=percentile(latencies, 99),
        max_s=max(latencies),
        std_s=statistics.pstdev(latencies),
        cv=statistics.pstdev(latencies) / mean if mean > 0 else 0.0,
        spikes=sum(x > SPIKE_LIMIT_S for x in latencies),
        ttft_mean_s=statistics.fmean(ttfts),
        ttft_p95_s=percentile(ttfts, 95),
        queue_mean_s=statistics.fmean(r.queue_s for r in requests),
        cache_mean_s=statistics.fmean(r.cache_s for r in requests),
        tokens_per_s=sum(r.generated for r in requests) / service if service > 0 else None,
        first_s=first[0].latency_s if first else None,
        rest_median_s=statistics.median(rest) if rest else None,
        pass_mean_s=pass_means,
        pass_drift=pass_means[-1] / pass_means[0] - 1 if len(pass_means) > 1 else None,
    )


def conversation_sizes(requests: Sequence[RequestRecord]) -> dict[str, float | int | None]:
    """What the first pass's conversations filled of the window: the longest, in tokens
    (its last prompt, which holds its history, and that reply), and tokens per turn."""
    filled: dict[str, int] = {}
    turns: dict[str, int] = {}
    for r in requests:
        if r.pass_no != 0 or r.prompt_tokens <= 0:
            continue
        key = r.conversation or r.id
        filled[key] = max(filled.get(key, 0), r.prompt_tokens + r.generated)
        turns[key] = turns.get(key, 0) + 1
    if not filled:
        return {"longest_conversation_tokens": None, "tokens_per_turn": None}
    return {"longest_conversation_tokens": max(filled.values()),
            "tokens_per_turn": sum(filled.values()) / sum(turns.values())}


def cache_columns(cost: CacheCost | None) -> dict[str, float | None]:
    return {"cache_total_s": cost.cache_s if cost else None,
            "cache_saved_s": cost.saved_s if cost else None}


def growth_per_pass(rss: Sequence[int]) -> float | None:
    """Resident memory growth per pass after the first (the leak check); None for one pass."""
    if len(rss) < 2:
        return None
    return (rss[-1] - rss[0]) / (len(rss) - 1)


def cache_cost(requests: Sequence[RequestRecord]) -> CacheCost | None:
    """The context cache's cost against the prompt evaluation it saved; None when the cache
    did nothing, or no request that reused nothing shows what a prompt token costs."""
    cache_s = sum(r.cache_s for r in requests)
    restored = sum(r.restored_tokens for r in requests)
    if cache_s <= 0 and not restored:
        return None
    fresh = [r.ttft_s / r.prompt_tokens for r in requests
             if r.reused_tokens == 0 and r.prompt_tokens > 0 and r.ttft_s > 0]
    if not fresh:
        return None
    per_token = statistics.median(fresh)
    return CacheCost(cache_s=cache_s, restored_tokens=restored, per_token_s=per_token,
                     saved_s=restored * per_token)
