"""The search space, built from the model and the machine; the guide's advice as baselines.

Core space: n_threads 1..logical cores; n_gpu_layers from 0 to the most layers that fit
on llama.cpp's offload devices (measure/fit.py: their free memory less a margin, within
the GPU memory budget), only when the build offloads and llama.cpp sees a GPU device
(else fixed at 0, and said so); a model that fits only in part is searched over that
partial range, the guide's "balance GPU/CPU layers"; the context window as
powers of two from a floor (`min_context`, 4096 by default) to the model's trained
context, capped so that the model and its f16 KV cache fit in half the available memory;
the context cache on/off, and its size only when on.

The floor is a promise to the user rather than a speed knob: the workload is a sample, and
a real conversation longer than the window overflows it and drops history (the guide's
first spike cause). On a small machine 1024 and 4096 can score within noise, so without a
floor the study would pick the riskier window on a coin toss. The default is the guide's
own window, lowered (and said so in the notes) only when the model's trained context or
the memory budget allows no more. `extended` adds n_batch, n_ubatch, flash attention and
the f16 KV cache.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from autotune.errors import AutotuneError, Option
from autotune.guide import DEFAULTS_LABEL, GUIDE_DEFAULTS
from autotune.measure.fit import DEFAULT_MARGIN, OffloadPlan, layer_costs
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
# The default floor of the context window: the guide's (and the backend's) default.
DEFAULT_MIN_CONTEXT = int(GUIDE_DEFAULTS["context_window"])
MEMORY_SHARE = 0.5
CACHE_SIZE_RANGE = (1, 128)
BATCH_CHOICES = (128, 256, 512, 1024, 2048)
UBATCH_CHOICES = (64, 128, 256, 512)
SMALL_MODEL_PARAMS = 7e9
LARGE_MODEL_PARAMS = 13e9

BASELINE_LABEL = DEFAULTS_LABEL
ADVICE_LABEL = "guide model-size advice"  # the baseline trial of the guide's size advice


@dataclass
class SearchSpace:
    """What the sampler may choose, what is pinned, and why."""

    n_threads: tuple[int, int]
    context_choices: tuple[int, ...]
    gpu_layers: tuple[int, int] | None
    extended: bool
    fixed: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # No window below this is a candidate: a resumed study whose recorded choices go lower
    # keeps them (Optuna's categories cannot change), and runs nothing below it.
    min_context: int = MIN_CONTEXT
    # What may go on the offload devices: every trial is checked against it before it runs.
    offload: OffloadPlan | None = None

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
            values: dict[str, Any] = {**self.fixed, **TrialRecord.read(trial).pinned}

            def pick(name: str, sample: Callable[[], object]) -> None:
                if name not in values:
                    values[name] = sample()

            pick("n_threads", lambda: trial.suggest_int("n_threads", *self.n_threads))
            pick("context_window",
                 lambda: trial.suggest_categorical("context_window", self.context_choices))
            if (layers := self.gpu_layers) is not None:
                pick("n_gpu_layers", lambda: trial.suggest_int("n_gpu_layers", *layers))
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
            fixed=dict(self.fixed), notes=tuple(self.notes), min_context=self.min_context)

    def context_at_least(self, tokens: int) -> int:
        """The smallest allowed window of at least `tokens` (and of the floor), else the
        largest allowed."""
        allowed = [c for c in self.context_choices if c >= self.min_context] or [
            self.context_choices[-1]]
        return next((c for c in allowed if c >= tokens), allowed[-1])

    def baselines(self, model: ModelInfo, machine: Hardware
                  ) -> list[tuple[str, dict[str, object], dict[str, object]]]:
        """The guide's model-size advice, then its defaults: (label, params, pinned) to
        enqueue, in that order.

        `params` are the values inside the search space; `pinned` those outside it, which
        the trial runs as given without recording them as sampled parameters. The advice
        runs first: it is the better start (on the recorded grid, within 5% of the optimum
        at trial 1), and the defaults after it are pruned as soon as they are clearly worse
        (the study module's docstring has the replay's numbers).
        """
        window = self.context_at_least  # inside the space, at or above its floor
        defaults = dict(GUIDE_DEFAULTS, context_window=window(4096))
        advice: dict[str, Any]
        if model.n_params < SMALL_MODEL_PARAMS:
            advice = {"context_window": window(8192),
                      "n_threads": machine.logical_cores, "n_gpu_layers": -1}
        elif model.n_params > LARGE_MODEL_PARAMS:
            advice = {"context_window": window(2048),
                      "n_threads": machine.physical_cores,
                      "n_gpu_layers": (model.n_layers + 1) // 2}
        else:
            advice = {"context_window": window(4096),
                      "n_threads": machine.physical_cores, "n_gpu_layers": -1}
        if self.gpu_layers is not None and (advice["n_gpu_layers"] < 0 or
                                            advice["n_gpu_layers"] > self.gpu_layers[1]):
            advice["n_gpu_layers"] = self.gpu_layers[1]  # all that fit: the rest on the CPU
        advice.update(enable_context_cache=True, max_cache_size=100)
        return [(ADVICE_LABEL, *self.split(advice)),
                (BASELINE_LABEL, *self.split(defaults))]

    def split(self, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Values the space can record as parameters, and the rest (pinned on the trial)."""
        params: dict[str, Any] = {}
        pinned: dict[str, Any] = {}
        for name, value in values.items():
            if name in self.fixed or (name == "n_gpu_layers" and self.gpu_layers is None):
                continue
            if name == "n_gpu_layers" and self.offload is not None and int(value) < 0:
                value = self.offload.all_layers  # -1, "all", is that many layers
            inside = not (name == "n_threads" and not
                          self.n_threads[0] <= int(value) <= self.n_threads[1])
            inside = inside and not (name == "n_gpu_layers" and self.gpu_layers is not None and
                                     not 0 <= int(value) <= self.gpu_layers[1])
            (params if inside else pinned)[name] = value
        return params, pinned


