"""The guide's targets and the four spike causes, on hand-made summaries and machines."""

from __future__ import annotations

import pytest
from conftest import make_hardware

from autotune.measure import diagnosis
from autotune.measure.devices import Device
from autotune.measure.diagnosis import CAUSES, GROWTH_LIMIT_BYTES
from autotune.measure.hardware import Gpu, Hardware
from autotune.measure.records import Finding, Status, Target, ThreadProbe, TrialStats
from autotune.measure.settings import Settings

GIB = 2**30
TARGET_KEYS = ["mean_latency", "no_spikes", "consistency", "cache_hit_rate", "load_once",
               "memory_stable"]

GOOD = {"mean_s": 0.8, "max_s": 1.5, "cv": 0.2, "cache_hit_rate": 1.0,
        "first_s": 1.0, "rest_median_s": 0.8, "rss_growth_bytes_per_pass": 0.0,
        "reloads": 0, "gpu_free_min_bytes": None}
BAD = {"mean_s": 3.0, "max_s": 9.0, "cv": 0.9, "cache_hit_rate": 0.5,
       "first_s": 10.0, "rest_median_s": 1.0, "rss_growth_bytes_per_pass": 64 * 2**20,
       "reloads": 3, "gpu_free_min_bytes": None}


def targets(summary: dict) -> dict[str, Target]:
    return diagnosis.targets(TrialStats(**summary))


def diagnose(summary: dict, probe: dict | None, settings: Settings, hardware: Hardware,
             status: Status = Status.OK) -> list[Finding]:
    """The diagnosis of hand-made numbers: a probe gives the two timings it compares."""
    thread_probe = None if probe is None else ThreadProbe(
        configured_threads=settings.n_threads, configured_s=probe["configured_s"],
        physical_threads=hardware.physical_cores, physical_s=probe["physical_s"])
    return diagnosis.diagnose(TrialStats(**summary), status, thread_probe, settings, hardware)


def machine(physical: int = 2, gpus: tuple[Gpu, ...] = (), offload: bool = False) -> Hardware:
    """A made-up machine; llama.cpp's registry lists each NVIDIA GPU as a CUDA device."""
    devices = tuple(Device(f"CUDA{g.index}", g.name, "gpu", g.total_bytes, g.free_bytes)
                    for g in gpus)
    return make_hardware(physical_cores=physical, logical_cores=physical * 2, gpus=gpus,
                         gpu_offload=offload, devices=devices)


FAKE_GPU = Gpu(index=0, name="Fake GPU", total_bytes=8 * GIB, free_bytes=4 * GIB)
GPU_BOX = machine(gpus=(FAKE_GPU,), offload=True)


def causes(summary: dict, probe: dict | None = None, settings: Settings | None = None,
           hardware: Hardware | None = None, status: Status = Status.OK) -> list[str]:
    found = diagnose(summary, probe, settings or Settings(n_threads=2),
                     hardware or machine(), status)
    for finding in found:
        assert finding.cause in CAUSES
        assert finding.evidence and finding.fix
    return [f.cause for f in found]


def test_targets_all_pass() -> None:
    checks = targets(GOOD)
    assert list(checks) == TARGET_KEYS
    assert {k: c.passed for k, c in checks.items()} == dict.fromkeys(TARGET_KEYS, True)
    assert checks["mean_latency"].value == 0.8
    assert all(c.target for c in checks.values())


def test_targets_all_fail() -> None:
    checks = targets(BAD)
    assert {k: c.passed for k, c in checks.items()} == dict.fromkeys(TARGET_KEYS, False)


def test_targets_not_applicable_without_measurements() -> None:
    checks = targets({})
    assert {k: c.passed for k, c in checks.items()} == dict.fromkeys(TARGET_KEYS, None)
    assert all(c.value is None for c in checks.values())


