"""Files replaced whole: the old file or the new one, and no temporary left either way."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from autotune.studies.files import replace_atomically, written_beside


def test_a_file_is_replaced_with_the_given_mode_and_nothing_left_beside_it(
        tmp_path: Path) -> None:
    target = tmp_path / "kept.journal"
    target.write_bytes(b"old\n")
    replace_atomically(target, b"new\n", 0o640)
    assert target.read_bytes() == b"new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["kept.journal"]


def test_a_link_at_the_target_is_replaced_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    target = tmp_path / "jarvis.env"
    target.symlink_to(victim)
    replace_atomically(target, b"new\n", 0o644)
    assert victim.read_bytes() == b"precious\n" and not target.is_symlink()


def test_a_failure_in_the_block_keeps_the_old_file_and_leaves_no_temporary(
        tmp_path: Path) -> None:
    target = tmp_path / "jarvis.env"
    target.write_bytes(b"old\n")
    with pytest.raises(OSError), written_beside(target, b"new\n", 0o644) as temporary:
        assert Path(temporary).read_bytes() == b"new\n"
        raise OSError("the rename failed")
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["jarvis.env"]
