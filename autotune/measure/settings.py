"""The JARVIS_* settings contract: names, types, defaults, validation, to and from env.

The Jarvis GGUF backend is configured only through these variables. `Settings` is the
typed view of them; `Settings.from_env` reads and validates a mapping (the process
environment, or a `.env` / export file through `load_env_file`), and `to_env` writes
them back as strings that the backend parses the same way.

Example:
    >>> s = Settings.from_env({"JARVIS_N_THREADS": "2", "JARVIS_ENABLE_CONTEXT_CACHE": "off"})
    >>> s.n_threads, s.enable_context_cache
    (2, False)
    >>> s.to_env()["JARVIS_N_THREADS"]
    '2'
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError, Option
from autotune.measure.mapping import RecordError

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def default_threads() -> int:
    """The backend's own default: min(10, cpu count)."""
    return min(10, os.cpu_count() or 1)


@dataclass(frozen=True)
class Variable:
    """One JARVIS_* variable: its field on `Settings`, its type and its valid range."""

    name: str
    field: str
    kind: type
    minimum: float | None = None
    maximum: float | None = None
    tuned: bool = True
    help: str = ""


VARIABLES: tuple[Variable, ...] = (
    Variable("JARVIS_MODEL_CONTEXT_WINDOW", "context_window", int, 16, help="n_ctx, tokens"),
    Variable("JARVIS_N_THREADS", "n_threads", int, 1, help="n_threads"),
    Variable("JARVIS_N_GPU_LAYERS", "n_gpu_layers", int, -1, help="n_gpu_layers, -1 = all"),
    Variable("JARVIS_ENABLE_CONTEXT_CACHE", "enable_context_cache", bool,
             help="prompt-state cache for prefix matching"),
    Variable("JARVIS_MAX_CACHE_SIZE", "max_cache_size", int, 1,
             help="max number of cached contexts"),
    Variable("JARVIS_N_BATCH", "n_batch", int, 1, help="n_batch"),
    Variable("JARVIS_N_UBATCH", "n_ubatch", int, 1, help="n_ubatch"),
    Variable("JARVIS_FLASH_ATTN", "flash_attn", bool, help="flash attention"),
    Variable("JARVIS_F16_KV", "f16_kv", bool, help="f16 KV cache (else f32)"),
    Variable("JARVIS_SEED", "seed", int, tuned=False, help="sampling seed"),
    Variable("JARVIS_VERBOSE", "verbose", bool, tuned=False, help="llama.cpp logging"),
    Variable("JARVIS_MAX_TOKENS", "max_tokens", int, 1, tuned=False, help="max tokens per reply"),
    Variable("JARVIS_TOP_P", "top_p", float, 0.0, 1.0, tuned=False, help="top-p sampling"),
    Variable("JARVIS_TOP_K", "top_k", int, 0, tuned=False, help="top-k sampling"),
    Variable("JARVIS_REPEAT_PENALTY", "repeat_penalty", float, 0.0, tuned=False,
             help="repeat penalty"),
)
BY_NAME = {v.name: v for v in VARIABLES}
BY_FIELD = {v.field: v for v in VARIABLES}
CORE_FIELDS = ("context_window", "n_threads", "n_gpu_layers", "enable_context_cache",
               "max_cache_size")
EXTENDED_FIELDS = ("n_batch", "n_ubatch", "flash_attn", "f16_kv")


