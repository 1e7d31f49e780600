"""One latency trial: spawn a worker, read its stream, enforce limits, classify the end.

The parent never imports llama.cpp for a trial: a crash, an abort or an out-of-memory
kill inside llama.cpp takes down the worker only, and the result says which it was.

Example:
    >>> result = run_trial(TrialSpec(demo_model_path(), Settings(n_threads=2), workload))
    >>> result.status, len(result.requests) == len(workload.requests)
    (<Status.OK: 'ok'>, True)
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from autotune.measure.hardware import gpu_memory_free, gpu_memory_used
from autotune.measure.llama_log import device_bytes
from autotune.measure.records import (
    BadEvent,
    Done,
    Loaded,
    LoadFailed,
    PassEnd,
    RequestRecord,
    Status,
    ThreadProbe,
    TrialResult,
    Warmup,
    decode_event,
)
from autotune.measure.settings import Settings
from autotune.measure.workload import Workload, requests_from_dicts

__all__ = ["TrialResult", "TrialSpec", "run_trial"]
STDERR_LINES = 40
SAMPLE_EVERY_S = 0.2
# Other processes' CPU while a worker ran, in percent of one core, above which the machine
# was busy: the measurement is not the configuration's alone (search/drift.py).
BUSY_PERCENT = 50.0
LOW_MEMORY_FRACTION = 0.05
# A short assistant reply: with fewer tokens, prompt work and cache copies dominate and
# decoding, where thread settings matter most, is under-weighted.
DEFAULT_TOKENS = 32
# What llama.cpp says when an offload device is gone: a killed RPC server mid-run, one
# never up, a GPU that fell off the bus or reset.
DEVICE_WORDS = ("remote rpc server crashed", "failed to connect to", "rpc handshake failed",
                "is not reachable", "device lost", "devicelost",
                "cuda error: unspecified launch failure", "hip error", "an illegal memory access")
# An allocation that failed on an offload device rather than in the machine's memory.
DEVICE_OOM_WORDS = ("cudamalloc failed", "out of device memory", "erroroutofdevicememory",
                    "hipmalloc failed")
DEVICE_BUFFER = re.compile(r"(?:allocate|allocating) (?!CPU)[A-Za-z_]*\d*(?:\[[^\]]*\])? buffer")
# A failed GGML_ASSERT attaches gdb to print a backtrace: slow, and its lines push the
# assertion itself (the reason, say "Remote RPC server crashed") out of the kept tail.
NO_BACKTRACE = {"GGML_NO_BACKTRACE": "1"}
OOM_WORDS = ("out of memory", "failed to allocate", "cudamalloc failed", "memoryerror",
             "cannot allocate memory", "std::bad_alloc", "unable to allocate")
# Limits when the user gives only the trial's time limit: a request may go quiet for a tenth
# of it (at least STALL_FLOOR_S) before the worker counts as hung. Before the model has
# loaded, the silence allowed grows with the file: start-up plus reading it from a slow disk.
STALL_FRACTION = 0.1
STALL_FLOOR_S = 120.0
STARTUP_S = 60.0
SLOW_DISK_BYTES_PER_S = 50e6
# How long a worker that closed its event stream may take to exit, and a killed one to be
# reaped, before the parent reports it and moves on rather than waiting forever.
EXIT_GRACE_S = 5.0
REAP_S = 10.0
# The worker runs with the directory holding the very `autotune` package the parent
# imported first on sys.path, never the current directory (`python -m` would put the
# cwd there, and a json.py or autotune/ beside a downloaded model would be imported).
PACKAGE_ROOT = str(Path(__file__).absolute().parents[2])
BOOTSTRAP = ("import sys; sys.path[:] = [sys.argv.pop(1), *(p for p in sys.path if p)]; "
             "from autotune.measure.worker import main; main()")


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs: plain data, sent to it as one JSON line."""

    model_path: str
    settings: Settings
    workload: Workload
    tokens_per_request: int = DEFAULT_TOKENS
    passes: int = 1
    clients: int = 1
    probe_threads: int | None = None
    timeout_s: float = 900.0
    stall_s: float | None = None  # None: follows timeout_s (see stall_limit_s)
    load_timeout_s: float | None = None  # None: follows the model's size (load_limit_s)

    def stall_limit_s(self) -> float:
        """Longest silence between events once the model has loaded."""
        if self.stall_s is not None:
            return self.stall_s
        return min(self.timeout_s, max(STALL_FLOOR_S, STALL_FRACTION * self.timeout_s))

    def load_limit_s(self) -> float:
        """Longest wait for the model to load: start-up plus a slow disk reading the file."""
        if self.load_timeout_s is not None:
            return self.load_timeout_s
        try:
            size = os.path.getsize(self.model_path)
        except OSError:  # the worker reports a missing file itself, at once
            size = 0
        return min(self.timeout_s,
                   max(STARTUP_S, self.stall_limit_s()) + size / SLOW_DISK_BYTES_PER_S)

    def to_wire(self) -> str:
        """The one JSON line the worker reads: what it runs, not the parent's limits."""
        return json.dumps({
            "model_path": str(self.model_path), "settings": self.settings.to_dict(),
            "requests": [r.to_dict() for r in self.workload.requests],
            "workload": self.workload.name, "tokens_per_request": self.tokens_per_request,
            "passes": self.passes, "clients": self.clients,
            "probe_threads": self.probe_threads})

    @classmethod
    def from_wire(cls, line: str) -> TrialSpec:
        data = json.loads(line)
        return cls(data["model_path"], Settings.from_dict(data["settings"]),
                   Workload(data["workload"], tuple(requests_from_dicts(data["requests"]))),
                   tokens_per_request=int(data["tokens_per_request"]),
                   passes=int(data["passes"]), clients=int(data["clients"]),
                   probe_threads=data["probe_threads"])


