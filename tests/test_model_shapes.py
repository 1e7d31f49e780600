"""benchmarks/model_shapes.py: the tiny shape made for real, loaded and run by llama.cpp."""

from __future__ import annotations

import dataclasses
import doctest
import os
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import pytest
from conftest import load_benchmark as load

from autotune.measure.model import demo_model_path, inspect_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPT = BENCHMARKS / "model_shapes.py"
VOCAB = 49152  # the demo model's
# What the header may add to the tensors' bytes: the demo tokenizer's vocabulary and merges
# (about 1.7 MiB), the rest of the metadata, the tensor infos and alignment.
HEADER_BYTES = 2 * 1024 * 1024
T = gguf.GGMLQuantizationType


shapes = load("model_shapes")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny(models_dir: Path) -> Path:
    return shapes.make_model("tiny", directory=models_dir)


def nbytes(n_elements: int, kind: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[kind]
    assert n_elements % block == 0
    return n_elements // block * size


def tiny_q4_k_m_bytes() -> int:
    """The tiny shape's tensors at Q4_K_M, spelled out: what llama.cpp's mix gives them."""
    hidden, ffn, kv, layers = 256, 512, 2 * 64, 2
    embd = VOCAB * hidden
    q4, q6 = T.Q4_K, T.Q6_K
    total = nbytes(embd, q4) + nbytes(embd, q6)  # token_embd, output
    total += 4 * hidden * (1 + 2 * layers)  # norms, F32: output_norm, two per layer
    for layer in range(layers):
        # attn_v and ffn_down get Q6_K in the last eighth of the layers: layer 1 of 2
        more = q6 if layer == layers - 1 else q4
        total += 2 * nbytes(hidden * hidden, q4)  # attn_q, attn_output
        total += nbytes(kv * hidden, q4) + nbytes(kv * hidden, more)  # attn_k, attn_v
        total += 2 * nbytes(ffn * hidden, q4) + nbytes(ffn * hidden, more)  # gate, up, down
    return total


def test_tiny_loads_tokenizes_like_the_demo_and_generates(tiny: Path) -> None:
    llm = llama_cpp.Llama(model_path=str(tiny), n_ctx=256, n_threads=2, verbose=False)
    demo = llama_cpp.Llama(model_path=str(demo_model_path()), vocab_only=True, verbose=False)
    text = b"<|im_start|>user\nWhat's the weather in Paris, 21\xc2\xb0C?<|im_end|>\n"
    tokens = llm.tokenize(text, add_bos=True, special=True)
    assert tokens == demo.tokenize(text, add_bos=True, special=True)
    assert llm.n_vocab() == VOCAB
    for key in ("tokenizer.chat_template", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.bos_token_id"):
        assert llm.metadata[key] == demo.metadata[key]
    out = llm.create_completion("The capital of France is", max_tokens=4, temperature=0.0)
    assert 1 <= out["usage"]["completion_tokens"] <= 4
    assert llm.metadata["autotune.synthetic"] == "true"
    assert "synthetic" in llm.metadata["general.name"]


def test_tiny_size_and_header_match_the_shape(tiny: Path) -> None:
    shape = shapes.SHAPES["tiny"]
    plan = shapes.tensor_plan(shape, VOCAB)
    reader = gguf.GGUFReader(tiny)
    assert len(reader.tensors) == len(plan) == 2 + 1 + 9 * shape.layers
    # llama.cpp's quantizer writes them in its own order
    assert {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors} == \
        {t.name: t.shape for t in plan}
    data = sum(int(t.n_bytes) for t in reader.tensors)
    assert data == tiny_q4_k_m_bytes() == shapes.data_bytes(shape, "Q4_K_M", VOCAB)
    size = tiny.stat().st_size
    assert 0 < size - data < HEADER_BYTES
    info = inspect_model(tiny)
    assert info.n_params == shapes.n_params(shape, VOCAB) == \
        2 * VOCAB * 256 + 2 * (3 * 256 * 512 + 2 * 256 * 256 + 2 * 128 * 256) + 5 * 256
    assert (info.n_layers, info.embedding_length, info.head_count, info.head_count_kv) == \
        (2, 256, 4, 2)
    assert info.quantization.startswith("Q4_K")
    assert tiny.name == "tiny-synthetic.Q4_K_M.gguf"


def test_tied_shape_at_q8_0_has_no_output_tensor_and_runs(models_dir: Path) -> None:
    tied = dataclasses.replace(shapes.SHAPES["tiny"], name="tiny-tied", tied=True)
    path = shapes.make_model(tied, "Q8_0", directory=models_dir)
    reader = gguf.GGUFReader(path)
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in kinds and len(kinds) == 1 + 1 + 9 * tied.layers
    assert {kinds[name] for name in kinds if not name.endswith("norm.weight")} == {T.Q8_0}
    n_2d = sum(t.n_elements for t in shapes.tensor_plan(tied, VOCAB) if len(t.shape) == 2)
    n_1d = 256 * (1 + 2 * tied.layers)
    data = sum(int(t.n_bytes) for t in reader.tensors)
    assert data == n_2d // 32 * 34 + 4 * n_1d == shapes.data_bytes(tied, "Q8_0", VOCAB)
    assert 0 < path.stat().st_size - data < HEADER_BYTES
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    llm.eval(llm.tokenize(b"Hello there", add_bos=True))
    assert llm.n_tokens == len(llm.tokenize(b"Hello there", add_bos=True))


def test_second_call_returns_the_cached_file_untouched(tiny: Path, models_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    before = tiny.stat()
    lines: list[str] = []
    made: list[str] = []  # what it did that only making a model does

    def refuse(what: str):
        def call(*args: object, **kwargs: object) -> None:
            made.append(what)
            raise AssertionError(f"a cached model needs no {what}")
        return call

    monkeypatch.setattr(shapes, "MachineLock", refuse("machine lock"))
    monkeypatch.setattr(shapes, "build", refuse("build"))
    again = shapes.make_model("tiny", directory=models_dir, progress=lines.append)
    assert made == []
    after = again.stat()
    assert again == tiny and lines == []
    assert (after.st_mtime_ns, after.st_ino, after.st_size) == \
        (before.st_mtime_ns, before.st_ino, before.st_size)
    assert sorted(p.name for p in tiny.parent.iterdir() if p.name.startswith(".")) == []


def test_an_interrupted_run_leaves_no_file(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def half(shape: object, path: Path, *args: object, **kwargs: object) -> None:
        path.write_bytes(b"GGUF random weights")

    def interrupted(source: Path, target: Path, *args: object, **kwargs: object) -> None:
        target.write_bytes(b"GGUF half a model")
        raise KeyboardInterrupt

    # what is tested is the file handling, not the writing: both stand-ins are fast
    monkeypatch.setattr(shapes, "write_f16", half)
    monkeypatch.setattr(shapes, "quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        shapes.make_model("tiny", directory=tmp_path, progress=lambda line: None)
    assert list((tmp_path / f"gen{shapes.GENERATOR_VERSION}").iterdir()) == []
    # one a killed process left: removed by the next run, never taken as the model
    folder = tmp_path / f"gen{shapes.GENERATOR_VERSION}"
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale = folder / f".tiny-synthetic.Q4_K_M.gguf.{dead.pid}.partial"
    stale.write_bytes(b"GGUF half a model")
    with pytest.raises(KeyboardInterrupt):
        shapes.make_model("tiny", directory=tmp_path, progress=lambda line: None)
    assert not stale.exists()


def test_cache_folder_follows_the_environment(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shapes.MODELS_DIR_ENV, str(tmp_path))
    path = shapes.model_path("Mistral-7B", "Q8_0")
    assert path == tmp_path / f"gen{shapes.GENERATOR_VERSION}" / "Mistral-7B-synthetic.Q8_0.gguf"
    assert shapes.model_path("tiny", directory=tmp_path / "x").parent.parent == tmp_path / "x"
    with pytest.raises(ValueError, match="may not reuse the name"):
        shapes.make_model(dataclasses.replace(shapes.SHAPES["tiny"], layers=3))


def test_named_shapes_are_the_public_configs() -> None:
    got = {name: (s.hidden, s.layers, s.ffn, s.heads, s.kv_heads, s.tied)
           for name, s in shapes.SHAPES.items() if name != "tiny"}
    assert got == {
        "TinyLlama-1.1B": (2048, 22, 5632, 32, 4, False),
        "Llama-3.2-3B": (3072, 28, 8192, 24, 8, True),
        "Llama-2-7B": (4096, 32, 11008, 32, 32, False),
        "Mistral-7B": (4096, 32, 14336, 32, 8, False),
    }
    # TinyLlama with the demo's 49152 tokens instead of its own 32000: 1.17 B parameters
    assert round(shapes.n_params(shapes.SHAPES["TinyLlama-1.1B"], VOCAB) / 1e7) == 117


def test_docstring_example_and_help(models_dir: Path) -> None:
    globs = {"make_model": shapes.make_model, "tmp_path": models_dir}
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(shapes.make_model, "make_model", globs=globs):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                          text=True, env=env, timeout=60, check=True)
    assert "--quant" in done.stdout and "AUTOTUNE_MODELS_DIR" in done.stdout
