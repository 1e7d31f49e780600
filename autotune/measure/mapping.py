"""Records read back from JSON or a storage: one reader for every dataclass record.

The records themselves (measure/records.py, measure/hardware.py, measure/model.py,
studies/records.py) each define their shape; this is the one place that turns a mapping
back into that shape, so they all ignore what a newer writer added and name what is
missing the same way.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Point:
    ...     x: int
    ...     y: int = 0
    >>> from_mapping(Point, {"x": 1, "z": "ignored"})
    Point(x=1, y=0)
    >>> from_mapping(Point, {"y": 2})
    Traceback (most recent call last):
    ...
    autotune.measure.mapping.RecordError: Point without x
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


class RecordError(ValueError):
    """A record that does not have the shape its definition gives; `missing` names the
    fields it lacks, when that is what is wrong."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing


def from_mapping(cls: type[R], data: object, nested: Mapping[str, Any] | None = None) -> R:
    """An instance of the dataclass `cls` from a mapping read back from JSON or a storage.

    Unknown keys are ignored (a newer writer may add fields); a missing field takes its
    default, and a field without a default must be present. `nested` maps a field name to
    the function that converts its value.
    """
    if not isinstance(data, Mapping):
        raise RecordError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    values = {}
    missing = []
    for spec in dataclasses.fields(cls):
        if not spec.init:
            continue
        if spec.name in data:
            value = data[spec.name]
            convert = (nested or {}).get(spec.name)
            values[spec.name] = value if convert is None or value is None else convert(value)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            missing.append(spec.name)
    if missing:
        raise RecordError(f"{cls.__name__} without {', '.join(missing)}", tuple(missing))
    return cls(**values)