OnRequest = Callable[[RequestRecord], bool]
Ended = tuple[Status, str] | None  # (status, reason) when the parent decided how a trial ended


class ResourceSampler(threading.Thread):
    """Samples the worker's memory and CPU (psutil) and GPU memory (pynvml) while it runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stopped = threading.Event()
        self.peak_rss = 0
        self.cpu: list[float] = []
        self.others: list[float] = []
        self.gpu_peak: int | None = None
        self.gpu_free_min: int | None = None
        self.min_available = psutil.virtual_memory().available

    def run(self) -> None:
        try:
            process = psutil.Process(self.pid)
            process.cpu_percent()
            psutil.cpu_percent()
            cores = psutil.cpu_count() or 1
            while not self.stopped.wait(SAMPLE_EVERY_S):
                self.peak_rss = max(self.peak_rss, process.memory_info().rss)
                mine = process.cpu_percent()
                self.cpu.append(mine)
                # What the rest of the machine used meanwhile, in percent of one core.
                self.others.append(max(0.0, psutil.cpu_percent() * cores - mine))
                self.min_available = min(self.min_available, psutil.virtual_memory().available)
                used = gpu_memory_used(self.pid)
                if used is not None:
                    self.gpu_peak = max(self.gpu_peak or 0, used)
                    free = gpu_memory_free()
                    if free is not None:
                        self.gpu_free_min = free if self.gpu_free_min is None \
                            else min(self.gpu_free_min, free)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return


def read_lines(stream, sink: queue.Queue) -> None:
    """Queue each line (bad bytes read as U+FFFD), then None at the end, whatever happens."""
    try:
        with contextlib.suppress(OSError, ValueError):  # closed under us: its end too
            for line in stream:
                sink.put(line)
    finally:
        sink.put(None)


def keep_tail(stream, tail: deque[str]) -> None:
    with contextlib.suppress(OSError, ValueError):  # closed under us: the end as well
        tail.extend(stream)


def send_spec(stdin, line: str) -> None:
    """Write the spec; run in a thread, so a worker that never reads cannot block the
    parent past the trial's deadline (the write fails once the worker is killed)."""
    with contextlib.suppress(OSError, ValueError):  # it died or was killed: its status tells
        stdin.write(line)
        stdin.flush()


