"""The optimisation guide's numbers, in one place: its defaults, its targets, its spike limit.

Every report, score, diagnosis and benchmark that checks a configuration against the
guide reads these; none keeps a copy.
"""

from __future__ import annotations

from typing import Any

# The settings the guide recommends: what most users run, and what every winner must beat.
GUIDE_DEFAULTS: dict[str, Any] = {
    "context_window": 4096, "n_threads": 8, "n_gpu_layers": -1,
    "enable_context_cache": True, "max_cache_size": 100}
DEFAULTS_LABEL = "guide defaults"

# Its targets.
MEAN_LIMIT_S = 2.0  # average latency 0.5-2.0 s, lower is better
SPIKE_LIMIT_S = 5.0  # no request over 5 s: a slower one is a spike
CV_LIMIT = 0.5  # standard deviation under 50% of the mean
HIT_RATE_MIN = 0.8  # context-cache hit rate over 80% for repeated patterns
GUIDE_CONTEXT = 4096  # the window the guide advises; a smaller one is warned about
