"""Models of real shapes: llama-architecture GGUF files with random weights, made once, cached.

    python benchmarks/model_shapes.py TinyLlama-1.1B              # Q4_K_M; prints the path
    python benchmarks/model_shapes.py Mistral-7B --quant Q8_0 --dir /big/disk
    python benchmarks/model_shapes.py --list                      # the shapes and their sizes

No real 1B+ model installs from a package, but a model's latency follows its shape and its
quantization, not its weights' values. This writes a shape's tensors with the `gguf`
package as F16 (normal * 0.02 from a fixed seed, norms at 1.0), then quantizes them with
llama.cpp's own quantizer (`llama_cpp.llama_model_quantize`), so the file has the tensor
types, sizes and mix of a real download of that quantization. The shapes' numbers are the
public configs' (hidden size, layers, feed-forward size, heads / KV heads, trained
context, rope base, rms eps, tied embeddings); Llama-3.2's llama3 rope scaling is left
out, as it changes values, not cost.

The vocabulary, merges, token types, special token ids and chat template are copied from
the demo model (SmolLM2-135M-Instruct), so llama.cpp tokenizes and templates exactly as for
it. The vocabulary therefore has 49152 tokens for every shape, not the real model's (32000
for TinyLlama, Llama-2 and Mistral, 128256 for Llama-3.2), and the embedding and output
tensors use it: a shape's file is larger or smaller than the real one by that difference.

The files say they are synthetic: `general.name` ("TinyLlama-1.1B synthetic"),
`general.description`, `autotune.synthetic = true`, and the file name
(`TinyLlama-1.1B-synthetic.Q4_K_M.gguf`). They generate noise: for timing only.

Each file is made once, in the cache folder `--dir`, else $AUTOTUNE_MODELS_DIR, else
~/.cache/autotune/models (under $XDG_CACHE_HOME where set), in a subfolder named after
GENERATOR_VERSION; asked again, the existing file is returned at once. Files are written
under a temporary name and renamed when complete, so an interrupted run leaves nothing that
would pass for cached (its partial file is removed by the next run). Making one holds the
machine lock (autotune.measure.machine_lock) so it never runs during a measurement.
Progress goes to stderr, the path to stdout. A 1.1B model takes about a minute on two
cores; a 7B one several minutes, 13 GiB of disk for the F16 intermediate, and little
memory (tensors are written one at a time).

From Python, with benchmarks/ on sys.path:
    >>> from model_shapes import make_model
    >>> make_model("TinyLlama-1.1B").name
    'TinyLlama-1.1B-synthetic.Q4_K_M.gguf'
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from autotune.measure.machine_lock import MachineLock
from autotune.measure.model import demo_model_path

# Bump when a shape's file would come out different (weights, metadata, tensor layout):
# the cache is keyed by it, so files of an older generator are never returned.
GENERATOR_VERSION = 1
SEED = 0
WEIGHT_SCALE = 0.02
MODELS_DIR_ENV = "AUTOTUNE_MODELS_DIR"
DEFAULT_QUANT = "Q4_K_M"
CHUNK_VALUES = 1 << 22  # random values made per task: 16 MiB of float32
PROGRESS_EVERY_S = 5.0
MiB = 1024 * 1024

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Shape:
    """A llama-architecture model's shape: everything its cost depends on but its weights."""

    name: str
    hidden: int
    layers: int
    ffn: int
    heads: int
    kv_heads: int
    context_length: int
    rope_theta: float
    rms_eps: float = 1e-5
    tied: bool = False  # the output projection reuses token_embd (no output.weight)
    source: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def attention(self) -> str:
        return "multi-head" if self.kv_heads == self.heads else "grouped-query"


