"""The PostgreSQL test server starts from a checkout whose parent folders only its owner may
enter (mode 0700, as /root is): under root its programs are copied where `nobody` reaches."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from pg_server import PostgresServer, install_dir


def test_server_starts_from_an_install_inside_a_private_folder(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    (private / "pginstall").symlink_to(install_dir(), target_is_directory=True)
    server = PostgresServer(install=private / "pginstall")
    try:
        server.start()
        import psycopg

        with psycopg.connect(server.new_database()) as connection:
            assert connection.execute("SELECT 41 + 1").fetchone() == (42,)
        owner = server.data.stat().st_uid
        expected = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
        assert owner == expected
        if os.geteuid() == 0:  # its programs were run from the folder `nobody` owns
            assert server.folder in server.bin.parents
    finally:
        server.stop()
