"""autotune: measure, don't guess, the latency settings of a local GGUF assistant backend."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autotune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

# After __version__: the study module records it.
from autotune.errors import AutotuneError
from autotune.measure.settings import Settings

__all__ = ["AutotuneError", "Settings", "__version__", "load_studies", "study_summaries"]


def __getattr__(name: str) -> object:
    """The studies API loads pandas and Optuna on first use: a trial worker needs neither."""
    if name in ("load_studies", "study_summaries"):
        from autotune.studies import tables

        return getattr(tables, name)
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")
