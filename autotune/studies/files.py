"""Files replaced whole: written beside their target, synced, and renamed into place.

A reader (a shell sourcing the export, Optuna replaying the journal) sees the old file or
the new one, never half of one, and a crash leaves at most a hidden temporary beside it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


@contextmanager
def written_beside(path: Path, data: bytes, mode: int) -> Iterator[str]:
    """A new file beside `path` holding `data` with permissions `mode`, synced to disk.

    The block renames (or links) it into place; whatever is left of it is removed on the
    way out, so an error anywhere leaves no temporary behind.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
        yield temporary
    finally:
        with suppress(FileNotFoundError):
            os.unlink(temporary)  # still there unless it was renamed into place


def replace_atomically(path: Path, data: bytes, mode: int) -> None:
    """Put `data` at `path` in one rename, replacing what is there (a link is not followed)."""
    with written_beside(path, data, mode) as temporary:
        os.replace(temporary, path)
        fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename itself durable; some filesystems cannot sync a folder, which is fine."""
    with suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
