"""Subprocess entry point of a latency trial, started by `autotune.measure.trial.worker_command`.

The parent writes one JSON line (the trial spec) to stdin and keeps stdin open; the
worker builds the backend, warms it up, replays the workload and streams one JSON line
per event to stdout. When stdin closes (the parent died or gave up), the worker exits at
once, so no worker outlives its study.

The events, in order, are the records of `autotune.measure.records` (EventKind): `loaded`,
`warmup`, one `request` per request, `pass_end` after each pass, `probe_request` and
`thread_probe` (the thread probe), then `done`; or `load_failed` instead.

Tests make it fail on purpose through `AUTOTUNE_WORKER_FAULT` (see `autotune.measure.faults`).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import IO, TextIO

import psutil

from autotune.measure.backend import Backend
from autotune.measure.faults import Faults
from autotune.measure.llama_log import LlamaLog
from autotune.measure.records import (
    Done,
    Event,
    Loaded,
    LoadFailed,
    PassEnd,
    ProbeRequest,
    RequestRecord,
    ThreadProbe,
    Warmup,
    encode_event,
)
from autotune.measure.trial import TrialSpec
from autotune.measure.workload import Request

WARMUP_PROMPT = (("user", "Say hello."),)
PROBE_REPEATS = 2


class Emitter:
    """Writes events as JSON lines on the protocol stream, one writer at a time."""

    def __init__(self, stream: TextIO, started: float, faults: Faults | None = None) -> None:
        self.stream = stream
        self.started = started
        self.faults = faults or Faults([])
        self.lock = threading.Lock()
        self.process = psutil.Process()

    def __call__(self, event: Event) -> None:
        line = encode_event(event, t=round(time.perf_counter() - self.started, 4))
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.faults.after(event.kind.value, self.stream)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)


ABANDONED = 70
finished: list[int] = []  # the exit code, once the workload is done


def exit_when_parent_leaves(stdin: IO[str]) -> None:
    """Block on stdin; EOF means the parent is gone or wants us gone.

    A worker that has finished its work keeps its own exit code when the parent closes
    stdin at the same moment; one still working exits with ABANDONED.
    """
    stdin.read()
    os._exit(finished[0] if finished else ABANDONED)


def finish(emit: Emitter, code: int, event: Event) -> int:
    """Emit the last event; from then on a closed stdin is no longer an abandonment."""
    finished.append(code)
    emit(event)
    return code


def serve(backend: Backend, emit: Emitter, request: Request, n_tokens: int, pass_no: int,
          client: int, sent: float) -> None:
    emit.faults.delay()
    served = backend.complete(request, n_tokens)
    latency = time.perf_counter() - sent
    emit(RequestRecord(
        id=request.id, index=request.index, conversation=request.conversation,
        turn=request.turn, pass_no=pass_no, client=client, latency_s=round(latency, 6),
        queue_s=round(max(0.0, latency - served.service_s), 6),
        ttft_s=round(served.ttft_s + latency - served.service_s, 6),
        prompt_tokens=served.prompt_tokens, reused_tokens=served.reused_tokens,
        generated=served.generated, cache_hit=served.cache_hit,
        reuse_source=served.reuse_source, reload=served.reload,
        dropped_turns=served.dropped_turns, cache_s=round(served.cache_s, 6),
        restored_tokens=served.restored_tokens,
        rss_bytes=emit.rss()))


def run_pass(backend: Backend, emit: Emitter, requests: list[Request], n_tokens: int,
             pass_no: int, clients: int) -> None:
    """One pass over the workload: in order, or from `clients` threads at once."""
    if clients <= 1:
        for request in requests:
            serve(backend, emit, request, n_tokens, pass_no, 0, time.perf_counter())
        return
    work: queue.Queue[Request] = queue.Queue()
    for request in requests:
        work.put(request)
    errors: list[BaseException] = []

    def client(number: int) -> None:
        try:
            while True:
                try:
                    request = work.get_nowait()
                except queue.Empty:
                    return
                serve(backend, emit, request, n_tokens, pass_no, number, time.perf_counter())
        except BaseException as err:  # re-raised in the main thread
            errors.append(err)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def thread_probe(backend: Backend, emit: Emitter, request: Request, n_tokens: int,
                 physical: int) -> None:
    """Time one request with the configured threads and with one per physical core."""
    timings: dict[int, list[float]] = {backend.settings.n_threads: [], physical: []}
    for _ in range(PROBE_REPEATS):
        for threads in timings:
            backend.set_threads(threads)
            backend.llm.reset()
            started = time.perf_counter()
            backend.complete(request, n_tokens)
            timings[threads].append(time.perf_counter() - started)
            # progress, so that a slow probe is not taken for a hung worker
            emit(ProbeRequest(threads=threads, latency_s=round(timings[threads][-1], 6)))
    backend.set_threads(backend.settings.n_threads)
    emit(ThreadProbe(configured_threads=backend.settings.n_threads,
                     configured_s=min(timings[backend.settings.n_threads]),
                     physical_threads=physical, physical_s=min(timings[physical])))


def run(spec: TrialSpec, emit: Emitter) -> int:
    settings = spec.settings
    requests = list(spec.workload.requests)
    n_tokens = spec.tokens_per_request
    log = LlamaLog.install(settings.verbose)
    try:
        register_devices()
        backend = Backend(spec.model_path, settings)
    except Exception as err:  # any load failure is reported, not raised
        said = "; ".join(log.errors)  # llama.cpp's own reason, hidden while it loads
        return finish(emit, 3, LoadFailed(error=f"{type(err).__name__}: {err}"
                                          + (f" (llama.cpp: {said})" if said else "")))
    emit(Loaded(load_s=round(backend.load_s, 6), n_ctx=backend.n_ctx, rss_bytes=emit.rss(),
                buffers=log.buffers))
    warm = Request(-1, "warmup", "warmup", 1, WARMUP_PROMPT)
    started = time.perf_counter()
    backend.complete(warm, min(4, n_tokens))
    emit(Warmup(latency_s=round(time.perf_counter() - started, 6)))
    backend.forget()
    for pass_no in range(spec.passes):
        run_pass(backend, emit, requests, n_tokens, pass_no, spec.clients)
        emit(PassEnd(pass_no=pass_no, rss_bytes=emit.rss()))
    physical = spec.probe_threads
    if physical and physical != settings.n_threads:
        thread_probe(backend, emit, warm, n_tokens, int(physical))
    return finish(emit, 0, Done())


def register_devices() -> None:
    """The test-only RPC servers (autotune.measure.rpc), before the model loads; one that
    cannot be reached fails the load with its name, rather than aborting in llama.cpp."""
    from autotune.measure.rpc import register_test_servers

    register_test_servers()


def main() -> None:
    # The protocol owns the real stdout; anything else printed (llama.cpp included) goes
    # to stderr, where the parent keeps its tail for the failure report.
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    started = time.perf_counter()
    try:
        faults = Faults.from_env()
    except ValueError as err:
        sys.stderr.write(f"{err}\n")
        sys.stderr.flush()
        os._exit(2)
    faults.after("start", protocol)
    spec = TrialSpec.from_wire(sys.stdin.readline())
    threading.Thread(target=exit_when_parent_leaves, args=(sys.stdin,), daemon=True).start()
    code = run(spec, Emitter(protocol, started, faults))
    protocol.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown, which would close stdin and wake the watcher


if __name__ == "__main__":
    main()
