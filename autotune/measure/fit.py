"""Which layers fit on the offload devices, placed as llama.cpp places them.

llama.cpp offloads `n_gpu_layers` layers counted from the top: the output layer (the
final norm and the output matrix, or the token embedding it is tied to) first, then the
repeating layers from the last down; the input embedding always stays on the CPU. The
offloaded layers are spread over the devices in proportion to each one's free memory,
each whole layer on one device (`llama_model::load_tensors`, split mode "layer"). Each
repeating layer's K and V cache goes with it: the window times K's and V's widths, in
f16 or f32. Weights come from the GGUF's own tensor table, so the estimate is the
file's bytes, not a rule of thumb; what the compute graph takes on a device is not
estimated but left to the margin (`DEFAULT_MARGIN`, llama.cpp's own `--fit` default).

Example:
    >>> costs = layer_costs(demo_model_path())
    >>> fit = check_fit(costs, settings, devices=(rpc0,), margin=2**30)
    >>> fit.ok, fit.describe()
    (True, 'RPC0 needs 48.2 MiB of 23105.0 MiB')
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
from dataclasses import dataclass

from autotune.measure.devices import Device
from autotune.measure.gguf_header import read_header
from autotune.measure.model import tensor_bytes
from autotune.measure.settings import Settings

MIB = 2**20
DEFAULT_MARGIN = 2**30  # what llama.cpp's --fit leaves free on each device by default
# llama.cpp pads the context it allocates K and V for up to a multiple of this.
CTX_PAD = 256
LAYER_TENSOR = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class LayerCosts:
    """What each offloadable layer of one model file takes on a device."""

    repeating: tuple[int, ...]  # weight bytes of blk.0, blk.1, ...
    output: int  # the output layer's weight bytes
    kv_width: int  # K plus V elements per token and layer (heads_kv x (key + value dim))

    @property
    def n_layers(self) -> int:
        return len(self.repeating)

    def kv_bytes(self, context_window: int, f16_kv: bool = True) -> int:
        """One layer's K and V cache at a window (padded as llama.cpp pads it)."""
        padded = -(-context_window // CTX_PAD) * CTX_PAD
        return padded * self.kv_width * (2 if f16_kv else 4)


def layer_costs(path: str | os.PathLike[str]) -> LayerCosts:
    """Per-layer bytes from a GGUF file's tensor table and attention metadata."""
    from pathlib import Path

    file = Path(path)
    header = read_header(file)
    fields = header.fields
    arch = fields.get("general.architecture")
    count = fields.get(f"{arch}.block_count")
    layers = count if isinstance(count, list) else [count]
    n_layers = max((n for n in layers if isinstance(n, int)), default=0)
    repeating = [0] * n_layers
    named: dict[str, int] = {}
    for tensor in header.tensors:
        size = tensor_bytes(tensor, file)
        match = LAYER_TENSOR.match(tensor.name)
        if match and int(match.group(1)) < n_layers:
            repeating[int(match.group(1))] += size
        else:
            named[tensor.name] = size
    output = named.get("output_norm.weight", 0) + named.get(
        "output.weight", named.get("token_embd.weight", 0))  # a tied output copies the embedding

    def number(key: str, default: int) -> int:
        value = fields.get(f"{arch}.{key}")
        value = max(value) if isinstance(value, list) and value else value
        return int(value) if isinstance(value, int) and value > 0 else default

    heads = number("attention.head_count", 1)
    heads_kv = number("attention.head_count_kv", heads)
    head_dim = number("embedding_length", 0) // heads
    width = heads_kv * (number("attention.key_length", head_dim)
                        + number("attention.value_length", head_dim))
    return LayerCosts(repeating=tuple(repeating), output=output, kv_width=width)


def offloaded_layers(n_layers: int, n_gpu_layers: int) -> range:
    """The layer indices on the devices: n_layers is the output layer's index."""
    count = n_layers + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layers + 1)
    return range(n_layers + 1 - count, n_layers + 1)