def test_targets_partly_measured() -> None:
    # one pass: no memory growth figure; cache off: no hit rate; one request: no "rest"
    summary = {**GOOD, "cache_hit_rate": None, "rss_growth_bytes_per_pass": None,
               "rest_median_s": None}
    passed = {k: c.passed for k, c in targets(summary).items()}
    assert passed == {"mean_latency": True, "no_spikes": True, "consistency": True,
                      "cache_hit_rate": None, "load_once": None, "memory_stable": None}


@pytest.mark.parametrize(("changes", "key", "passed"), [
    ({"mean_s": 2.0}, "mean_latency", True),
    ({"mean_s": 2.001}, "mean_latency", False),
    ({"mean_s": 0.1}, "mean_latency", True),  # lower is better
    ({"max_s": 5.0}, "no_spikes", True),
    ({"max_s": 5.01}, "no_spikes", False),
    ({"cv": 0.49}, "consistency", True),
    ({"cv": 0.5}, "consistency", False),
    ({"cache_hit_rate": 0.81}, "cache_hit_rate", True),
    ({"cache_hit_rate": 0.8}, "cache_hit_rate", False),
    ({"first_s": 2.4, "rest_median_s": 0.8}, "load_once", True),
    ({"first_s": 2.5, "rest_median_s": 0.8}, "load_once", False),
    ({"rss_growth_bytes_per_pass": GROWTH_LIMIT_BYTES - 1}, "memory_stable", True),
    ({"rss_growth_bytes_per_pass": GROWTH_LIMIT_BYTES}, "memory_stable", False),
    ({"rss_growth_bytes_per_pass": -5 * 2**20}, "memory_stable", True),
])
def test_target_edges(changes: dict, key: str, passed: bool) -> None:
    assert targets({**GOOD, **changes})[key].passed is passed


def test_nothing_to_diagnose() -> None:
    assert causes(GOOD) == []


def test_thread_contention() -> None:
    probe = {"configured_s": 0.9, "physical_s": 0.3}
    found = diagnose(GOOD, probe, Settings(n_threads=8), machine(physical=2))
    assert [f.cause for f in found] == ["thread_contention"]
    assert found[0].fix == "export JARVIS_N_THREADS=2"
    assert "3.0x" in found[0].evidence
    assert "8 threads on 2 physical cores" in found[0].evidence


@pytest.mark.parametrize(("threads", "physical", "probe"), [
    (8, 2, {"configured_s": 0.33, "physical_s": 0.3}),  # 1.1x: within noise
    (8, 2, None),  # no probe was run
    (2, 2, {"configured_s": 0.9, "physical_s": 0.3}),  # not more threads than cores
    (4, 8, {"configured_s": 0.9, "physical_s": 0.3}),
])
def test_no_thread_contention(threads: int, physical: int, probe: dict | None) -> None:
    assert "thread_contention" not in causes(GOOD, probe, Settings(n_threads=threads),
                                             machine(physical=physical))


def test_thread_contention_at_the_factor() -> None:
    probe = {"configured_s": 1.2, "physical_s": 1.0}
    assert causes(GOOD, probe, Settings(n_threads=4)) == ["thread_contention"]


def test_context_overflow() -> None:
    found = diagnose({**GOOD, "reloads": 4}, None, Settings(n_threads=2, context_window=512),
                     machine())
    assert [f.cause for f in found] == ["context_overflow"]
    assert "4 request(s)" in found[0].evidence
    assert "512-token" in found[0].evidence
    assert found[0].fix.startswith("export JARVIS_MODEL_CONTEXT_WINDOW=1024")


def test_no_context_overflow() -> None:
    assert causes({**GOOD, "reloads": 0}) == []


@pytest.mark.parametrize(("cache_on", "fix"), [
    (True, "raise JARVIS_MAX_CACHE_SIZE above 100"),
    (False, "JARVIS_ENABLE_CONTEXT_CACHE=true, measured with `autotune bench`"),
])
def test_cache_misses(cache_on: bool, fix: str) -> None:
    settings = Settings(n_threads=2, enable_context_cache=cache_on)
    found = diagnose({**GOOD, "cache_hit_rate": 0.25}, None, settings, machine())
    assert [f.cause for f in found] == ["cache_misses"]
    assert found[0].fix == fix
    assert "25%" in found[0].evidence


