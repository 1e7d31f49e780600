"""Warm start: a new study begins from the winners of earlier studies of similar models.

When a study is created, the other studies of the same storage are read for ones made on
the same kind of machine (`StudyRecord.machine_class`) with a confirmed winner and a
similar model: the same architecture and a parameter count within a factor of 2. Up to
`LIMIT` of their winners, most recently confirmed first, are enqueued after the guide's
baselines, clipped into this study's space, each labelled `warm start: <study>`. A study
that cannot be read (damaged, foreign, newer) is skipped: an earlier study is a hint, never
a reason to fail.

Example:
    >>> from dataclasses import replace
    >>> small = ModelInfo("m.gguf", "m", "llama", 30, 8192, 576, 9, 3, 98 << 20, "Q4_1",
    ...                   "f" * 16, 135_000_000, None)
    >>> similar(small, replace(small, n_params=250_000_000)), similar(
    ...     small, replace(small, n_params=360_000_000)), similar(
    ...     small, replace(small, architecture="qwen2"))
    (True, False, False)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import optuna

from autotune.measure.hardware import Hardware, machine_class
from autotune.measure.mapping import RecordError
from autotune.measure.model import ModelInfo
from autotune.measure.settings import Settings
from autotune.search.space import (
    BATCH_CHOICES,
    CACHE_SIZE_RANGE,
    UBATCH_CHOICES,
    SearchSpace,
)
from autotune.studies.records import StudyFormatError, StudyRecord

LIMIT = 3
SIZE_FACTOR = 2.0
LABEL = "warm start: "


@dataclass(frozen=True)
class WarmStart:
    """One earlier study's winner, clipped into this space: what to enqueue, and from where."""

    study: str
    params: dict[str, object]
    pinned: dict[str, object]

    @property
    def label(self) -> str:
        return LABEL + self.study


def similar(ours: ModelInfo, theirs: ModelInfo) -> bool:
    """The same architecture, and parameter counts within a factor of SIZE_FACTOR."""
    if ours.architecture != theirs.architecture or min(ours.n_params, theirs.n_params) <= 0:
        return False
    return max(ours.n_params, theirs.n_params) <= SIZE_FACTOR * min(ours.n_params,
                                                                    theirs.n_params)


def warm_starts(storage: optuna.storages.BaseStorage, name: str, model: ModelInfo,
                machine: Hardware, space: SearchSpace,
                baselines: Sequence[dict[str, object]] = (),
                limit: int = LIMIT) -> list[WarmStart]:
    """The earlier winners to enqueue in study `name`, most recent first.

    `baselines` are the configurations already queued (params and pinned together): a
    winner that clips to one of them is not queued twice.
    """
    ours = machine_class(machine)
    found: list[tuple[str, str, Settings]] = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.study_name == name:
            continue
        try:
            record = StudyRecord.from_attrs(summary.study_name, summary.user_attrs)
            if (record.winner is None or record.machine_class != ours
                    or not similar(model, record.model)):
                continue
            found.append((record.winner.confirmed, summary.study_name, record.winner.settings))
        except (StudyFormatError, RecordError, AttributeError, KeyError, TypeError,
                ValueError):
            continue  # damaged or foreign: a hint lost, not a failure
    found.sort(key=lambda row: row[0], reverse=True)
    seen = [dict(b) for b in baselines]
    chosen = []
    for _, study, settings in found:
        try:
            values = clip(settings, space)
        except (KeyError, TypeError, ValueError):
            continue
        if values in seen:
            continue
        seen.append(values)
        params, pinned = space.split(values)
        chosen.append(WarmStart(study, params, pinned))
        if len(chosen) == limit:
            break
    return chosen


def clip(settings: Settings, space: SearchSpace) -> dict[str, object]:
    """An earlier winner's settings moved into `space`: threads and cache size into their
    ranges, the window to the smallest allowed at or above it (never below the floor);
    settings the space pins or does not search are left to it."""
    low, high = space.n_threads
    values: dict[str, object] = {
        "n_threads": min(max(settings.n_threads, low), high),
        "context_window": space.context_at_least(settings.context_window),
        "enable_context_cache": settings.enable_context_cache,
    }
    if settings.enable_context_cache:
        values["max_cache_size"] = min(max(settings.max_cache_size, CACHE_SIZE_RANGE[0]),
                                       CACHE_SIZE_RANGE[1])
    if space.gpu_layers is not None:
        values["n_gpu_layers"] = min(max(settings.n_gpu_layers, space.gpu_layers[0]),
                                     space.gpu_layers[1])
    if space.extended:
        values["n_batch"] = nearest_in_log(BATCH_CHOICES, settings.n_batch)
        values["n_ubatch"] = nearest_in_log(UBATCH_CHOICES, settings.n_ubatch)
        values["flash_attn"] = settings.flash_attn
        values["f16_kv"] = settings.f16_kv
    return {k: v for k, v in values.items() if k not in space.fixed}


def nearest_in_log(choices: Sequence[int], wanted: int) -> int:
    """The choice nearest `wanted` on a log scale (a batch of 384 is between 256 and 512)."""
    return min(choices, key=lambda c: abs(math.log2(c / max(1, wanted))))
