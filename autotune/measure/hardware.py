"""The machine: cores and memory (psutil), NVIDIA GPUs (pynvml), the build's GPU offload."""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass
from functools import cache

import psutil


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Hardware:
    """What a study records about the machine it ran on."""

    host: str
    system: str
    machine: str
    cpu: str
    physical_cores: int
    logical_cores: int
    total_memory_bytes: int
    available_memory_bytes: int
    gpus: tuple[Gpu, ...]
    gpu_offload: bool
    llama_cpp_version: str

    @property
    def can_offload(self) -> bool:
        """GPU layers are worth searching: the build offloads and a GPU is present."""
        return self.gpu_offload and bool(self.gpus)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Hardware:
        """A kept record back (see autotune.measure.records.from_mapping)."""
        from autotune.measure.records import from_mapping

        return from_mapping(cls, data, {"gpus": lambda gpus: tuple(
            from_mapping(Gpu, gpu) for gpu in gpus)})


def detect() -> Hardware:
    """Describe this machine; a missing NVIDIA driver simply means no GPUs."""
    memory = psutil.virtual_memory()
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    return Hardware(
        host=platform.node() or "localhost",
        system=platform.system(),
        machine=platform.machine(),
        cpu=cpu_name(),
        physical_cores=psutil.cpu_count(logical=False) or logical,
        logical_cores=logical,
        total_memory_bytes=memory.total,
        available_memory_bytes=memory.available,
        gpus=tuple(nvidia_gpus()),
        gpu_offload=gpu_offload_supported(),
        llama_cpp_version=llama_cpp_version(),
    )


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def nvml_ready() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library, no device: all mean "no GPU"
        return False
    return True


def nvidia_gpus() -> list[Gpu]:
    if not nvml_ready():
        return []
    import pynvml

    gpus = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        gpus.append(Gpu(index, name, int(memory.total), int(memory.free)))
    return gpus


def gpu_memory_used(pid: int | None = None) -> int | None:
    """GPU memory in use, by `pid` where the driver tells per process, else by all; None: no GPU."""
    if not nvml_ready():
        return None
    import pynvml

    total = 0
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        if pid is not None:
            try:
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                total += sum(int(p.usedGpuMemory or 0) for p in procs if p.pid == pid)
                continue
            except pynvml.NVMLError:
                pass
        total += int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    return total


def gpu_memory_free() -> int | None:
    """Free memory summed over GPUs; None when there is no GPU."""
    gpus = nvidia_gpus()
    return sum(g.free_bytes for g in gpus) if gpus else None


@cache
def gpu_offload_supported() -> bool:
    """Whether the installed llama-cpp-python build can put layers on a GPU."""
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # an unloadable library offloads nothing
        return False


def llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:
        return "unknown"