@dataclass(frozen=True)
class Settings:
    """Every JARVIS_* setting, typed, with the backend's defaults."""

    context_window: int = 4096
    n_threads: int = field(default_factory=default_threads)
    n_gpu_layers: int = -1
    enable_context_cache: bool = True
    max_cache_size: int = 100
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = True
    f16_kv: bool = True
    seed: int = 42
    verbose: bool = False
    max_tokens: int = 7000
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1

    def __post_init__(self) -> None:
        for var in VARIABLES:
            check(var, getattr(self, var.field))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, source: str = "environment"
                 ) -> Settings:
        """Read every JARVIS_* variable present in `env`; absent ones keep their defaults."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for var in VARIABLES:
            raw = env.get(var.name)
            if raw is not None and raw.strip() != "":
                values[var.field] = parse(var, raw, source)
        return cls(**values)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Settings:
        """Build from field names (as stored on a study trial); unknown keys are ignored."""
        known: dict[str, Any] = {k: v for k, v in data.items() if k in BY_FIELD}
        return cls(**known)

    @classmethod
    def from_record(cls, data: object) -> Settings:
        """Build from a record's stored settings (`to_dict`'s object; a field it lacks takes
        its default); RecordError when they are not settings, as for any damaged record."""
        if not isinstance(data, Mapping):
            raise RecordError(f"settings: expected an object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except AutotuneError as err:
            raise RecordError(f"settings: {err}") from None

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def value(self, name: str) -> object:
        """The setting of field `name`, as a record's columns name them; None for a name
        that is no field here (a newer autotune's)."""
        return getattr(self, name) if name in BY_FIELD else None

    def to_env(self, fields: tuple[str, ...] | None = None) -> dict[str, str]:
        """The settings as JARVIS_* strings, in contract order."""
        chosen = [v for v in VARIABLES if fields is None or v.field in fields]
        return {v.name: format_value(getattr(self, v.field)) for v in chosen}

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def parse(var: Variable, raw: str, source: str | Option = "environment") -> object:
    """Parse one variable's text; a bad value raises AutotuneError naming the variable."""
    text = raw.strip()
    try:
        if var.kind is bool:
            word = text.lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
            raise ValueError
        value = var.kind(text)
    except ValueError:
        expected = {bool: "true or false", int: "a whole number", float: "a number"}[var.kind]
        raise AutotuneError(f"{var.name}={raw!r} in ", source, f": expected {expected}"
                            ) from None
    return check(var, value, source)


def check(var: Variable, value: object, source: str | Option = "settings") -> object:
    """Raise AutotuneError naming the variable when `value` has the wrong type or range."""
    numeric = (int, float) if var.kind is float else var.kind
    if isinstance(value, bool) != (var.kind is bool) or not isinstance(value, numeric):
        raise AutotuneError(f"{var.name}={value!r} in ", source,
                            f": expected {var.kind.__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise AutotuneError(f"{var.name}={value!r} in ", source, ": expected a finite number")
    if isinstance(value, (int, float)) and var.minimum is not None and value < var.minimum:
        raise AutotuneError(f"{var.name}={format_value(value)} in ", source,
                            f": must be at least {var.minimum:g}")
    if isinstance(value, (int, float)) and var.maximum is not None and value > var.maximum:
        raise AutotuneError(f"{var.name}={format_value(value)} in ", source,
                            f": must be at most {var.maximum:g}")
    return value


def format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load_env_file(path: str | os.PathLike[str]) -> Settings:
    """Settings from a `.env` file or an export script (`export NAME='value'` lines).

    Every line must parse: a line python-dotenv would skip in silence would leave its
    setting at the default, and the measurement would not be of the file the user meant.
    A JARVIS_* name the contract does not know is refused for the same reason.
    """
    from dotenv.parser import parse_stream

    file = Path(path)
    if not file.is_file():
        raise AutotuneError(
            f"settings file {file}: not found (pass an existing .env or export file)")
    try:
        with open(file, encoding="utf-8") as handle:
            bindings = list(parse_stream(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise AutotuneError(f"settings file {file}: cannot read it ({err})") from None
    values: dict[str, str] = {}
    for binding in bindings:
        line = binding.original.line
        if binding.error:
            raise AutotuneError(f"settings file {file} line {line}: cannot parse it (expected "
                                "NAME=value or export NAME='value')")
        if binding.key is None:
            continue  # a blank or comment line
        if binding.key.startswith("JARVIS_") and binding.key not in BY_NAME:
            raise AutotuneError(f"settings file {file} line {line}: unknown variable "
                                f"{binding.key[:80]!r} (known: {', '.join(BY_NAME)})")
        if binding.value is not None:
            values[binding.key] = binding.value
    return Settings.from_env(values, source=f"{file}")
