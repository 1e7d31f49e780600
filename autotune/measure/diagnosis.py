"""The guide's targets as pass/fail, and which of its four spike causes a trial shows.

Targets (from the optimisation guide): average latency 0.5-2.0 s (lower is better), no
request over 5 s, standard deviation under 50% of the mean, context-cache hit rate over
80% for repeated patterns, load cost paid once (the first request no slower than
`FIRST_REQUEST_FACTOR` x the median of the rest), and no memory growth over time.

Causes: `thread_contention`, `context_overflow`, `cache_misses`, `gpu_memory_pressure`.
"""

from __future__ import annotations

from autotune.guide import CV_LIMIT, HIT_RATE_MIN, MEAN_LIMIT_S, SPIKE_LIMIT_S
from autotune.measure.hardware import Hardware
from autotune.measure.settings import Settings

FIRST_REQUEST_FACTOR = 3.0
GROWTH_LIMIT_BYTES = 16 * 1024 * 1024
CONTENTION_FACTOR = 1.2
GPU_FREE_MIN_FRACTION = 0.05
CAUSES = ("thread_contention", "context_overflow", "cache_misses", "gpu_memory_pressure")


def target(description: str, value: object, passed: bool | None) -> dict[str, object]:
    return {"target": description, "value": value, "pass": passed}


def targets(summary: dict) -> dict[str, dict[str, object]]:
    """Each of the guide's targets: its wording, the measured value, and pass (None: n/a)."""
    mean, top, cv = summary.get("mean_s"), summary.get("max_s"), summary.get("cv")
    hit = summary.get("cache_hit_rate")
    first, rest = summary.get("first_s"), summary.get("rest_median_s")
    growth = summary.get("rss_growth_bytes_per_pass")
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


def diagnose(summary: dict, result_probe: dict | None, settings: Settings,
             hardware: Hardware) -> list[dict[str, str]]:
    """The spike causes the measurements show, each with its evidence and the fix."""
    found = []
    physical = hardware.physical_cores
    if settings.n_threads > physical and result_probe:
        slow = result_probe["configured_s"] / max(result_probe["physical_s"], 1e-9)
        if slow >= CONTENTION_FACTOR:
            found.append({
                "cause": "thread_contention",
                "evidence": f"{settings.n_threads} threads on {physical} physical cores: the "
                            f"same request took {slow:.1f}x as long as with {physical} threads",
                "fix": f"export JARVIS_N_THREADS={physical}"})
    reloads = summary.get("reloads") or 0
    if reloads:
        found.append({
            "cause": "context_overflow",
            "evidence": f"{reloads} request(s) overflowed the {settings.context_window}-token "
                        "context and dropped history to re-evaluate",
            "fix": f"export JARVIS_MODEL_CONTEXT_WINDOW={settings.context_window * 2} (or more)"})
    hit = summary.get("cache_hit_rate")
    if hit is not None and hit <= HIT_RATE_MIN:
        fix = ("export JARVIS_ENABLE_CONTEXT_CACHE=true" if not settings.enable_context_cache
               else f"raise JARVIS_MAX_CACHE_SIZE above {settings.max_cache_size}")
        found.append({
            "cause": "cache_misses",
            "evidence": f"only {hit:.0%} of follow-up requests reused their conversation's "
                        "earlier context",
            "fix": fix})
    free_min = summary.get("gpu_free_min_bytes")
    total = sum(g.total_bytes for g in hardware.gpus)
    uses_gpu = settings.n_gpu_layers != 0 and hardware.can_offload
    if uses_gpu and (summary.get("status") == "out_of_memory"
                     or (free_min is not None and total
                         and free_min < GPU_FREE_MIN_FRACTION * total)):
        found.append({
            "cause": "gpu_memory_pressure",
            "evidence": "GPU memory ran out" if free_min is None
            else f"free GPU memory fell to {free_min / 2**20:.0f} MiB of {total / 2**20:.0f} MiB",
            "fix": "lower JARVIS_N_GPU_LAYERS or JARVIS_MODEL_CONTEXT_WINDOW"})
    return found
