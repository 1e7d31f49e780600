"""llama.cpp RPC servers on 127.0.0.1, for the tests of the offload path (autotune.measure.rpc).

Each server is a subprocess serving this machine's CPU backend as a device of type GPU;
it stops by itself when the test process closes its stdin or dies. The test process never
registers a server itself: a registered device whose server is gone aborts the process
that asks it anything, so only subprocesses (the CLI, the trial workers) register them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from pg_server import free_port

from autotune.measure.devices import Device
from autotune.measure.rpc import SERVERS_ENV

START_S = 60.0


class RpcServer:
    """One server: started, waited for until it accepts connections, killed."""

    def __init__(self, memory_limit: int | None = None) -> None:
        self.endpoint = f"127.0.0.1:{free_port()}"
        limit = ["--memory-limit", str(memory_limit)] if memory_limit is not None else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "autotune.measure.rpc", "--serve", self.endpoint, *limit],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.wait_up()

    def wait_up(self) -> None:
        host, port = self.endpoint.split(":")
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"RPC server {self.endpoint} exited: "
                                   f"{self.process.stderr.read().decode()[-500:]}")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)  # polls for the server's socket, bounded by START_S
        raise RuntimeError(f"RPC server {self.endpoint} not up after {START_S:g} s")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stderr):
            stream.close()


def servers_env(*servers: RpcServer) -> dict[str, str]:
    return {SERVERS_ENV: ",".join(s.endpoint for s in servers)}


def devices_seen(*servers: RpcServer) -> tuple[Device, ...]:
    """The offload devices a process with these servers registered detects."""
    code = ("import dataclasses, json; from autotune.measure.hardware import detect; "
            "print(json.dumps([dataclasses.asdict(d) for d in detect().devices]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **servers_env(*servers)}, check=True, timeout=120)
    return tuple(Device(**d) for d in json.loads(done.stdout.strip().splitlines()[-1]))
