"""GGUF inspection of the real model, and one clear line for every kind of bad file."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from conftest import finish_gguf, write_gguf

from autotune.errors import AutotuneError
from autotune.measure.model import ModelInfo, inspect_model


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


def write_metadata(path: Path, **values: object) -> Path:
    """A small GGUF whose llama.* metadata holds exactly `values` (of any type given)."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("crafted")
    for key, value in values.items():
        name = f"llama.{key.replace('__', '.')}"
        if isinstance(value, list):
            writer.add_array(name, value)
        elif isinstance(value, str):
            writer.add_string(name, value)
        elif isinstance(value, float):
            writer.add_float32(name, value)
        else:
            writer.add_uint64(name, value)  # type: ignore[arg-type]
    return finish_gguf(writer, path)


def raw_gguf(path: Path, metadata: bytes, n_fields: int = 1, n_tensors: int = 0) -> Path:
    """GGUF bytes written by hand, for headers the `gguf` writer refuses to write."""
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_fields) + metadata)
    return path


def text(value: str) -> bytes:
    data = value.encode()
    return struct.pack("<Q", len(data)) + data


def make_text_block_count(folder: Path, model: Path) -> Path:
    return write_metadata(folder / "textblocks.gguf", block_count="thirty")


def make_fraction_context(folder: Path, model: Path) -> Path:
    return write_metadata(folder / "fraction.gguf", block_count=2, context_length=4096.5)


def make_absurd_layers(folder: Path, model: Path) -> Path:
    return write_metadata(folder / "absurd.gguf", block_count=2**40)


def make_text_heads_per_layer(folder: Path, model: Path) -> Path:
    return write_metadata(folder / "textheads.gguf", block_count=2,
                          attention__head_count=["eight", "eight"])


def make_nested_arrays(folder: Path, model: Path) -> Path:
    # 100,000 arrays deep: a recursive reader runs out of stack.
    depth = 100_000
    nested = text("general.nested") + struct.pack("<I", 9) \
        + struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 4, 0)
    return raw_gguf(folder / "nested.gguf", nested)


def make_huge_count(folder: Path, model: Path) -> Path:
    return raw_gguf(folder / "count.gguf", text("general.architecture"), n_fields=2**60)


def make_unknown_value_type(folder: Path, model: Path) -> Path:
    return raw_gguf(folder / "type.gguf", text("general.architecture") + struct.pack("<I", 99))


def make_hostile_architecture(folder: Path, model: Path) -> Path:
    return raw_gguf(folder / "arch.gguf", text("general.architecture") + struct.pack("<I", 8)
                    + text("llama\n$(touch PWNED)"))


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
    "text_block_count": (make_text_block_count, ("llama.block_count is text",)),
    "fraction_context": (make_fraction_context, ("llama.context_length is a fraction",)),
    "absurd_layers": (make_absurd_layers, ("llama.block_count = 1099511627776 is outside",)),
    "text_heads_per_layer": (make_text_heads_per_layer,
                             ("llama.attention.head_count is a list of text",)),
    "nested_arrays": (make_nested_arrays, ("nests arrays",)),
    "huge_count": (make_huge_count, ("more than the file holds",)),
    "unknown_value_type": (make_unknown_value_type, ("unknown value type 99",)),
    "hostile_architecture": (make_hostile_architecture, ("not a plain name",)),
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


def test_per_layer_head_counts_are_read_as_their_largest(tmp_path: Path) -> None:
    # OpenELM, Jamba and DeciLM files give one head count per layer (0: no attention).
    info = inspect_model(write_metadata(tmp_path / "layers.gguf", block_count=3,
                                        embedding_length=64,
                                        attention__head_count=[4, 4, 8],
                                        attention__head_count_kv=[0, 2, 2]))
    assert (info.n_layers, info.head_count, info.head_count_kv) == (3, 8, 2)


def test_the_vocabulary_is_stepped_over_not_decoded(info: ModelInfo, model_path: Path) -> None:
    from autotune.measure.gguf_header import read_header

    header = read_header(model_path)
    assert "tokenizer.ggml.tokens" not in header.fields  # 49,152 entries
    assert header.fields["general.architecture"] == "llama"
    assert len(header.tensors) == len(gguf.GGUFReader(model_path).tensors)


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
