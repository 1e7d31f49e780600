"""The machine: cores and memory (psutil), the offload devices llama.cpp sees (its backend
registry: CUDA, ROCm, Vulkan, Metal, RPC alike), NVIDIA detail (pynvml), the build's offload.

A study belongs to a kind of machine (`HardwareClass`), not to one host: any host whose
class is the same may add trials to it, so a fleet of identical machines tunes one study.

Example:
    >>> kind = HardwareClass("Linux", "x86_64", "test cpu", physical_cores=2, logical_cores=4,
    ...                      memory_gib=16, gpus=(), gpu_offload=False, llama_cpp_version="0.3.36")
    >>> kind.label, len(kind.digest)
    ('2c4t-16g', 8)
    >>> kind.differences(dataclasses.replace(kind, physical_cores=4, gpus=("NVIDIA L4 (22 GiB)",)))
    ['physical cores: 2, not 4', 'GPUs: none, not NVIDIA L4 (22 GiB)']
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass
from functools import cache

import psutil

from autotune.measure.devices import Device, offload_devices
from autotune.measure.mapping import from_mapping

# Every trial records the host that measured it; tests (and a machine whose node name is
# not the name it is known by) set the host's name here.
HOST_ENV = "AUTOTUNE_HOST"
GIB = 2**30


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
    gpus: tuple[Gpu, ...]  # NVIDIA GPUs as pynvml tells them (memory per process)
    gpu_offload: bool
    llama_cpp_version: str
    # The devices llama.cpp can put layers on (GPU or integrated GPU), in its own order.
    devices: tuple[Device, ...] = ()

    @property
    def can_offload(self) -> bool:
        """GPU layers are worth searching: the build offloads and llama.cpp sees a GPU."""
        return self.gpu_offload and bool(self.devices)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Hardware:
        """A kept record back (see autotune.measure.mapping.from_mapping); a record from
        before devices were read lists none."""
        return from_mapping(cls, data, {
            "gpus": lambda gpus: tuple(from_mapping(Gpu, gpu) for gpu in gpus),
            "devices": lambda devices: tuple(from_mapping(Device, d) for d in devices)})

    def offload_note(self) -> str:
        """One line when a GPU is present that this llama-cpp-python build cannot use."""
        if self.can_offload:
            return ""
        if self.gpus:
            found, flags = self.gpus[0].name, "-DGGML_CUDA=on"
        elif self.system == "Darwin" and self.machine == "arm64":
            found, flags = "Apple Silicon", "-DGGML_METAL=on"
        else:
            return ""
        return (f"this llama-cpp-python build cannot offload, but the machine has {found}: "
                f'reinstall it with CMAKE_ARGS="{flags}" (see the README\'s GPU section)')


def detect() -> Hardware:
    """Describe this machine; a missing NVIDIA driver simply means no GPUs."""
    memory = psutil.virtual_memory()
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    return Hardware(
        host=host_name(),
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
        devices=detect_devices(),
    )


def detect_devices() -> tuple[Device, ...]:
    """The offload devices, the test-only RPC servers registered first (autotune.measure.rpc);
    one that cannot be reached is simply not among them (its trials say so)."""
    from autotune.measure import rpc

    for endpoint in rpc.test_servers():
        with contextlib.suppress(rpc.RpcError):
            rpc.register(endpoint)
    return offload_devices()


def host_name() -> str:
    """This host's name: $AUTOTUNE_HOST, else the node name."""
    return os.environ.get(HOST_ENV, "").strip() or platform.node() or "localhost"


@dataclass(frozen=True)
class HardwareClass:
    """What makes two machines interchangeable for a study: the same class measures alike.

    Memory is rounded to whole GiB (identical machines report a few MiB apart); free
    memory, host name and GPU indexes are not part of it.
    """

    system: str
    machine: str
    cpu: str
    physical_cores: int
    logical_cores: int
    memory_gib: int
    gpus: tuple[str, ...]  # "NAME (N GiB)", one per GPU, sorted
    gpu_offload: bool
    llama_cpp_version: str
    devices: tuple[str, ...] = ()  # "NAME kind (N GiB)", one per offload device, in order

    @property
    def label(self) -> str:
        """Short and readable: cores, memory and GPUs, e.g. `8c16t-64g-2xA100`."""
        text = f"{self.physical_cores}c{self.logical_cores}t-{self.memory_gib}g"
        if self.gpus:
            text += f"-{len(self.gpus)}x{gpu_model(self.gpus[0])}"
        return text

    @property
    def digest(self) -> str:
        """8 hex digits that tell apart classes of one label (another CPU, another build)."""
        data = self.to_dict(name=False)
        if not self.devices:  # the digest of a class from before devices were read
            data.pop("devices")
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def name(self) -> str:
        """The label and the digest: the part of a default study name after the `@`."""
        return f"{self.label}-{self.digest}"

    def differences(self, other: HardwareClass) -> list[str]:
        """What differs, each as `what: ours, not theirs`."""
        shown = {"memory_gib": "memory (GiB)", "gpus": "GPUs", "devices": "offload devices",
                 "llama_cpp_version": "llama-cpp-python", "gpu_offload": "GPU offload",
                 "machine": "architecture", "system": "system", "cpu": "CPU"}
        found = []
        for spec in dataclasses.fields(self):
            mine, theirs = getattr(self, spec.name), getattr(other, spec.name)
            if mine != theirs:
                what = shown.get(spec.name, spec.name.replace("_", " "))
                if isinstance(mine, tuple):
                    mine, theirs = ", ".join(mine) or "none", ", ".join(theirs) or "none"
                found.append(f"{what}: {mine}, not {theirs}")
        return found

    def to_dict(self, name: bool = True) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["gpus"] = list(self.gpus)
        data["devices"] = list(self.devices)
        return {**data, "name": self.name} if name else data

    @classmethod
    def from_dict(cls, data: object) -> HardwareClass:
        """A kept record back; its `name` is derived again, not read."""
        return from_mapping(cls, data, {"gpus": tuple, "devices": tuple})


def machine_class(hardware: Hardware) -> HardwareClass:
    """The class of the machine `hardware` describes."""
    return HardwareClass(
        system=hardware.system, machine=hardware.machine, cpu=hardware.cpu,
        physical_cores=hardware.physical_cores, logical_cores=hardware.logical_cores,
        memory_gib=round(hardware.total_memory_bytes / GIB),
        gpus=tuple(sorted(f"{g.name} ({round(g.total_bytes / GIB)} GiB)"
                          for g in hardware.gpus)),
        gpu_offload=hardware.gpu_offload, llama_cpp_version=hardware.llama_cpp_version,
        devices=tuple(f"{d.name} {d.kind} ({round(d.total_bytes / GIB)} GiB)"
                      for d in hardware.devices))


def gpu_model(described: str) -> str:
    """The model in a GPU's name, for a label: `NVIDIA H100 80GB HBM3 (80 GiB)` -> `H100`."""
    words = re.findall(r"[A-Za-z0-9]+", described.split(" (")[0])
    model = next((w for w in words if any(c.isdigit() for c in w)), words[-1] if words else "gpu")
    return model[:12]


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
