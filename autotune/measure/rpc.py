"""llama.cpp's RPC backend as an offload device on a machine without a GPU, for the tests.

An RPC server serves a machine's CPU backend over TCP; a process that registers it sees a
device of type GPU (`RPC0`, `RPC1`, ...), and `n_gpu_layers` puts layers on it. Its speed
means nothing on one machine, but its loading, memory accounting, allocation failures and
a server that dies mid-run are llama.cpp's own. The project's install builds
llama-cpp-python with `-DGGML_RPC=ON` (see the Makefile); `--check-build` says whether the
installed build has it.

Test-only switch: `AUTOTUNE_RPC_SERVERS=HOST:PORT[,HOST:PORT...]` makes every process that
lists devices (the tuner, `bench`, each trial worker) register those servers before a model
loads. Jarvis itself never does: what a study measures on RPC devices is a test of the
offload path, not settings to export.

Serving, in a process of its own that stops when its parent closes its stdin (or dies):

    python -m autotune.measure.rpc --serve 127.0.0.1:50052 [--memory-limit BYTES]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import resource
import socket
import sys
import threading
from typing import Any

SERVERS_ENV = "AUTOTUNE_RPC_SERVERS"
CONNECT_TIMEOUT_S = 2.0
registered: set[str] = set()


class RpcError(RuntimeError):
    """An RPC server could not be reached or registered (the message is one line)."""


def test_servers() -> tuple[str, ...]:
    """The endpoints the test-only switch names, in order."""
    raw = os.environ.get(SERVERS_ENV, "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RpcError(f"{SERVERS_ENV}: {endpoint!r} is not HOST:PORT")
    return host, int(port)


def reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the server opens (llama.cpp aborts the process if not)."""
    try:
        with socket.create_connection(split_endpoint(endpoint), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def rpc_registry() -> int:
    """The RPC backend's registry entry in the loaded libggml; RpcError if not built in."""
    from autotune.measure.devices import registry

    reg = registry().reg_by_name(b"RPC")
    if not reg:
        raise RpcError("this llama-cpp-python build has no RPC backend (build it with "
                       "CMAKE_ARGS=-DGGML_RPC=ON; `make install` does)")
    return int(reg)


def proc(name: str, *signature: Any) -> Any:
    """A function of the RPC backend, found through the registry as llama.cpp exposes it."""
    from autotune.measure.devices import registry

    address = registry().reg_get_proc_address(rpc_registry(), name.encode())
    if not address:
        raise RpcError(f"the RPC backend has no {name}")
    return ctypes.CFUNCTYPE(*signature)(address)


def register(endpoint: str) -> None:
    """Add one server's devices to this process's registry (once per endpoint)."""
    if endpoint in registered:
        return
    if not reachable(endpoint):
        raise RpcError(f"RPC server {endpoint} is not reachable")
    add = proc("ggml_backend_rpc_add_server", ctypes.c_void_p, ctypes.c_char_p)
    reg = add(endpoint.encode())
    if not reg:
        raise RpcError(f"RPC server {endpoint} reports no devices")
    from autotune.measure.devices import registry

    registry().register(reg)
    registered.add(endpoint)


def register_test_servers() -> None:
    """Register the servers the test-only switch names; none when it is unset."""
    for endpoint in test_servers():
        register(endpoint)


def serve(endpoint: str, memory_limit: int | None = None, threads: int = 1) -> None:
    """Serve this machine's CPU backend at `endpoint` until the parent closes stdin."""
    split_endpoint(endpoint)
    def leave_with_parent() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.read()
        os._exit(0)

    threading.Thread(target=leave_with_parent, daemon=True).start()
    from autotune.measure.devices import registry

    cpu = registry().dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    start = proc("ggml_backend_rpc_start_server", None, ctypes.c_char_p, ctypes.c_char_p,
                 ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))
    devices = (ctypes.c_void_p * 1)(cpu)
    if memory_limit is not None:
        # A device that cannot allocate: past `memory_limit` bytes beyond what the server
        # has mapped now, its buffers fail as a full GPU's do.
        import psutil

        ceiling = psutil.Process().memory_info().vms + memory_limit
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    sys.stdout.flush()
    start(endpoint.encode(), None, threads, 1, devices)  # returns only on failure
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autotune.measure.rpc",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--check-build", action="store_true",
                        help="say whether the installed llama-cpp-python has RPC; status 1 if not")
    parser.add_argument("--serve", metavar="HOST:PORT", help="serve the CPU backend there")
    parser.add_argument("--memory-limit", type=int, metavar="BYTES",
                        help="what the device may allocate, beyond what the server has "
                             "mapped at start (an RLIMIT_AS)")
    parser.add_argument("--threads", type=int, default=1, help="the server's CPU threads")
    args = parser.parse_args(argv)
    try:
        if args.serve:
            serve(args.serve, args.memory_limit, args.threads)
        rpc_registry()
    except RpcError as err:
        print(f"autotune: {err}", file=sys.stderr)
        return 1
    print("llama-cpp-python has the RPC backend")
    return 0


if __name__ == "__main__":
    sys.exit(main())
