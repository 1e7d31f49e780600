"""A bounded reader of a GGUF file's header: metadata and tensor table, nothing else.

Model files come from the internet, so every count, length and nesting level in the
header is checked against the file before it is used: a crafted header is one clear
error, never a recursion, a huge allocation or a traceback. Large arrays (the tokenizer's
vocabulary) are stepped over, not decoded, which also keeps inspection fast (the `gguf`
package's reader builds an array for every one of a vocabulary's 50k-250k tokens).

Format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): magic, version,
tensor count, metadata count; metadata as (key, type, value); tensor infos as (name,
dimensions, type, offset); then the aligned tensor data.

Example:
    >>> header = read_header(demo_model_path())
    >>> header.fields["general.architecture"], len(header.tensors)
    ('llama', 272)
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 3  # real files nest none; the format allows arrays of arrays
KEPT_ARRAY_LENGTH = 4096  # per-layer values are kept, vocabularies stepped over

# Metadata value types: struct format of the scalars; 8 = string, 9 = array.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}
STRING, ARRAY = 8, 9


class HeaderError(ValueError):
    """The header is not a well-formed GGUF header; the message says where."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        total = 1
        for dim in self.dims:
            total *= dim
        return total


@dataclass(frozen=True)
class Header:
    version: int
    fields: dict[str, object]  # a stepped-over array is absent
    tensors: tuple[TensorInfo, ...]
    data_offset: int


class Cursor:
    """Reads little- or big-endian values from the mapped file, never past its end."""

    def __init__(self, data: mmap.mmap | bytes, order: str) -> None:
        self.data = data
        self.order = order
        self.pos = 0

    def take(self, fmt: str) -> object:
        size = struct.calcsize(self.order + fmt)
        if self.pos + size > len(self.data):
            raise HeaderError(f"header ends early at byte {self.pos}")
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.pos)
        self.pos += size
        return value

    def take_int(self, fmt: str) -> int:
        """An integer: `fmt` is one of struct's integer formats (`I`, `Q`)."""
        value = self.take(fmt)
        if not isinstance(value, int):
            raise TypeError(f"struct format {fmt!r} reads no integer")
        return value

    def length(self, what: str, item_bytes: int = 1) -> int:
        """A count of items that must fit in the rest of the file."""
        count = self.take_int("Q")
        if count * item_bytes > len(self.data) - self.pos:
            raise HeaderError(f"{what} at byte {self.pos - 8} claims {count} items, more than "
                              "the file holds")
        return count

    def text(self, what: str) -> str:
        size = self.length(what)
        raw = bytes(self.data[self.pos:self.pos + size])
        self.pos += size
        return raw.decode("utf-8", errors="replace")

    def skip_text(self, what: str) -> None:
        size = self.length(what)  # moves past the length first
        self.pos += size


def read_header(path: Path) -> Header:
    """Parse the header of the GGUF file at `path`; HeaderError on anything malformed."""
    with open(path, "rb") as handle:
        try:
            data: mmap.mmap | bytes = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            data = b""
        try:
            return parse(data)
        finally:
            if isinstance(data, mmap.mmap):
                data.close()


def parse(data: mmap.mmap | bytes) -> Header:
    if bytes(data[:4]) != MAGIC:
        raise HeaderError("no GGUF magic")
    if len(data) < 24:
        raise HeaderError("header ends early")
    (version,) = struct.unpack_from("<I", data, 4)
    order = "<"
    if version & 0xFFFF == 0:  # written on a big-endian machine
        order = ">"
        (version,) = struct.unpack_from(">I", data, 4)
    if version not in SUPPORTED_VERSIONS:
        raise HeaderError(f"GGUF version {version} is not supported (only 2 and 3)")
    cursor = Cursor(data, order)
    cursor.pos = 8
    n_tensors = cursor.length("tensor count", 8 + 4 + 4 + 8)
    n_fields = cursor.length("metadata count", 8 + 4)
    fields: dict[str, object] = {}
    for _ in range(n_fields):
        key = cursor.text("metadata key")
        if key in fields:
            raise HeaderError(f"metadata key {key!r} appears twice")
        value = read_value(cursor, cursor.take_int("I"), key, depth=0)
        if value is not SKIPPED:
            fields[key] = value
    tensors = tuple(read_tensor_info(cursor) for _ in range(n_tensors))
    alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
            or alignment & (alignment - 1):
        raise HeaderError("general.alignment is not a power of two")
    data_offset = -(-cursor.pos // alignment) * alignment
    return Header(version, fields, tensors, data_offset)


SKIPPED = object()


def read_value(cursor: Cursor, kind: int, key: str, depth: int) -> object:
    """One metadata value; arrays too long to be per-layer values come back SKIPPED."""
    if kind in SCALARS:
        return cursor.take(SCALARS[kind])
    if kind == STRING:
        return cursor.text(f"text of {key!r}")
    if kind != ARRAY:
        raise HeaderError(f"metadata {key!r} has unknown value type {kind}")
    if depth >= MAX_ARRAY_DEPTH:
        raise HeaderError(f"metadata {key!r} nests arrays more than {MAX_ARRAY_DEPTH} deep")
    item = cursor.take_int("I")
    if item not in SCALARS and item not in (STRING, ARRAY):
        raise HeaderError(f"metadata {key!r} is an array of unknown type {item}")
    item_bytes = struct.calcsize(SCALARS[item]) if item in SCALARS else 8
    count = cursor.length(f"array {key!r}", item_bytes)
    if count > KEPT_ARRAY_LENGTH or item == ARRAY:
        step_over(cursor, item, count, key, depth + 1)
        return SKIPPED
    return [read_value(cursor, item, key, depth + 1) for _ in range(count)]


def step_over(cursor: Cursor, item: int, count: int, key: str, depth: int) -> None:
    """Move past `count` array items without decoding them."""
    if item in SCALARS:
        cursor.pos += count * struct.calcsize(SCALARS[item])
    elif item == STRING:
        for _ in range(count):
            cursor.skip_text(f"text in {key!r}")
    else:
        if depth >= MAX_ARRAY_DEPTH:
            raise HeaderError(f"metadata {key!r} nests arrays more than {MAX_ARRAY_DEPTH} deep")
        for _ in range(count):
            inner = cursor.take_int("I")
            if inner not in SCALARS and inner not in (STRING, ARRAY):
                raise HeaderError(f"metadata {key!r} is an array of unknown type {inner}")
            size = struct.calcsize(SCALARS[inner]) if inner in SCALARS else 8
            step_over(cursor, inner, cursor.length(f"array {key!r}", size), key, depth + 1)


def read_tensor_info(cursor: Cursor) -> TensorInfo:
    name = cursor.text("tensor name")
    n_dims = cursor.take_int("I")
    if not 0 < n_dims <= MAX_DIMS:
        raise HeaderError(f"tensor {name!r} has {n_dims} dimensions")
    dims = tuple(cursor.take_int("Q") for _ in range(n_dims))
    ggml_type = cursor.take_int("I")
    offset = cursor.take_int("Q")
    return TensorInfo(name, dims, ggml_type, offset)
