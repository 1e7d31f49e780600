"""The offload path for real, on llama.cpp's RPC device: devices, fit, faults, a study."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import QUICK_STUDY, workers_of
from rpc_servers import RpcServer, devices_seen, servers_env

from autotune.measure.fit import check_fit, device_needs, layer_costs, placement
from autotune.measure.records import Status
from autotune.measure.rpc import SERVERS_ENV
from autotune.measure.settings import Settings
from autotune.measure.trial import TrialSpec, run_trial
from autotune.studies.records import StudyRecord, TrialRecord
from autotune.studies.storage import open_storage

MIB = 2**20


@pytest.fixture
def server() -> Iterator[RpcServer]:
    started = RpcServer()
    yield started
    started.kill()


@pytest.fixture
def rpc_env(monkeypatch: pytest.MonkeyPatch):
    """Point this test's subprocesses (never the test process itself) at servers."""
    def point(*servers: RpcServer) -> None:
        for name, value in servers_env(*servers).items():
            monkeypatch.setenv(name, value)
    return point


def trial(model_path: Path, workload, **settings: object):
    values = {"n_threads": 2, "context_window": 1024, **settings}
    return run_trial(TrialSpec(str(model_path), Settings(**values), workload,
                               tokens_per_request=4))


def device_buffers(buffers: dict[str, dict[str, int]], endpoint: str) -> dict[str, int]:
    return next(kinds for name, kinds in buffers.items() if f"[{endpoint}]" in name)


def test_registry_lists_an_rpc_server_as_a_gpu_device(server: RpcServer) -> None:
    devices = devices_seen(server)
    assert [(d.name, d.kind, d.description) for d in devices] == [
        ("RPC0", "gpu", server.endpoint)]
    assert devices[0].free_bytes > 0 and devices[0].total_bytes > 0
    assert not any(d.name.startswith("RPC") for d in devices_seen())


def test_layers_land_on_the_device_as_the_estimate_says(server, rpc_env, model_path,
                                                        tiny_workload) -> None:
    rpc_env(server)
    result = trial(model_path, tiny_workload, n_gpu_layers=10)
    assert result.ok, result.reason
    on_device = device_buffers(result.buffers, server.endpoint)
    settings = Settings(n_threads=2, context_window=1024, n_gpu_layers=10)
    (estimate,) = device_needs(layer_costs(model_path), settings, devices_seen(server))
    measured = on_device["model"] + on_device["KV"]
    assert abs(estimate - measured) <= 0.10 * measured
    assert result.gpu_memory_peak_bytes == sum(on_device.values())  # no pynvml: llama.cpp's


def test_a_split_over_two_devices_loads_and_each_holds_its_share(rpc_env, model_path,
                                                                tiny_workload) -> None:
    first, second = RpcServer(), RpcServer()
    try:
        rpc_env(first, second)
        result = trial(model_path, tiny_workload, n_gpu_layers=-1)
        assert result.ok, result.reason
        devices = devices_seen(first, second)
        settings = Settings(n_threads=2, context_window=1024, n_gpu_layers=-1)
        estimates = device_needs(layer_costs(model_path), settings, devices)
        for server, estimate in zip((first, second), estimates, strict=True):
            kinds = device_buffers(result.buffers, server.endpoint)
            assert kinds["model"] > 0
            assert abs(estimate - kinds["model"] - kinds["KV"]) <= 0.10 * estimate
    finally:
        first.kill()
        second.kill()


def test_a_server_killed_mid_trial_ends_it_as_a_device_failure(server, rpc_env, model_path,
                                                              tiny_workload,
                                                              monkeypatch) -> None:
    rpc_env(server)
    monkeypatch.setenv("AUTOTUNE_WORKER_FAULT", "stop@request:1")

    def kill_device(event) -> bool:
        (worker,) = workers_of(os.getpid())
        deadline = time.monotonic() + 60
        # it stops itself right after request 1 goes out: wait for that state, bounded
        while worker.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.status() == psutil.STATUS_STOPPED
        server.kill()
        worker.send_signal(signal.SIGCONT)
        return False

    result = run_trial(TrialSpec(str(model_path), Settings(
        n_threads=2, context_window=1024, n_gpu_layers=-1), tiny_workload,
        tokens_per_request=4), on_request=lambda e: e.index == 0 and kill_device(e))
    assert result.status == Status.DEVICE_FAILED, (result.status, result.reason)
    assert "RPC server" in result.reason
    assert len(result.requests) == 1
    assert workers_of(os.getpid()) == []