def run_trial(spec: TrialSpec, on_request: OnRequest | None = None) -> TrialResult:
    """Run one trial in a fresh worker process and return its plain result record.

    `on_request` sees each request record as it arrives; returning True stops the trial
    at once (its worker is killed) and the result's status is PRUNED.
    """
    started = time.perf_counter()
    result = TrialResult(status=Status.FAILED, settings=spec.settings,
                         measured_from=time.time())
    process = subprocess.Popen(
        worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **NO_BACKTRACE})
    result.pid = process.pid
    stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
    lines: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True),
               threading.Thread(target=keep_tail, args=(process.stderr, stderr_tail),
                                daemon=True)]
    writer = threading.Thread(target=send_spec, daemon=True,
                              args=(process.stdin, spec.to_wire() + "\n"))
    sampler = ResourceSampler(process.pid)
    for thread in (*threads, writer, sampler):
        thread.start()
    try:
        ended, done = follow(lines, result, spec, started, on_request)
    except BaseException:
        kill_group(process)  # never leave a worker behind, even on Ctrl-C
        raise
    returncode, ended = end_worker(process, ended)
    result.ended_at = time.perf_counter()
    writer.join(timeout=REAP_S)
    if not writer.is_alive():  # else it holds stdin's lock: only an unkillable worker
        close_quietly(process.stdin)
    sampler.stopped.set()
    for thread in threads:
        thread.join(timeout=2)
    close_quietly(process.stdout)
    close_quietly(process.stderr)
    result.stderr_tail = "".join(stderr_tail)[-4000:]
    result.returncode = returncode
    result.peak_rss_bytes = max([sampler.peak_rss, *[r.rss_bytes for r in result.requests]])
    result.cpu_percent_mean = sum(sampler.cpu) / len(sampler.cpu) if sampler.cpu else None
    result.other_cpu_percent_mean = (sum(sampler.others) / len(sampler.others)
                                     if sampler.others else None)
    # pynvml tells an NVIDIA GPU's use per process; any other device's is what llama.cpp
    # allocated on it (weights, K/V cache, compute), which is also what a budget holds to.
    result.gpu_memory_peak_bytes = sampler.gpu_peak if sampler.gpu_peak is not None \
        else (device_bytes(result.buffers) or None)
    result.gpu_free_min_bytes = sampler.gpu_free_min
    memory_ran_out = sampler.min_available < LOW_MEMORY_FRACTION * psutil.virtual_memory().total
    if ended is None:
        assert returncode is not None  # end_worker says why when the worker would not go
        ended = classify(returncode, done, result.stderr_tail, memory_ran_out)
    result.status, result.reason = ended
    result.wall_s = time.perf_counter() - started
    result.measured_until = time.time()
    return result


def follow(lines: queue.Queue, result: TrialResult, spec: TrialSpec, started: float,
           on_request: OnRequest | None) -> tuple[Ended, bool]:
    """Read the worker's events into `result` until it ends, or a limit or a prune stops it.

    Returns how the parent stopped it (None when the worker ended by itself) and whether
    the worker said it was done.
    """
    deadline = started + spec.timeout_s
    stall_s, load_s = spec.stall_limit_s(), spec.load_limit_s()
    last_line = time.perf_counter()
    loaded = False
    done = False
    while True:
        now = time.perf_counter()
        if now > deadline:
            return (Status.TIMED_OUT, f"trial ran past its {spec.timeout_s:g} s limit"), done
        if loaded and now - last_line > stall_s:
            return (Status.TIMED_OUT, f"worker hung: no progress for {stall_s:g} s"), done
        if not loaded and now - last_line > load_s:
            return (Status.TIMED_OUT, f"worker hung: model not loaded after {load_s:.4g} s"), done
        try:
            line = lines.get(timeout=0.05)
        except queue.Empty:
            continue
        if line is None:
            return None, done
        last_line = time.perf_counter()
        try:
            event = decode_event(line)
        except BadEvent as err:
            return (Status.FAILED, str(err)), done
        if event is None:  # not an event (garbage is progress all the same): read on
            continue
        if isinstance(event, Loaded):
            loaded = True
            result.load_s = event.load_s
            result.buffers = event.buffers
            result.loaded_after_s = time.perf_counter() - started
        elif isinstance(event, Warmup):
            result.warmup_s = event.latency_s
        elif isinstance(event, RequestRecord):
            result.requests.append(event)
            if on_request is not None and on_request(event):
                return (Status.PRUNED, f"stopped after {len(result.requests)} requests"), done
        elif isinstance(event, PassEnd):
            result.pass_rss_bytes.append(event.rss_bytes)
        elif isinstance(event, ThreadProbe):
            result.thread_probe = event
        elif isinstance(event, LoadFailed):
            return (load_failure(event.error), event.error), done
        elif isinstance(event, Done):
            done = True


