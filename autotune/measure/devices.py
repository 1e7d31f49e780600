"""The devices llama.cpp itself sees: the ggml backend registry of the libggml libllama uses.

Whatever backend the installed llama-cpp-python was built with (CUDA, ROCm, Vulkan, Metal,
SYCL, RPC) registers its devices there, each with a type and its free and total memory,
so offload is decided from the registry rather than from one vendor's driver.

The registry is reached through libllama's own handle (each function looked up with
ctypes' public `prototype((name, library))`), whose symbol look-up searches the libraries it
was linked with: a wheel cannot hold symbolic links, so it ships libggml.so
and libggml.so.0 as two copies, and `llama_cpp._ggml` loads the one libllama does not use.
A device registered in that copy's registry is one no model ever loads onto. The ctypes
declarations follow `ggml-backend.h` of llama-cpp-python 0.3.36 (`ggml_backend_dev_count`,
`_get`, `_name`, `_description`, `_type`, `_memory`); the props struct is not read, since
its layout has changed between versions. A device that reports 0 bytes free and 0 total
says nothing about itself and is left out.

Example:
    >>> [d.name for d in registry_devices()]  # a CPU-only build
    ['CPU']
    >>> offload_devices()
    ()
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache
from typing import Any

# enum ggml_backend_dev_type, in the header's order.
DEVICE_TYPES = ("cpu", "gpu", "igpu", "accel", "meta")
OFFLOAD_TYPES = ("gpu", "igpu")


@dataclass(frozen=True)
class Device:
    """One device of the registry, as llama.cpp reports it."""

    name: str  # the registry's own name: CUDA0, Metal, ROCm0, Vulkan0, RPC0, CPU
    description: str
    kind: str  # one of DEVICE_TYPES
    total_bytes: int
    free_bytes: int

    @property
    def offloads(self) -> bool:
        """Layers can be put on it: a GPU, dedicated or integrated."""
        return self.kind in OFFLOAD_TYPES

    def describe(self) -> str:
        """`RPC0 (gpu, 127.0.0.1:50052, 23.4 GiB free of 23.4 GiB)`."""
        gib = 2**30
        return (f"{self.name} ({self.kind}, {self.description}, {self.free_bytes / gib:.1f} "
                f"GiB free of {self.total_bytes / gib:.1f} GiB)")


class Registry:
    """The backend registry's functions, each looked up through libllama's own handle."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        def function(name: str, restype: Any, *argtypes: Any) -> Any:
            return ctypes.CFUNCTYPE(restype, *argtypes)((name, lib))

        pointer, size, text = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
        self.dev_count = function("ggml_backend_dev_count", size)
        self.dev_get = function("ggml_backend_dev_get", pointer, size)
        self.dev_name = function("ggml_backend_dev_name", text, pointer)
        self.dev_description = function("ggml_backend_dev_description", text, pointer)
        self.dev_type = function("ggml_backend_dev_type", ctypes.c_int, pointer)
        self.dev_memory = function("ggml_backend_dev_memory", None, pointer,
                                   ctypes.POINTER(size), ctypes.POINTER(size))
        self.dev_by_type = function("ggml_backend_dev_by_type", pointer, ctypes.c_int)
        self.reg_by_name = function("ggml_backend_reg_by_name", pointer, text)
        self.reg_get_proc_address = function("ggml_backend_reg_get_proc_address", pointer,
                                             pointer, text)
        self.register = function("ggml_backend_register", None, pointer)


@cache
def registry() -> Registry:
    """The registry of the very libggml libllama loaded."""
    from llama_cpp.llama_cpp import _lib as libllama

    return Registry(libllama)


def text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


def registry_devices() -> list[Device]:
    """Every device the registry holds now, in its order; [] when llama_cpp cannot load."""
    try:
        lib = registry()
    except Exception:  # no library, or one without a registry: no devices to offer
        return []
    devices = []
    for index in range(lib.dev_count()):
        handle = lib.dev_get(index)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.dev_memory(handle, ctypes.byref(free), ctypes.byref(total))
        if free.value == 0 and total.value == 0:
            continue
        kind = lib.dev_type(handle)
        devices.append(Device(
            name=text(lib.dev_name(handle)),
            description=text(lib.dev_description(handle)),
            kind=DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else f"type {kind}",
            total_bytes=int(total.value), free_bytes=int(free.value)))
    return devices


def offload_devices() -> tuple[Device, ...]:
    """The devices layers can go to, as llama.cpp spreads them (the registry's order)."""
    return tuple(d for d in registry_devices() if d.offloads)