SHAPES: dict[str, Shape] = {shape.name: shape for shape in (
    # For tests: seconds to make. Every row a multiple of 256, so K-quants apply as on the
    # real shapes (llama.cpp falls back to other types for rows that are not).
    Shape("tiny", hidden=256, layers=2, ffn=512, heads=4, kv_heads=2, context_length=4096,
          rope_theta=10000.0),
    Shape("TinyLlama-1.1B", hidden=2048, layers=22, ffn=5632, heads=32, kv_heads=4,
          context_length=2048, rope_theta=10000.0,
          source="TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
    Shape("Llama-3.2-3B", hidden=3072, layers=28, ffn=8192, heads=24, kv_heads=8,
          context_length=131072, rope_theta=500000.0, tied=True,
          source="meta-llama/Llama-3.2-3B-Instruct"),
    Shape("Llama-2-7B", hidden=4096, layers=32, ffn=11008, heads=32, kv_heads=32,
          context_length=4096, rope_theta=10000.0, source="meta-llama/Llama-2-7b-chat-hf"),
    Shape("Mistral-7B", hidden=4096, layers=32, ffn=14336, heads=32, kv_heads=8,
          context_length=32768, rope_theta=10000.0, source="mistralai/Mistral-7B-v0.1"),
)}

# Quantization name -> llama.cpp's llama_ftype (F16: the writer's own file, not quantized).
QUANTS: dict[str, int] = {"F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15, "Q5_K_M": 17,
                          "Q6_K": 18}
T = gguf.GGMLQuantizationType
BASE_TYPE = {"F16": T.F16, "Q8_0": T.Q8_0, "Q4_0": T.Q4_0, "Q4_K_M": T.Q4_K,
             "Q5_K_M": T.Q5_K, "Q6_K": T.Q6_K}


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of a shape: its name, numpy shape (rows, columns) and its layer."""

    name: str
    shape: tuple[int, ...]
    layer: int | None = None

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


def tensor_plan(shape: Shape, vocab: int) -> list[TensorPlan]:
    """The tensors of a llama model of this shape, in the order they are written."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    plan = [TensorPlan("token_embd.weight", (vocab, shape.hidden))]
    for i in range(shape.layers):
        plan += [TensorPlan(f"blk.{i}.{name}.weight", dims, i) for name, dims in (
            ("attn_norm", (shape.hidden,)), ("attn_q", (q, shape.hidden)),
            ("attn_k", (kv, shape.hidden)), ("attn_v", (kv, shape.hidden)),
            ("attn_output", (shape.hidden, q)), ("ffn_norm", (shape.hidden,)),
            ("ffn_gate", (shape.ffn, shape.hidden)), ("ffn_up", (shape.ffn, shape.hidden)),
            ("ffn_down", (shape.hidden, shape.ffn)))]
    plan.append(TensorPlan("output_norm.weight", (shape.hidden,)))
    if not shape.tied:
        plan.append(TensorPlan("output.weight", (vocab, shape.hidden)))
    return plan


def n_params(shape: Shape, vocab: int) -> int:
    return sum(t.n_elements for t in tensor_plan(shape, vocab))


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v and ffn_down get Q6_K in *_K_M."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def tensor_type(tensor: TensorPlan, shape: Shape, quant: str) -> gguf.GGMLQuantizationType:
    """The type llama.cpp's quantizer gives a tensor (llama_tensor_get_type, llama-quant.cpp).

    For the quantizations offered here and rows that are multiples of 256: norms stay F32;
    the output projection (token_embd when tied) gets Q6_K unless the type is Q8_0; the
    *_K_M mixes give attn_v and ffn_down Q6_K in the layers `use_more_bits` names.
    """
    if len(tensor.shape) == 1:
        return T.F32
    base = BASE_TYPE[quant]
    is_output = tensor.name == "output.weight" or (
        shape.tied and tensor.name == "token_embd.weight")
    if quant == "F16":
        return base
    if is_output:
        return base if base == T.Q8_0 else T.Q6_K
    if (quant.endswith("_K_M") and tensor.layer is not None
            and tensor.name.endswith(("attn_v.weight", "ffn_down.weight"))
            and use_more_bits(tensor.layer, shape.layers)):
        return T.Q6_K
    return base


def tensor_bytes(n_elements: int, kind: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[kind]
    return n_elements // block * size


def data_bytes(shape: Shape, quant: str, vocab: int) -> int:
    """The bytes the shape's tensors take at this quantization (without the header's)."""
    return sum(tensor_bytes(t.n_elements, tensor_type(t, shape, quant))
               for t in tensor_plan(shape, vocab))


# --- the tokenizer: copied from the demo model -------------------------------------------

@dataclass(frozen=True)
class Tokenizer:
    """The demo model's `tokenizer.*` metadata: (key, value, type, array item type)."""

    fields: tuple[tuple[str, object, gguf.GGUFValueType, gguf.GGUFValueType | None], ...]
    vocab: int
    source: str


@functools.cache  # reading 100,000 strings takes seconds
def read_tokenizer(path: str | os.PathLike[str] | None = None) -> Tokenizer:
    """Every `tokenizer.*` key of a GGUF file (the demo model's by default), as it is."""
    path = Path(path) if path is not None else demo_model_path()
    reader = gguf.GGUFReader(path)
    fields = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        item = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
        fields.append((key, field.contents(), kind, item))
    vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    return Tokenizer(tuple(fields), vocab, path.name)


# --- writing the F16 file ------------------------------------------------------------------

def write_f16(shape: Shape, path: Path, tokenizer: Tokenizer, progress: Progress,
              threads: int | None = None) -> None:
    """Write the shape as an F16 GGUF file, one tensor in memory at a time."""
    plan = tensor_plan(shape, tokenizer.vocab)
    writer = gguf.GGUFWriter(path, "llama")
    add_metadata(writer, shape, tokenizer)
    for t in plan:
        kind = tensor_type(t, shape, "F16")
        dtype = np.float32 if kind == T.F32 else np.float16
        writer.add_tensor_info(t.name, t.shape, np.dtype(dtype),
                               tensor_bytes(t.n_elements, kind))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = sum(t.n_elements for t in plan) * 2
    done, started, shown = 0, time.perf_counter(), time.perf_counter()
    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        for index, t in enumerate(plan):
            writer.write_tensor_data(make_tensor(t, index, pool))
            done += t.n_elements * 2
            if time.perf_counter() - shown >= PROGRESS_EVERY_S or index == len(plan) - 1:
                shown = time.perf_counter()
                progress(f"  F16: {done / MiB:,.0f} / {total / MiB:,.0f} MiB written, "
                         f"{shown - started:.0f} s")
    writer.close()


def add_metadata(writer: gguf.GGUFWriter, shape: Shape, tokenizer: Tokenizer) -> None:
    writer.add_type("model")
    writer.add_name(f"{shape.name} synthetic")
    writer.add_description(
        f"Synthetic: random weights (normal * {WEIGHT_SCALE}, seed {SEED}) in the shape of "
        f"{shape.source or shape.name}, with the tokenizer of {tokenizer.source} "
        f"({tokenizer.vocab} tokens); made by autotune's benchmarks/model_shapes.py for "
        "latency measurement only: it generates noise.")
    writer.add_bool("autotune.synthetic", True)
    writer.add_string("autotune.synthetic.shape", shape.name)
    writer.add_uint32("autotune.synthetic.generator_version", GENERATOR_VERSION)
    writer.add_uint32("autotune.synthetic.seed", SEED)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(tokenizer.vocab)
    writer.add_file_type(QUANTS["F16"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value, kind, item in tokenizer.fields:
        writer.add_key_value(key, value, kind, sub_type=item)


def make_tensor(tensor: TensorPlan, index: int, pool: ThreadPoolExecutor) -> np.ndarray:
    """Norms at 1.0 (F32); weights normal * WEIGHT_SCALE (F16), the same on every run.

    Made in chunks of rows, each from its own generator seeded by (SEED, tensor, chunk), so
    the values do not depend on the number of threads; numpy fills without the GIL.
    """
    if len(tensor.shape) == 1:
        return np.ones(tensor.shape, dtype=np.float32)
    out = np.empty(tensor.shape, dtype=np.float16)
    rows, columns = tensor.shape
    step = max(1, CHUNK_VALUES // columns)
    key = zlib.crc32(tensor.name.encode())

    def fill(chunk: int) -> None:
        rng = np.random.default_rng((SEED, key, index, chunk))
        block = out[chunk * step:(chunk + 1) * step]
        values = rng.standard_normal(block.shape, dtype=np.float32)
        np.multiply(values, WEIGHT_SCALE, out=block, casting="unsafe")

    list(pool.map(fill, range((rows + step - 1) // step)))
    return out


# --- quantizing with llama.cpp -------------------------------------------------------------

def quantize(source: Path, target: Path, quant: str, expected_bytes: int, progress: Progress,
             threads: int | None = None, verbose: bool = False) -> None:
    """llama.cpp's quantizer, run in a thread while the target's growth is reported."""
    import logging

    import llama_cpp

    if not verbose:  # llama.cpp logs a line per tensor through llama-cpp-python's logger
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTS[quant]
    params.nthread = threads or 0  # 0: all the cores
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(llama_cpp.llama_model_quantize(
        os.fsencode(source), os.fsencode(target), params)))
    started = time.perf_counter()
    worker.start()
    while worker.is_alive():
        worker.join(PROGRESS_EVERY_S)
        size = target.stat().st_size if target.exists() else 0
        progress(f"  {quant}: {size / MiB:,.0f} / {expected_bytes / MiB:,.0f} MiB written, "
                 f"{time.perf_counter() - started:.0f} s")
    if result != [0]:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {quant} "
                           f"(status {result}); rerun with --verbose to see why")


# --- the cache -----------------------------------------------------------------------------

def models_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    """Where made models are kept: `directory`, $AUTOTUNE_MODELS_DIR, or the user's cache."""
    if directory is not None:
        return Path(directory)
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "autotune" / "models"


def model_path(shape: str | Shape, quant: str = DEFAULT_QUANT,
               directory: str | os.PathLike[str] | None = None) -> Path:
    """The cached file of a shape at a quantization (whether it is made yet or not)."""
    name = shape.name if isinstance(shape, Shape) else shape
    return (models_dir(directory) / f"gen{GENERATOR_VERSION}"
            / f"{name}-synthetic.{quant}.gguf")


def make_model(shape: str | Shape, quant: str = DEFAULT_QUANT,
               directory: str | os.PathLike[str] | None = None, keep_f16: bool = False,
               progress: Progress | None = None, threads: int | None = None,
               lock: bool = True, verbose: bool = False) -> Path:
    """The path of a synthetic model of `shape` at `quant`, made first if not cached.

    Args:
        shape: a name in SHAPES, or a Shape whose name is not one of them.
        quant: a name in QUANTS; F16 is the unquantized file.
        directory: the cache folder (see `models_dir`).
        keep_f16: keep the F16 intermediate in the cache too (it is reused as the source
            of other quantizations of the shape).
        progress: called with each line of progress (default: printed to stderr).
        threads: threads for random values and the quantizer (default: all the cores).
        lock: hold the machine lock while making it, so no measurement runs meanwhile.
        verbose: let llama.cpp log each tensor it quantizes.

    Example:
        >>> path = make_model("tiny", "Q8_0", directory=tmp_path)
        >>> path.name, make_model("tiny", "Q8_0", directory=tmp_path) == path
        ('tiny-synthetic.Q8_0.gguf', True)
    """
    shape = resolve_shape(shape)
    if quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}: choose one of {', '.join(QUANTS)}")
    target = model_path(shape, quant, directory)
    if target.exists():
        return target
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    holding = MachineLock(on_wait=lambda holder: say(
        f"waiting for the machine: {holder.describe()}")).held(
        f"making {target.name}") if lock else contextlib.nullcontext()
    with holding:
        if target.exists():  # made by another process while this one waited
            return target
        started = time.perf_counter()
        build(shape, quant, target, directory, keep_f16, say, threads, verbose)
        say(f"made {target} ({target.stat().st_size / MiB:,.1f} MiB) "
            f"in {time.perf_counter() - started:.0f} s")
    return target


def resolve_shape(shape: str | Shape) -> Shape:
    if isinstance(shape, Shape):
        if shape.name in SHAPES and SHAPES[shape.name] != shape:
            raise ValueError(f"a custom shape may not reuse the name {shape.name!r}: the "
                             "cache would mistake one for the other")
        return shape
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
    return SHAPES[shape]


def build(shape: Shape, quant: str, target: Path, directory: str | os.PathLike[str] | None,
          keep_f16: bool, say: Progress, threads: int | None, verbose: bool) -> None:
    tokenizer = read_tokenizer()
    f16 = model_path(shape, "F16", directory)
    say(f"making {target.name}: the {shape.attention} shape of {shape.source or shape.name}, "
        f"{n_params(shape, tokenizer.vocab) / 1e9:.2f} B parameters, "
        f"vocabulary {tokenizer.vocab} (the demo model's)")
    with partial(f16) as f16_partial:
        if not f16.exists():
            say(f"  writing random F16 weights to {f16_partial.name}")
            write_f16(shape, f16_partial, tokenizer, say, threads)
            if quant == "F16" or keep_f16:
                publish(f16_partial, f16)
        source = f16 if f16.exists() else f16_partial
        if quant == "F16":
            return
        with partial(target) as target_partial:
            say(f"  quantizing to {quant} with llama.cpp")
            quantize(source, target_partial, quant,
                     data_bytes(shape, quant, tokenizer.vocab), say, threads, verbose)
            publish(target_partial, target)


def publish(path: Path, final: Path) -> None:
    """Rename a complete file to its cached name, its data on disk first (a crash between
    the two must not leave an empty file under the cached name)."""
    with path.open("rb") as file:
        os.fsync(file.fileno())
    path.rename(final)


@contextlib.contextmanager
def partial(final: Path) -> Iterator[Path]:
    """A temporary name for `final` in its folder, removed unless renamed to it.

    Partial files that dead processes left (killed mid-write) are removed first.
    """
    for stale in final.parent.glob(f".{final.name}.*.partial"):
        pid = stale.name.removeprefix(f".{final.name}.").removesuffix(".partial")
        if pid.isdigit() and not alive(int(pid)):
            stale.unlink(missing_ok=True)
    path = final.with_name(f".{final.name}.{os.getpid()}.partial")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the command line ----------------------------------------------------------------------

def describe_shapes(vocab: int = 49152) -> str:
    lines = [f"{'shape':<16} {'layers':>6} {'hidden':>6} {'ffn':>6} {'heads':>9} "
             f"{'params':>7} {DEFAULT_QUANT + ' MiB':>10}  attention, source"]
    for s in SHAPES.values():
        lines.append(
            f"{s.name:<16} {s.layers:>6} {s.hidden:>6} {s.ffn:>6} "
            f"{f'{s.heads}/{s.kv_heads}':>9} {n_params(s, vocab) / 1e9:>6.2f}B "
            f"{data_bytes(s, DEFAULT_QUANT, vocab) / MiB:>10,.0f}  "
            f"{s.attention}{', tied embeddings' if s.tied else ''}, {s.source or 'for tests'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", nargs="?", choices=list(SHAPES), metavar="SHAPE",
                        help=f"one of: {', '.join(SHAPES)}")
    parser.add_argument("--quant", default=DEFAULT_QUANT, choices=list(QUANTS),
                        help=f"quantization (default {DEFAULT_QUANT}; F16: not quantized)")
    parser.add_argument("--dir", help=f"cache folder (default ${MODELS_DIR_ENV}, else "
                        "~/.cache/autotune/models)")
    parser.add_argument("--keep-f16", action="store_true",
                        help="keep the F16 intermediate in the cache as well")
    parser.add_argument("--threads", type=int, help="threads to use (default: all cores)")
    parser.add_argument("--no-lock", action="store_true",
                        help="do not wait for the machine lock (measurements may run)")
    parser.add_argument("--verbose", action="store_true",
                        help="show llama.cpp's log of each tensor it quantizes")
    parser.add_argument("--list", action="store_true", help="list the shapes and exit")
    args = parser.parse_args(argv)
    if args.list:
        print(describe_shapes())
        return
    if args.shape is None:
        parser.error("name a SHAPE (or --list)")
    try:
        path = make_model(args.shape, args.quant, args.dir, keep_f16=args.keep_f16,
                          threads=args.threads, lock=not args.no_lock, verbose=args.verbose)
    except OSError as err:  # a full disk, a folder that cannot be written
        sys.exit(f"model_shapes.py: {err}: pass a --dir that can be written and has room")
    print(path)


if __name__ == "__main__":
    main()