@pytest.mark.parametrize(("hit", "expected"), [
    (0.8, ["cache_misses"]), (0.81, []), (None, []), (0.0, ["cache_misses"])])
def test_cache_miss_threshold(hit: float | None, expected: list[str]) -> None:
    assert causes({**GOOD, "cache_hit_rate": hit}) == expected


def test_gpu_memory_pressure_from_low_free_memory() -> None:
    summary = {**GOOD, "gpu_free_min_bytes": 100 * 2**20}  # 100 MiB of 8 GiB, under 5%
    found = diagnose(summary, None, Settings(n_threads=2, n_gpu_layers=-1), GPU_BOX)
    assert [f.cause for f in found] == ["gpu_memory_pressure"]
    assert "100 MiB of 8192 MiB" in found[0].evidence
    assert "JARVIS_N_GPU_LAYERS" in found[0].fix


def test_gpu_memory_pressure_from_out_of_memory() -> None:
    summary = {"reloads": 0, "cache_hit_rate": None, "gpu_free_min_bytes": None}
    found = diagnose(summary, None, Settings(n_threads=2, n_gpu_layers=20), GPU_BOX,
                     Status.OUT_OF_MEMORY)
    assert [f.cause for f in found] == ["gpu_memory_pressure"]
    assert found[0].evidence == "GPU memory ran out"


def test_gpu_pressure_sums_all_gpus() -> None:
    two = machine(gpus=(FAKE_GPU, Gpu(1, "Fake GPU", 8 * GIB, 4 * GIB)), offload=True)
    # 5% of the two GPUs' 16 GiB is 819 MiB: 600 MiB free is pressure, 900 MiB is not
    assert causes({**GOOD, "gpu_free_min_bytes": 600 * 2**20}, hardware=two) == [
        "gpu_memory_pressure"]
    assert causes({**GOOD, "gpu_free_min_bytes": 900 * 2**20}, hardware=two) == []


@pytest.mark.parametrize(("settings", "hardware", "free"), [
    (Settings(n_threads=2, n_gpu_layers=0), GPU_BOX, 100 * 2**20),  # nothing on the GPU
    (Settings(n_threads=2), machine(gpus=(FAKE_GPU,), offload=False), 100 * 2**20),  # CPU build
    (Settings(n_threads=2), machine(offload=True), 100 * 2**20),  # no GPU at all
    (Settings(n_threads=2), GPU_BOX, 4 * GIB),  # plenty free
    (Settings(n_threads=2), GPU_BOX, None),  # never measured and did not run out
])
def test_no_gpu_memory_pressure(settings: Settings, hardware: Hardware,
                                free: int | None) -> None:
    assert causes({**GOOD, "gpu_free_min_bytes": free}, settings=settings,
                  hardware=hardware) == []


def test_cpu_only_out_of_memory_is_not_gpu_pressure() -> None:
    assert causes(GOOD, settings=Settings(n_threads=2), hardware=machine(),
                  status=Status.OUT_OF_MEMORY) == []


def test_all_four_causes_in_order() -> None:
    probe = {"configured_s": 2.0, "physical_s": 0.5}
    summary = {**BAD, "gpu_free_min_bytes": 10 * 2**20}
    settings = Settings(n_threads=8, context_window=512)
    assert causes(summary, probe, settings, GPU_BOX) == list(CAUSES)


def test_hardware_can_offload() -> None:
    assert GPU_BOX.can_offload
    assert not machine(gpus=(FAKE_GPU,), offload=False).can_offload
    assert not machine(offload=True).can_offload  # an RPC build offloads to no device
    rpc = make_hardware(gpu_offload=True, devices=(Device("RPC0", "127.0.0.1:1", "gpu",
                                                          GIB, GIB),))
    assert rpc.can_offload  # any GPU device of the registry, not NVIDIA's alone
    assert GPU_BOX.to_dict()["gpus"][0]["name"] == "Fake GPU"
