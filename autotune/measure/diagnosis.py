"""The guide's targets as pass/fail, and which of its four spike causes a trial shows.

Targets (from the optimisation guide): average latency 0.5-2.0 s (lower is better), no
request over 5 s, standard deviation under 50% of the mean, context-cache hit rate over
80% for repeated patterns, load cost paid once (the first request no slower than
`FIRST_REQUEST_FACTOR` x the median of the rest), and no memory growth over time.

Causes: `thread_contention`, `context_overflow`, `cache_misses`, `gpu_memory_pressure`;
and next to them `cache_cost`: the context cache cost more to save and restore than the
prompt evaluation it saved.

A fix is checked against what a kept study measured, when one is given (`StudyEvidence`):
a change the study measured slower is not recommended, the measurement is said instead.
Without a study, a fix that turns on a setting that is off is something to measure, not a
recommendation (`Finding.tentative`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from autotune.guide import CV_LIMIT, HIT_RATE_MIN, MEAN_LIMIT_S, SPIKE_LIMIT_S
from autotune.measure.hardware import Hardware
from autotune.measure.records import (
    Finding,
    RequestRecord,
    Status,
    StudyEvidence,
    Target,
    ThreadProbe,
    TrialStats,
)
from autotune.measure.settings import Settings
from autotune.measure.stats import cache_cost

FIRST_REQUEST_FACTOR = 3.0
GROWTH_LIMIT_BYTES = 16 * 1024 * 1024
CONTENTION_FACTOR = 1.2
GPU_FREE_MIN_FRACTION = 0.05
CAUSES = ("thread_contention", "context_overflow", "cache_misses", "gpu_memory_pressure")
CACHE_COST = "cache_cost"


def targets(summary: TrialStats) -> dict[str, Target]:
    """Each of the guide's targets: its wording, the measured value, and pass (None: n/a)."""
    mean, top, cv = summary.mean_s, summary.max_s, summary.cv
    hit = summary.cache_hit_rate
    first, rest = summary.first_s, summary.rest_median_s
    growth = summary.rss_growth_bytes_per_pass
    target = Target
    return {
        "mean_latency": target(f"average latency 0.5-{MEAN_LIMIT_S:.1f} s (lower is better)", mean,
                               None if mean is None else mean <= MEAN_LIMIT_S),
        "no_spikes": target(f"no request over {SPIKE_LIMIT_S:g} s", top,
                            None if top is None else top <= SPIKE_LIMIT_S),
        "consistency": target(f"std under {CV_LIMIT:.0%} of the mean", cv,
                              None if cv is None else cv < CV_LIMIT),
        "cache_hit_rate": target(f"context-cache hit rate over {HIT_RATE_MIN:.0%} for repeated "
                                 "patterns", hit,
                                 None if hit is None else hit > HIT_RATE_MIN),
        "load_once": target("load cost paid once: first request under 3x the median of the rest",
                            first, None if first is None or rest is None
                            else first <= FIRST_REQUEST_FACTOR * rest),
        "memory_stable": target("no memory growth over time (under 16 MiB per pass)", growth,
                                None if growth is None else growth < GROWTH_LIMIT_BYTES),
    }


