"""GGUF inspection of the real model, and one clear line for every kind of bad file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_gguf

from autotune.errors import AutotuneError
from autotune.model import ModelInfo, inspect_model


def make_missing(folder: Path, model: Path) -> Path:
    return folder / "missing.gguf"


def make_directory(folder: Path, model: Path) -> Path:
    path = folder / "folder.gguf"
    path.mkdir()
    return path


def make_text(folder: Path, model: Path) -> Path:
    path = folder / "notes.gguf"
    path.write_text("this is not a model\n", encoding="utf-8")
    return path


def make_empty(folder: Path, model: Path) -> Path:
    path = folder / "empty.gguf"
    path.touch()
    return path


def make_truncated(folder: Path, model: Path) -> Path:
    path = folder / "half.gguf"
    with open(model, "rb") as source:
        path.write_bytes(source.read(model.stat().st_size // 2))
    return path


def make_header_only(folder: Path, model: Path) -> Path:
    path = folder / "header.gguf"
    path.write_bytes(b"GGUF\x03\x00")
    return path


def make_no_architecture(folder: Path, model: Path) -> Path:
    return write_gguf(folder / "noarch.gguf", None, 2)


def make_no_block_count(folder: Path, model: Path) -> Path:
    return write_gguf(folder / "noblocks.gguf", "llama", None)


# (maker, words the one-line message must contain)
BAD_FILES: dict[str, tuple[Callable[[Path, Path], Path], tuple[str, ...]]] = {
    "missing": (make_missing, ("no such file",)),
    "directory": (make_directory, ("is a directory",)),
    "not_gguf": (make_text, ("not a GGUF file",)),
    "empty": (make_empty, ("not a GGUF file",)),
    "truncated": (make_truncated, ("GGUF",)),
    "header_only": (make_header_only, ("GGUF",)),
    "no_architecture": (make_no_architecture, ("general.architecture",)),
    "no_block_count": (make_no_block_count, ("llama.block_count",)),
}


@pytest.fixture(scope="module")
def info(model_path: Path) -> ModelInfo:
    return inspect_model(model_path)


def test_real_model_metadata(info: ModelInfo, model_path: Path) -> None:
    assert info.architecture == "llama"
    assert info.n_layers == 30
    assert info.context_length == 8192
    assert info.quantization == "Q4_1"
    assert info.size_bytes == model_path.stat().st_size == 98_362_432
    assert info.path == str(model_path.resolve())
    assert info.embedding_length == 576
    assert (info.head_count, info.head_count_kv) == (9, 3)
    assert 130e6 < info.n_params < 140e6  # "135M"
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template


def test_kv_bytes_per_token(info: ModelInfo) -> None:
    # f16 K and V: 2 tensors x 2 bytes x 30 layers x 3 kv heads x 64 dims
    assert info.kv_bytes_per_token == 2 * 2 * 30 * 3 * 64


def test_fingerprint_is_stable_and_cheap(info: ModelInfo, model_path: Path) -> None:
    again = inspect_model(str(model_path))
    assert again.fingerprint == info.fingerprint
    assert len(info.fingerprint) == 16
    int(info.fingerprint, 16)


def test_fingerprint_tells_files_apart(tmp_path: Path) -> None:
    first = inspect_model(write_gguf(tmp_path / "a.gguf", "llama", 2))
    second = inspect_model(write_gguf(tmp_path / "b.gguf", "llama", 3))
    assert first.fingerprint != second.fingerprint


def test_to_dict_is_plain(info: ModelInfo) -> None:
    data = info.to_dict()
    assert "chat_template" not in data
    assert data["architecture"] == "llama"
    assert data["n_layers"] == 30


def test_small_written_gguf_is_readable(tmp_path: Path) -> None:
    small = inspect_model(write_gguf(tmp_path / "ok.gguf", "llama", 2))
    assert (small.architecture, small.n_layers, small.name) == ("llama", 2, "tiny")
    assert small.context_length == 2048  # absent from the file: llama.cpp's fallback
    assert small.quantization == "F32"
    assert small.n_params == 16


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_model_file_is_one_line(kind: str, tmp_path: Path, model_path: Path) -> None:
    maker, words = BAD_FILES[kind]
    path = maker(tmp_path, model_path)
    with pytest.raises(AutotuneError) as raised:
        inspect_model(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"model {path}")
    for word in words:
        assert word in message


def test_truncated_real_model(truncated_model: Path) -> None:
    with pytest.raises(AutotuneError, match=r"(truncated|unreadable) GGUF") as raised:
        inspect_model(truncated_model)
    assert "\n" not in str(raised.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_model(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "locked.gguf", "llama", 2)
    path.chmod(0)
    try:
        with pytest.raises(AutotuneError, match="cannot read it"):
            inspect_model(path)
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_cli_bad_model_exits_2_with_one_line(kind: str, tmp_path: Path, model_path: Path,
                                             empty_cwd: Path, run_cli) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    maker, words = BAD_FILES[kind]
    path = maker(folder, model_path)
    done = run_cli("bench", str(path), cwd=empty_cwd, env={"JARVIS_N_THREADS": "2"})
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("autotune: error: model ")
    for word in words:
        assert word in lines[0]
    assert list(empty_cwd.iterdir()) == []
