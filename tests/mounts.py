"""Filesystem faults for tests: a small tmpfs to fill up, a folder remounted read-only, and
file modes that hold even for root.

Mounting needs root with CAP_SYS_ADMIN (the CI machine has it; a container or a user
account may not). Each helper says whether it could mount, and the tests fall back to the
journal's fault switch where it cannot; every mount made is undone when its context ends,
however the test went.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

FILLER = "filler"


def mount(*args: str) -> bool:
    """Run mount(8) with `args`; False where this machine does not let us."""
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "--lazy", str(folder)], capture_output=True, check=True)


@contextmanager
def tmpfs(folder: Path, size_bytes: int) -> Iterator[bool]:
    """`folder` (made here) as a tmpfs of `size_bytes` while the context lasts: True, or
    False where mounting is not allowed (the folder is then a plain one)."""
    folder.mkdir()
    mounted = mount("-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(folder))
    try:
        yield mounted
    finally:
        if mounted:
            unmount(folder)


@contextmanager
def bound(folder: Path) -> Iterator[bool]:
    """`folder` bind-mounted onto itself while the context lasts, so that it alone can be
    remounted read-only (root ignores file modes, not a read-only mount): True, or False
    where mounting is not allowed."""
    mounted = mount("--bind", str(folder), str(folder))
    try:
        yield mounted
    finally:
        if mounted:
            unmount(folder)


def remount(folder: Path, writable: bool) -> None:
    """Make a bind mount from `bound` read-only, or writable again. It fails (EBUSY) while
    a process holds a file there open for writing: callers do it while none does."""
    mode = "rw" if writable else "ro"
    subprocess.run(["mount", "-o", f"remount,bind,{mode}", str(folder)], capture_output=True,
                   check=True)


def fill(folder: Path) -> Path:
    """Fill the filesystem that holds `folder` to its last byte; returns the filler file,
    whose removal frees the space again."""
    filler = folder / FILLER
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        chunk = 1 << 20
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                chunk //= 2
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


def read_only(command: list[str]) -> list[str]:
    """`command` unable to write where file modes forbid it, even when run as root."""
    if os.geteuid() != 0:
        return command
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: file modes cannot stop a write here")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *command]


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Say how a test made its fault and what came of it, under -q too (and in JUnit XML)."""
    request.node.user_properties.append(("outcome", line))
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin(
        "capturemanager")
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture else nullcontext():
            reporter.write_line(f"\n{request.node.name}: {line}")
