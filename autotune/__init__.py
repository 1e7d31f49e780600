"""autotune: measure, don't guess, the latency settings of a local GGUF assistant backend."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autotune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

# After __version__: the study module records it.
from autotune.errors import AutotuneError
from autotune.settings import Settings
from autotune.studies import load_studies, study_summaries

__all__ = ["AutotuneError", "Settings", "__version__", "load_studies", "study_summaries"]
