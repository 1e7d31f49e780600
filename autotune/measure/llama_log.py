"""What llama.cpp says while a model loads: each device's buffers, and the last errors.

llama.cpp logs every buffer it allocates (`load_tensors: CUDA0 model buffer size =
1234.56 MiB`, `llama_kv_cache: RPC0[127.0.0.1:50052] KV buffer size = ...`, `sched_reserve:
... compute buffer size = ...`): the only per-device account of memory any backend gives,
pynvml's NVIDIA figures aside. A load that fails on a device says why only in the log
(`unable to allocate RPC0 buffer`), which llama-cpp-python hides while it loads. So the
worker takes llama.cpp's log through its own callback: buffer lines are parsed, the
last warnings and errors kept for the failure report, and everything is passed on to
stderr when the settings ask for verbose output, as llama-cpp-python would.

Example:
    >>> log = LlamaLog.install(verbose=False)
    >>> log.feed("load_tensors: RPC0[127.0.0.1:50052] model buffer size =    10.57 MiB\\n")
    >>> log.buffers
    {'RPC0[127.0.0.1:50052]': {'model': 11083448}}
"""

from __future__ import annotations

import ctypes
import re
import sys
from collections import deque
from collections.abc import Sequence

from autotune.measure.devices import Device

BUFFER_LINE = re.compile(r":\s*(\S+)\s+(model|KV|compute|output) buffer size\s*=\s*([\d.]+) MiB")
GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR = 3, 4
KEPT_ERRORS = 8
MIB = 2**20


def host_buffer(name: str) -> bool:
    """Buffers in the machine's own memory: the CPU's, and a GPU backend's pinned host copy."""
    return name.startswith("CPU") or name.endswith("_Host")


class LlamaLog:
    """llama.cpp's log, read line by line as it comes."""

    installed: LlamaLog | None = None

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.buffers: dict[str, dict[str, int]] = {}
        self.errors: deque[str] = deque(maxlen=KEPT_ERRORS)
        self.partial = ""
        self.callback: object = None  # kept alive as long as llama.cpp may call it

    @classmethod
    def install(cls, verbose: bool) -> LlamaLog:
        """Take llama.cpp's log from now on (once per process; later calls reuse it)."""
        if cls.installed is not None:
            cls.installed.verbose = verbose
            return cls.installed
        import llama_cpp

        log = cls(verbose)

        @llama_cpp.llama_log_callback
        def receive(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            log.feed(text.decode("utf-8", "replace"), level)

        log.callback = receive
        llama_cpp.llama_log_set(receive, ctypes.c_void_p(0))
        cls.installed = log
        return log

    def feed(self, text: str, level: int = 2) -> None:
        if self.verbose:
            sys.stderr.write(text)
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            match = BUFFER_LINE.search(line)
            if match:
                name, kind, mib = match.groups()
                kinds = self.buffers.setdefault(name, {})
                kinds[kind] = kinds.get(kind, 0) + round(float(mib) * MIB)
            elif level >= GGML_LOG_LEVEL_WARN and line.strip():
                self.errors.append(line.strip())



def device_bytes(buffers: dict[str, dict[str, int]]) -> int:
    """What a load put on devices other than the machine's own memory."""
    return sum(sum(kinds.values()) for name, kinds in buffers.items() if not host_buffer(name))


def describe_offload(devices: Sequence[Device], n_gpu_layers: int,
                     buffers: dict[str, dict[str, int]]) -> str:
    """What ran where, in one line: the backend, the devices, what each one held."""
    if not devices:
        return "llama.cpp on the CPU: no GPU device in llama.cpp's backend registry"
    seen = "offload devices " + ", ".join(d.describe() for d in devices)
    if n_gpu_layers == 0:
        return f"llama.cpp on the CPU, no layer offloaded ({seen})"
    held = [f"{name} " + " + ".join(f"{size / MIB:.1f} MiB {kind}"
                                    for kind, size in kinds.items())
            for name, kinds in buffers.items() if not host_buffer(name)]
    layers = "all layers" if n_gpu_layers < 0 else f"{n_gpu_layers} layers"
    return (f"llama.cpp with {layers} offloaded ({seen})"
            + (f": {'; '.join(held)}" if held else ""))
