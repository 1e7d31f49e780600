"""autotune: measure, don't guess, the latency settings of a local GGUF assistant backend."""

from autotune.errors import AutotuneError
from autotune.settings import Settings

__all__ = ["AutotuneError", "Settings"]