def worker_command() -> list[str]:
    return [sys.executable, "-c", BOOTSTRAP, PACKAGE_ROOT]


def kill_group(process: subprocess.Popen) -> int | None:
    """Kill the worker and anything it started; its exit status, None if it won't go."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    return reap(process, REAP_S)


def reap(process: subprocess.Popen, within_s: float) -> int | None:
    """Wait for the process to exit, but not forever (a process stuck in the kernel does
    not die of SIGKILL); None when it did not."""
    try:
        return process.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        return None


def end_worker(process: subprocess.Popen, ended: Ended) -> tuple[int | None, Ended]:
    """Kill the worker when the parent stopped the trial; else let it exit, or make it.

    Returns its exit status (None when it would not go) and the verdict so far.
    """
    if ended is not None and ended[0] not in LOAD_ENDS:
        returncode = kill_group(process)
    else:
        returncode = reap(process, EXIT_GRACE_S)
        if returncode is None:
            returncode = kill_group(process)
            ended = ended or (Status.FAILED, "worker closed its event stream but was still running "
                                      f"{EXIT_GRACE_S:g} s later")
    if returncode is None:
        stuck = f"worker pid {process.pid} still running {REAP_S:g} s after SIGKILL"
        ended = (ended[0], f"{ended[1]}; {stuck}") if ended else (Status.FAILED, stuck)
    return returncode, ended


def close_quietly(stream: IO[str] | None) -> None:
    with contextlib.suppress(OSError):  # what was left of the spec could not reach a dead worker
        if stream is not None:
            stream.close()


def device_fault(text: str) -> Status | None:
    """GPU_OUT_OF_MEMORY or DEVICE_FAILED when llama.cpp's words blame an offload device."""
    lowered = text.lower()
    if any(word in lowered for word in DEVICE_OOM_WORDS) or DEVICE_BUFFER.search(text):
        return Status.GPU_OUT_OF_MEMORY
    if any(word in lowered for word in DEVICE_WORDS):
        return Status.DEVICE_FAILED
    return None


LOAD_ENDS = (Status.LOAD_FAILED, Status.GPU_OUT_OF_MEMORY, Status.DEVICE_FAILED)


def load_failure(error: str) -> Status:
    """How a load the worker reported failed: on a device, or otherwise."""
    return device_fault(error) or Status.LOAD_FAILED


def classify(returncode: int, done: bool, stderr: str, memory_ran_out: bool = False
             ) -> tuple[Status, str]:
    """Name how a worker ended that the parent did not stop itself."""
    lowered = stderr.lower()
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if returncode == 0 and done:
        return Status.OK, ""
    device = device_fault(stderr)
    if device is not None:
        said = next((line.strip() for line in stderr.splitlines()
                     if device_fault(line) is not None), last)
        return device, said
    if any(word in lowered for word in OOM_WORDS):
        return Status.OUT_OF_MEMORY, last or "out of memory"
    if returncode < 0:
        name = signal.Signals(-returncode).name
        if returncode == -signal.SIGKILL and memory_ran_out:
            return Status.OUT_OF_MEMORY, f"killed by {name} while system memory ran out"
        return Status.CRASHED, f"killed by {name}" + (f": {last}" if last else "")
    if returncode == 0:
        return Status.FAILED, "worker exited before finishing its workload"
    return Status.FAILED, f"worker exited with status {returncode}" + (f": {last}" if last else "")
