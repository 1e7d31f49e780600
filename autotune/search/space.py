"""The search space, built from the model and the machine; the guide's advice as baselines.

Core space: n_threads 1..logical cores; n_gpu_layers -1..layers+1 only when the build
offloads and a GPU is present (else fixed at 0, and said so); the context window as
powers of two from 512 to the model's trained context, capped so that the model and its
f16 KV cache fit in half the available memory; the context cache on/off, and its size
only when on. `extended` adds n_batch, n_ubatch, flash attention and the f16 KV cache.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna

from autotune.errors import AutotuneError, Option
from autotune.guide import DEFAULTS_LABEL, GUIDE_DEFAULTS
from autotune.measure.hardware import Hardware
from autotune.measure.model import ModelInfo
from autotune.measure.settings import (
    BY_FIELD,
    BY_NAME,
    CORE_FIELDS,
    EXTENDED_FIELDS,
    Settings,
    format_value,
    parse,
)
from autotune.studies.records import SpaceSummary, TrialRecord

MIN_CONTEXT = 512
MEMORY_SHARE = 0.5
CACHE_SIZE_RANGE = (1, 128)
BATCH_CHOICES = (128, 256, 512, 1024, 2048)
UBATCH_CHOICES = (64, 128, 256, 512)
SMALL_MODEL_PARAMS = 7e9
LARGE_MODEL_PARAMS = 13e9

BASELINE_LABEL = DEFAULTS_LABEL


@dataclass
class SearchSpace:
    """What the sampler may choose, what is pinned, and why."""

    n_threads: tuple[int, int]
    context_choices: tuple[int, ...]
    gpu_layers: tuple[int, int] | None
    extended: bool
    fixed: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def tuned_fields(self) -> tuple[str, ...]:
        """The settings the export script writes: the core five, and the extended four."""
        return CORE_FIELDS + (EXTENDED_FIELDS if self.extended else ())

    def suggest(self, trial: optuna.Trial) -> Settings:
        """Sample one configuration; pinned values are used as they are."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Fixed parameter")
            # A baseline's values outside the space (8 threads on 2 cores) are pinned on
            # the trial rather than stored as out-of-range parameters.
            values = {**self.fixed, **TrialRecord.read(trial).pinned}

            def pick(name: str, sample: Callable[[], object]) -> None:
                if name not in values:
                    values[name] = sample()

            pick("n_threads", lambda: trial.suggest_int("n_threads", *self.n_threads))
            pick("context_window",
                 lambda: trial.suggest_categorical("context_window", self.context_choices))
            if self.gpu_layers is not None:
                pick("n_gpu_layers", lambda: trial.suggest_int("n_gpu_layers", *self.gpu_layers))
            pick("enable_context_cache",
                 lambda: trial.suggest_categorical("enable_context_cache", (True, False)))
            if values["enable_context_cache"]:
                pick("max_cache_size", lambda: trial.suggest_int(
                    "max_cache_size", *CACHE_SIZE_RANGE, log=True))
            if self.extended:
                pick("n_batch", lambda: trial.suggest_categorical("n_batch", BATCH_CHOICES))
                pick("n_ubatch", lambda: trial.suggest_categorical("n_ubatch", UBATCH_CHOICES))
                pick("flash_attn", lambda: trial.suggest_categorical("flash_attn", (True, False)))
                pick("f16_kv", lambda: trial.suggest_categorical("f16_kv", (True, False)))
        return Settings(**values)

    def describe(self) -> SpaceSummary:
        return SpaceSummary(
            n_threads=tuple(self.n_threads), context_window=tuple(self.context_choices),
            n_gpu_layers=tuple(self.gpu_layers) if self.gpu_layers else None,
            max_cache_size=tuple(CACHE_SIZE_RANGE), extended=self.extended,
            fixed=dict(self.fixed), notes=tuple(self.notes))

    def baselines(self, model: ModelInfo, machine: Hardware
                  ) -> list[tuple[str, dict[str, object], dict[str, object]]]:
        """The guide's defaults and its model-size advice: (label, params, pinned) to enqueue.

        `params` are the values inside the search space; `pinned` those outside it, which
        the trial runs as given without recording them as sampled parameters.
        """
        largest = self.context_choices[-1]
        defaults = dict(GUIDE_DEFAULTS, context_window=min(4096, largest))
        if model.n_params < SMALL_MODEL_PARAMS:
            advice = {"context_window": min(8192, largest),
                      "n_threads": machine.logical_cores, "n_gpu_layers": -1}
        elif model.n_params > LARGE_MODEL_PARAMS:
            advice = {"context_window": min(2048, largest),
                      "n_threads": machine.physical_cores,
                      "n_gpu_layers": (model.n_layers + 1) // 2}
        else:
            advice = {"context_window": min(4096, largest),
                      "n_threads": machine.physical_cores, "n_gpu_layers": -1}
        advice.update(enable_context_cache=True, max_cache_size=100)
        return [(BASELINE_LABEL, *self._split(defaults)),
                ("guide model-size advice", *self._split(advice))]

    def _split(self, values: dict[str, object]) -> tuple[dict, dict]:
        """Values the space can record as parameters, and the rest (pinned on the trial)."""
        params, pinned = {}, {}
        for name, value in values.items():
            if name in self.fixed or (name == "n_gpu_layers" and self.gpu_layers is None):
                continue
            inside = not (name == "n_threads" and not
                          self.n_threads[0] <= int(value) <= self.n_threads[1])
            (params if inside else pinned)[name] = value
        return params, pinned


def context_choices(model: ModelInfo, machine: Hardware) -> tuple[int, ...]:
    budget = MEMORY_SHARE * machine.available_memory_bytes - model.size_bytes
    choices = []
    n_ctx = MIN_CONTEXT
    while n_ctx <= max(MIN_CONTEXT, model.context_length):
        if choices and n_ctx * model.kv_bytes_per_token > budget:
            break
        choices.append(n_ctx)
        n_ctx *= 2
    return tuple(choices)


def parse_fixes(fixes: list[str] | tuple[str, ...]) -> dict[str, object]:
    """`NAME=VALUE` pins: NAME is a setting (n_threads) or its variable (JARVIS_N_THREADS)."""
    pinned: dict[str, object] = {}
    for text in fixes:
        name, sep, raw = text.partition("=")
        name = name.strip()
        var = BY_NAME.get(name.upper()) or BY_FIELD.get(name.lower())
        if not sep or var is None:
            raise AutotuneError(Option("fixes", repr(text)), ": expected NAME=VALUE with NAME "
                                "a JARVIS_* setting, e.g. n_threads=4")
        pinned[var.field] = parse(var, raw, Option("fixes"))
    return pinned


def build_space(model: ModelInfo, machine: Hardware, extended: bool = False,
                fixed: dict[str, object] | None = None) -> SearchSpace:
    fixed = dict(fixed or {})
    notes = [f"{name} pinned at {format_value(value)}" for name, value in fixed.items()]
    gpu_layers = None
    if machine.can_offload:
        gpu_layers = (-1, model.n_layers + 1)
    elif "n_gpu_layers" not in fixed:
        fixed["n_gpu_layers"] = 0
        why = ("this llama-cpp-python build has no GPU offload" if not machine.gpu_offload
               else "no GPU was found")
        notes.append(f"n_gpu_layers fixed at 0: {why}")
    return SearchSpace(n_threads=(1, machine.logical_cores),
                       context_choices=context_choices(model, machine),
                       gpu_layers=gpu_layers, extended=extended, fixed=fixed, notes=notes)