def diagnose(summary: TrialStats, status: Status, probe: ThreadProbe | None,
             settings: Settings, hardware: Hardware,
             requests: Sequence[RequestRecord] = (),
             evidence: StudyEvidence | None = None) -> list[Finding]:
    """The spike causes the measurements show, each with its evidence and the fix.

    `requests` (the trial's own) let it weigh the context cache's cost; `evidence`, what a
    kept study measured, checks each fix against it.
    """
    found = []
    physical = hardware.physical_cores
    if settings.n_threads > physical and probe:
        slow = probe.configured_s / max(probe.physical_s, 1e-9)
        if slow >= CONTENTION_FACTOR:
            found.append(weigh(Finding(
                cause="thread_contention",
                evidence=f"{settings.n_threads} threads on {physical} physical cores: the "
                         f"same request took {slow:.1f}x as long as with {physical} threads",
                fix=f"export JARVIS_N_THREADS={physical}"),
                evidence, "n_threads", lambda v: v == physical))
    reloads = summary.reloads
    if reloads:
        found.append(weigh(Finding(
            cause="context_overflow",
            evidence=f"{reloads} request(s) overflowed the {settings.context_window}-token "
                     "context and dropped history to re-evaluate",
            fix=f"export JARVIS_MODEL_CONTEXT_WINDOW={settings.context_window * 2} (or more)"),
            evidence, "context_window", above(settings.context_window)))
    cost = cache_cost(requests) if settings.enable_context_cache else None
    hit = summary.cache_hit_rate
    if hit is not None and hit <= HIT_RATE_MIN:
        misses = Finding(
            cause="cache_misses",
            evidence=f"only {hit:.0%} of follow-up requests reused their conversation's "
                     "earlier context", fix="")
        if not settings.enable_context_cache:
            found.append(weigh(dataclasses.replace(
                misses, fix="JARVIS_ENABLE_CONTEXT_CACHE=true, measured with `autotune bench`",
                tentative=True), evidence, "enable_context_cache", lambda v: v is True,
                measured_fix="export JARVIS_ENABLE_CONTEXT_CACHE=true"))
        elif cost is not None and cost.costs_more:
            # a larger cache restores more, but each restore already costs more than it saves
            found.append(weigh(dataclasses.replace(
                misses, fix=f"JARVIS_MAX_CACHE_SIZE above {settings.max_cache_size}, measured "
                "with `autotune bench` (the cache already costs more than it saves)",
                tentative=True), evidence, "max_cache_size",
                above(settings.max_cache_size),
                measured_fix=f"raise JARVIS_MAX_CACHE_SIZE above {settings.max_cache_size}"))
        else:
            found.append(weigh(dataclasses.replace(
                misses, fix=f"raise JARVIS_MAX_CACHE_SIZE above {settings.max_cache_size}"),
                evidence, "max_cache_size", above(settings.max_cache_size)))
    if cost is not None and cost.costs_more:
        found.append(weigh(Finding(
            cause=CACHE_COST,
            evidence=f"the context cache cost {cost.cache_s:.2f} s to save and restore and "
                     f"saved about {cost.saved_s:.2f} s of prompt evaluation "
                     f"({cost.restored_tokens} tokens restored, at "
                     f"{cost.per_token_s * 1000:.1f} ms a token evaluated afresh)",
            fix="export JARVIS_ENABLE_CONTEXT_CACHE=false"),
            evidence, "enable_context_cache", lambda v: v is False))
    free_min = summary.gpu_free_min_bytes
    total = sum(g.total_bytes for g in hardware.gpus) or sum(
        d.total_bytes for d in hardware.devices)
    uses_gpu = settings.n_gpu_layers != 0 and hardware.can_offload
    if uses_gpu and (status in (Status.OUT_OF_MEMORY, Status.GPU_OUT_OF_MEMORY)
                     or (free_min is not None and total
                         and free_min < GPU_FREE_MIN_FRACTION * total)):
        layers = settings.n_gpu_layers
        found.append(weigh(Finding(
            cause="gpu_memory_pressure",
            evidence="GPU memory ran out" if free_min is None
            else f"free GPU memory fell to {free_min / 2**20:.0f} MiB of {total / 2**20:.0f} MiB",
            fix="lower JARVIS_N_GPU_LAYERS or JARVIS_MODEL_CONTEXT_WINDOW"),
            evidence, "n_gpu_layers", lambda v: isinstance(v, int)
            and (0 <= v < layers or layers < 0 <= v)))
    return found


def above(limit: int) -> Callable[[object], bool]:
    """Accepts a measured value of a whole-number setting greater than `limit`."""
    return lambda value: isinstance(value, int) and value > limit


def weigh(finding: Finding, evidence: StudyEvidence | None, field: str,
          accept: Callable[[object], bool], measured_fix: str = "") -> Finding:
    """The finding with its fix checked against what the study measured of `field`.

    The fastest alternative the study measured that the fix would choose decides: slower,
    the fix is dropped and the measurement said instead; faster, the fix stands (made
    firm, `measured_fix`, when it was only something to try). Nothing measured: as it was.
    """
    if evidence is None:
        return finding
    best = evidence.best(field, accept)
    if best is None:
        return finding
    if best.delta_s > 0:
        return dataclasses.replace(
            finding, fix="", tentative=False,
            measured=f"study {evidence.study} measured {best.describe()}; not recommended")
    return dataclasses.replace(
        finding, fix=measured_fix or finding.fix, tentative=False,
        measured=f"study {evidence.study} measured {best.describe()}")