def placement(n_layers: int, n_gpu_layers: int, free: list[int]) -> dict[int, int]:
    """Layer index -> device index, as llama.cpp splits layers by the devices' free memory."""
    layers = offloaded_layers(n_layers, n_gpu_layers)
    if not free or not layers:
        return {}
    total = float(sum(free)) or 1.0
    splits, running = [], 0.0
    for bytes_free in free:
        running += bytes_free
        splits.append(running / total)
    start, count = layers.start, len(layers)
    return {il: min(bisect.bisect_right(splits, (il - start) / count), len(free) - 1)
            for il in layers}


def device_needs(costs: LayerCosts, settings: Settings, devices: tuple[Device, ...]
                 ) -> list[int]:
    """Bytes each device takes for `settings`: its layers' weights and K/V cache."""
    needs = [0] * len(devices)
    kv = costs.kv_bytes(settings.context_window, settings.f16_kv)
    where = placement(costs.n_layers, settings.n_gpu_layers, [d.free_bytes for d in devices])
    for layer, device in where.items():
        if layer == costs.n_layers:
            needs[device] += costs.output
        else:
            needs[device] += costs.repeating[layer] + kv
    return needs


@dataclass(frozen=True)
class Fit:
    """Whether a configuration's offloaded layers fit, device by device."""

    needs: tuple[tuple[str, int, int], ...]  # (device, bytes needed, bytes it may take)
    budget: int | None = None  # the GPU memory budget over all devices, if any

    @property
    def total(self) -> int:
        return sum(need for _, need, _ in self.needs)

    @property
    def ok(self) -> bool:
        within = all(need <= room for _, need, room in self.needs)
        return within and (self.budget is None or self.total <= self.budget)

    def describe(self) -> str:
        """`RPC0 needs 48.2 MiB of 23105.0 MiB` per device, and the budget when set."""
        parts = [f"{name} needs {need / MIB:.1f} MiB of {max(room, 0) / MIB:.1f} MiB"
                 for name, need, room in self.needs if need]
        if self.budget is not None:
            parts.append(f"{self.total / MIB:.1f} MiB in all against the "
                         f"{self.budget / MIB:.1f} MiB GPU memory budget")
        return "; ".join(parts) or "nothing offloaded"


def check_fit(costs: LayerCosts, settings: Settings, devices: tuple[Device, ...],
              margin: int = DEFAULT_MARGIN, budget: int | None = None) -> Fit:
    """The fit of `settings` on `devices`, each keeping `margin` free, all within `budget`."""
    needs = device_needs(costs, settings, devices)
    rows = zip(devices, needs, strict=True)
    return Fit(tuple((d.name, need, d.free_bytes - margin) for d, need in rows), budget)


def max_layers(costs: LayerCosts, settings: Settings, devices: tuple[Device, ...],
               margin: int = DEFAULT_MARGIN, budget: int | None = None) -> int:
    """The most layers that fit with `settings`' window and cache type: 0 to all (the
    repeating layers and the output layer, n_layers + 1)."""
    for layers in range(costs.n_layers + 1, 0, -1):
        if check_fit(costs, dataclasses.replace(settings, n_gpu_layers=layers), devices,
                     margin, budget).ok:
            return layers
    return 0


@dataclass(frozen=True)
class OffloadPlan:
    """What the search may put on the offload devices: their free memory less a margin,
    and the GPU memory budget over them all."""

    costs: LayerCosts
    devices: tuple[Device, ...]
    margin: int = DEFAULT_MARGIN
    budget: int | None = None

    def check(self, settings: Settings) -> Fit:
        return check_fit(self.costs, settings, self.devices, self.margin, self.budget)

    def max_layers(self, settings: Settings) -> int:
        return max_layers(self.costs, settings, self.devices, self.margin, self.budget)

    @property
    def all_layers(self) -> int:
        """n_gpu_layers that offloads everything: the repeating layers and the output."""
        return self.costs.n_layers + 1