def test_a_server_never_up_fails_the_trial_by_name(rpc_env, model_path, tiny_workload,
                                                   monkeypatch) -> None:
    from rpc_servers import free_port

    monkeypatch.setenv(SERVERS_ENV, f"127.0.0.1:{free_port()}")
    result = trial(model_path, tiny_workload, n_gpu_layers=4)
    assert result.status == Status.DEVICE_FAILED
    assert "is not reachable" in result.reason


def test_a_device_that_cannot_allocate_is_gpu_memory_pressure(run_cli, model_path,
                                                             tiny_workload_file,
                                                             tmp_path) -> None:
    full = RpcServer(memory_limit=16 * MIB)  # less than the model's layers
    try:
        done = run_cli("bench", str(model_path), "--tokens", "4", "--workload",
                       str(tiny_workload_file), "--json", cwd=tmp_path,
                       env={**servers_env(full), "JARVIS_N_GPU_LAYERS": "-1",
                            "JARVIS_N_THREADS": "2", "JARVIS_MODEL_CONTEXT_WINDOW": "1024"})
        assert full.process.poll() is None  # the device refused; it did not crash
    finally:
        full.kill()
    report = json.loads(done.stdout)
    assert report["status"] == "gpu_out_of_memory", report["reason"]
    assert "unable to allocate RPC0" in report["reason"]
    assert "gpu_memory_pressure" in report["diagnosis"]
    assert "RPC0" in report["measured_on"]


def test_a_study_searches_the_layers_that_fit_its_budget(server, run_cli, model_path,
                                                        tiny_workload_file, tmp_path) -> None:
    budget = 60 * MIB
    done = run_cli(model_path.as_posix(), *QUICK_STUDY, "--trials", "5", "--workload",
                   str(tiny_workload_file), "--studies-dir", str(tmp_path / "studies"),
                   "--max-gpu-memory", "60MiB", "--min-context", "1024", "--out",
                   str(tmp_path / "jarvis.env"), "--json", cwd=tmp_path,
                   env=servers_env(server))
    assert done.returncode in (0, 1), done.stderr
    storage = open_storage(str(tmp_path / "studies"), None)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    record = StudyRecord.read(study)
    assert [d.name for d in record.hardware.devices] == ["RPC0"]
    low, top = record.space.n_gpu_layers
    costs = layer_costs(model_path)
    devices = devices_seen(server)
    # the range stops at the layers that fit the budget at the smallest window
    smallest = min(record.space.context_window)
    fits = [check_fit(costs, Settings(n_threads=1, context_window=smallest, n_gpu_layers=n),
                      devices, budget=budget).ok for n in range(costs.n_layers + 2)]
    assert (low, top) == (0, max(n for n, ok in enumerate(fits) if ok))
    assert top < costs.n_layers + 1
    ran, refused = [], []
    for kept in (TrialRecord.read(t) for t in study.trials):
        settings = kept.settings or Settings()
        fit = check_fit(costs, settings, devices, budget=budget)
        if kept.status is None:
            assert "does not fit on the GPU" in (kept.reason or "")
            assert not fit.ok
            refused.append(settings)
        else:
            assert fit.ok  # no trial the estimate refused was run
            ran.append(kept)
    assert refused  # the guide's defaults put every layer on the GPU: refused, not run
    offloaded = [k for k in ran if k.settings and k.settings.n_gpu_layers != 0 and k.buffers]
    assert offloaded and all(device_buffers(k.buffers, server.endpoint)["model"] > 0
                             for k in offloaded)
    assert workers_of(os.getpid()) == []


def test_placement_counts_the_output_layer_first_and_splits_by_free_memory() -> None:
    # 30 repeating layers; index 30 is the output layer, offloaded before any other
    assert placement(30, 1, [100]) == {30: 0}
    assert placement(30, 10, [100, 100]) == {**dict.fromkeys(range(21, 26), 0),
                                             **dict.fromkeys(range(26, 31), 1)}
    assert len(placement(30, -1, [300, 100])) == 31
    assert sum(d == 0 for d in placement(30, -1, [300, 100]).values()) > 20
    assert placement(30, 0, [100]) == {}


def test_fit_takes_the_demo_models_own_tensor_sizes(model_path) -> None:
    costs = layer_costs(model_path)
    assert costs.n_layers == 30 and costs.output > costs.repeating[0] > 0
    # 3 K/V heads of 64: 384 elements a token and layer; f16 at 1024 tokens is 0.75 MiB
    assert costs.kv_bytes(1024) == 1024 * 384 * 2 and costs.kv_bytes(1000) == costs.kv_bytes(1024)
    assert costs.kv_bytes(1024, f16_kv=False) == 2 * costs.kv_bytes(1024)