def context_choices(model: ModelInfo, machine: Hardware, floor: int = MIN_CONTEXT
                    ) -> tuple[int, ...]:
    """Powers of two from `floor` (itself first when it is none) up to what the model was
    trained for and the memory budget holds; only the largest when the floor is above it."""
    budget = MEMORY_SHARE * machine.available_memory_bytes - model.size_bytes
    every: list[int] = []
    n_ctx = MIN_CONTEXT
    while n_ctx <= max(MIN_CONTEXT, model.context_length):
        if every and n_ctx * model.kv_bytes_per_token > budget:
            break
        every.append(n_ctx)
        n_ctx *= 2
    if floor >= every[-1]:
        return (every[-1],)
    return tuple(sorted({max(floor, MIN_CONTEXT), *(c for c in every if c > floor)}))


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
                fixed: dict[str, object] | None = None,
                min_context: int = DEFAULT_MIN_CONTEXT, gpu_margin: int = DEFAULT_MARGIN,
                gpu_budget: int | None = None) -> SearchSpace:
    fixed = dict(fixed or {})
    notes = [f"{name} pinned at {format_value(value)}" for name, value in fixed.items()]
    choices = context_choices(model, machine, min_context)
    floor = max(MIN_CONTEXT, min_context)
    if choices[0] < floor:
        why = ("the model's trained context" if choices[-1] >= model.context_length
               else "what half the available memory holds beside the model")
        notes.append(f"context window floor {floor} lowered to {choices[0]}: {why}")
        floor = choices[0]
    pinned = fixed.get("context_window")
    if isinstance(pinned, int) and pinned < floor:
        raise AutotuneError(Option("fixes", f"context_window={pinned}"), " is below the "
                            f"context window's floor {floor}; pass ",
                            Option("min_context", pinned), " as well to measure it")
    gpu_layers, plan = None, None
    if machine.can_offload:
        plan = OffloadPlan(layer_costs(model.path), machine.devices, gpu_margin, gpu_budget)
        gpu_layers, note = offload_range(plan, min(choices))
        notes.append(note)
        if gpu_layers is None and "n_gpu_layers" not in fixed:
            fixed["n_gpu_layers"] = 0
    elif "n_gpu_layers" not in fixed:
        fixed["n_gpu_layers"] = 0
        why = ("this llama-cpp-python build has no GPU offload" if not machine.gpu_offload
               else "llama.cpp sees no GPU device")
        notes.append(f"n_gpu_layers fixed at 0: {why}")
    if machine.offload_note():
        notes.append(machine.offload_note())
    return SearchSpace(n_threads=(1, machine.logical_cores),
                       context_choices=choices, gpu_layers=gpu_layers, extended=extended,
                       fixed=fixed, notes=notes, min_context=floor, offload=plan)


def offload_range(plan: OffloadPlan, smallest_window: int) -> tuple[tuple[int, int] | None, str]:
    """n_gpu_layers' range, 0 to the most layers that fit at the smallest window (a larger
    window's trial that does not fit is not run), and the note that says so."""
    top = plan.max_layers(Settings(context_window=smallest_window, n_threads=1))
    devices = ", ".join(d.describe() for d in plan.devices)
    room = (f"free memory less {plan.margin / 2**20:.0f} MiB each" + (
        f", {plan.budget / 2**20:.0f} MiB GPU memory budget" if plan.budget else ""))
    if top == 0:
        return None, (f"n_gpu_layers fixed at 0: not one layer fits on {devices} ({room})")
    if top < plan.all_layers:
        return (0, top), (f"n_gpu_layers searched 0-{top}: {top} of the model's "
                          f"{plan.all_layers} layers fit on {devices} ({room}); the rest "
                          "stay on the CPU")
    return (0, top), f"n_gpu_layers searched 0-{top} (all layers) on {devices}"
