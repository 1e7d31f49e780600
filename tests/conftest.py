"""Shared fixtures: the real demo model, a tiny workload, broken model files, the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import psutil
import pytest

from autotune.measure.hardware import Hardware
from autotune.measure.model import ModelInfo, demo_model_path
from autotune.measure.workload import Workload, load_workload

AUTOTUNE = str(Path(sys.executable).with_name("autotune"))
# The smallest study that still searches, confirms and exports: for tests of the tuner.
# No drift anchor and no busy limit: a busy test machine would have them take trials again
# and change their count; tests/test_drift.py makes the machine drift, and
# tests/test_concurrent.py makes it busy, for certain, and check what they do.
QUICK_STUDY = ("--tokens", "4", "--rounds", "1", "--finalists", "1", "--seed", "0",
               "--anchor-every", "0", "--busy-limit", "0")
CLI_TIMEOUT_S = 300
# A developer's own settings of these would change what a test measures or where it looks.
HERMETIC = ("AUTOTUNE_STUDIES", "AUTOTUNE_WORKER_FAULT", "AUTOTUNE_STORAGE_FAULT",
            "AUTOTUNE_HOST", "AUTOTUNE_HEARTBEAT")

TINY_CONVERSATIONS = (
    {"id": "fruit", "system": "You are brief.", "turns": [
        {"user": "Name a fruit.", "assistant": "Apple."},
        {"user": "Another one?"}]},
    {"id": "colour", "system": "You are brief.", "turns": [
        {"user": "Name a colour.", "assistant": "Blue."},
        {"user": "Another one?"}]},
)


def write_gguf(path: Path, arch: str | None = "llama", block_count: int | None = 2) -> Path:
    """A small, complete GGUF file written with the `gguf` package (no usable weights)."""
    writer = gguf.GGUFWriter(path, arch or "llama")
    if arch is None:  # the writer always adds it; take it out again
        del writer.kv_data[0]["general.architecture"]
    if block_count is not None:
        writer.add_block_count(block_count)
    writer.add_name("tiny")
    return finish_gguf(writer, path)


def finish_gguf(writer: gguf.GGUFWriter, path: Path) -> Path:
    """Add one small tensor to a writer's metadata and write the file out."""
    writer.add_tensor("weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid GGUF header that inspects in milliseconds: for CLI checks that run no trial."""
    return write_gguf(tmp_path_factory.mktemp("models") / "small.gguf")


@pytest.fixture(scope="session")
def model_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (98 MB), the real model every measured test runs."""
    return demo_model_path()


@pytest.fixture(scope="session")
def tiny_workload_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 conversations x 2 turns as JSONL: 4 requests, the follow-ups interleaved."""
    path = tmp_path_factory.mktemp("workload") / "tiny.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in TINY_CONVERSATIONS), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_workload(tiny_workload_file: Path) -> Workload:
    return load_workload(tiny_workload_file)


@pytest.fixture(scope="session")
def truncated_model(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first half of the real model: a valid header whose tensor data is cut off."""
    path = tmp_path_factory.mktemp("models") / "truncated.gguf"
    data = model_path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they are scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def make_hardware(**changes: object) -> Hardware:
    """A made-up machine for logic that measures nothing: 2 cores, 4 threads, no GPU."""
    base = Hardware(host="box", system="Linux", machine="x86_64", cpu="test cpu",
                    physical_cores=2, logical_cores=4, total_memory_bytes=16 * 2**30,
                    available_memory_bytes=12 * 2**30, gpus=(), gpu_offload=False,
                    llama_cpp_version="0.3.36")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def make_model(**changes: object) -> ModelInfo:
    """A made-up model record for logic that loads nothing: a small llama."""
    base = ModelInfo(path="/models/m.gguf", name="m", architecture="llama", n_layers=30,
                     context_length=8192, embedding_length=576, head_count=9,
                     head_count_kv=3, size_bytes=98 * 2**20, quantization="Q4_1",
                     fingerprint="f" * 16, n_params=135_000_000, chat_template=None)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def keep_study_record(study, drop: tuple[str, ...] = (), **changes: object) -> None:
    """Give a hand-made Optuna study the record the tuner writes when it creates one
    (with `changes`, and without the attributes named in `drop`)."""
    from autotune.measure.scoring import Weights
    from autotune.studies.records import MeasurementIdentity, StudyRecord, Versions

    record = StudyRecord(model=make_model(), hardware=make_hardware(),
                         versions=Versions("0.0", "0.3.36", "4.5.0", "2"),
                         measurement=MeasurementIdentity("tiny", "0" * 16, 4, 4, 1),
                         weights=Weights(), created="2026-11-25 06:00:00 UTC")
    for key, value in {**record.attrs(), **changes}.items():
        if key not in drop:
            study.set_user_attr(key, value)


def workers_of(pid: int, recursive: bool = True) -> list[psutil.Process]:
    """The trial workers running under process `pid`."""
    try:
        children = psutil.Process(pid).children(recursive=recursive)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "autotune.measure.worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # exited (or a zombie) between listing and reading
            continue
    return found


def clean_env(**overrides: str) -> dict[str, str]:
    """The process environment without any JARVIS_* variable, plus `overrides`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JARVIS_") and k not in HERMETIC}
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed `autotune` script as a user would, with only the given JARVIS_*."""

    def run(*args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AUTOTUNE, *args], cwd=cwd, env=clean_env(**(env or {})), capture_output=True,
            text=True, timeout=CLI_TIMEOUT_S, check=False)

    return run


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1 for the session (see pg_server.py); one that
    cannot start fails the tests that need it, in one line."""
    from pg_server import PostgresServer, ServerError

    try:
        server = PostgresServer()
    except ServerError as err:
        pytest.fail(f"PostgreSQL test server: {err}", pytrace=False)
    try:
        server.start()
    except ServerError as err:
        server.stop()
        pytest.fail(f"PostgreSQL test server: {err}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database on the session's PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture
def empty_cwd(tmp_path: Path) -> Path:
    """A working directory that a failing command must leave empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd
