"""The machine description, on the real machine (no GPU needed)."""

from __future__ import annotations

import json

import psutil

from autotune.measure.hardware import detect, gpu_memory_free, gpu_memory_used


def test_detect_this_machine() -> None:
    machine = detect()
    assert machine.physical_cores == (psutil.cpu_count(logical=False) or psutil.cpu_count())
    assert machine.logical_cores >= machine.physical_cores >= 1
    assert 0 < machine.available_memory_bytes <= machine.total_memory_bytes
    assert machine.llama_cpp_version == "0.3.36"
    assert isinstance(machine.gpu_offload, bool)
    assert isinstance(machine.gpus, tuple)
    assert machine.can_offload == (machine.gpu_offload and bool(machine.gpus))
    json.dumps(machine.to_dict())


def test_gpu_memory_queries_agree_with_detection() -> None:
    gpus = detect().gpus
    assert (gpu_memory_free() is None) == (not gpus)
    if not gpus:
        assert gpu_memory_used() is None
