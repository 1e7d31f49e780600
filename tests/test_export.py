"""The export script: quoting, both formats, the header, reading back, sourcing in sh."""

from __future__ import annotations

import errno
import io
import os
import stat
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from autotune.errors import AutotuneError
from autotune.measure.settings import CORE_FIELDS, Settings
from autotune.studies import export

HEADER = export.ExportHeader(model="Tiny (tiny.gguf)", study="tiny@box", date="2026-11-24 10:00",
                             score_s=0.4321, improvement="2.00x lower mean latency",
                             notes=("n_gpu_layers fixed at 0: no GPU",))
WINNER = Settings(context_window=1024, n_threads=2, n_gpu_layers=0,
                  enable_context_cache=True, max_cache_size=8)


@pytest.mark.parametrize("value", ["2", "it's", "a b", "$HOME", "`x`", "\"q\"", "", "'"])
def test_shell_quote_survives_sh(value: str) -> None:
    out = subprocess.run(["sh", "-c", f"printf %s {export.shell_quote(value)}"],
                         capture_output=True, text=True, check=True).stdout
    assert out == value


def test_shell_format_has_header_and_one_export_per_tuned_variable() -> None:
    text = export.render(WINNER, CORE_FIELDS, HEADER)
    lines = text.splitlines()
    assert lines[0].startswith("# JARVIS_* settings for Tiny (tiny.gguf)")
    assert "# date: 2026-11-24 10:00" in lines
    assert "# study: tiny@box" in lines
    assert any(line.startswith("# score: 0.432 s") for line in lines)
    assert "# improvement over the guide's defaults: 2.00x lower mean latency" in lines
    exports = [line for line in lines if line.startswith("export ")]
    assert exports == [
        "export JARVIS_MODEL_CONTEXT_WINDOW='1024'", "export JARVIS_N_THREADS='2'",
        "export JARVIS_N_GPU_LAYERS='0'", "export JARVIS_ENABLE_CONTEXT_CACHE='true'",
        "export JARVIS_MAX_CACHE_SIZE='8'"]
    assert "PYTORCH_CUDA_ALLOC_CONF" in text and "llama.cpp reads neither" in text


def test_dotenv_format_is_plain_name_value() -> None:
    text = export.render(WINNER, CORE_FIELDS, HEADER, fmt="dotenv")
    assert "JARVIS_N_THREADS=2" in text.splitlines()
    assert "export " not in text and "'" not in "".join(
        line for line in text.splitlines() if not line.startswith("#"))


def test_unknown_format_is_an_error() -> None:
    with pytest.raises(AutotuneError, match=r"^fmt=yaml: expected one of shell, dotenv$"):
        export.render(WINNER, CORE_FIELDS, HEADER, fmt="yaml")


def test_machine_variables_name_gpus_only_when_layers_are_offloaded() -> None:
    assert export.machine_variables(WINNER, [0], "Linux") == {}
    gpu = WINNER.replace(n_gpu_layers=-1)
    assert export.machine_variables(gpu, [0, 1], "Linux") == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert export.machine_variables(WINNER, [], "Darwin") == {"LLAMA_METAL": "1"}


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_written_file_reads_back_and_sources_in_sh_and_bash(tmp_path: Path, fmt: str) -> None:
    path = export.write(tmp_path / "jarvis.env", export.render(WINNER, CORE_FIELDS, HEADER,
                                                               fmt=fmt))
    assert export.read(path) == WINNER.replace()
    assert dotenv_values(path)["JARVIS_MAX_CACHE_SIZE"] == "8"
    if fmt == "shell":
        for shell in ("sh", "bash"):
            env = subprocess.run([shell, "-c", f". {path}; env"], capture_output=True,
                                 text=True, check=True, env={}).stdout.splitlines()
            assert sorted(line for line in env if line.startswith("JARVIS_")) == sorted(
                f"{k}={v}" for k, v in WINNER.to_env(CORE_FIELDS).items())


def test_existing_file_is_not_silently_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "jarvis.env"
    path.write_text("mine\n")
    with pytest.raises(AutotuneError, match="pass force=True to overwrite it"):
        export.write(path, "new\n")
    assert path.read_text() == "mine\n"
    export.write(path, "new\n", force=True)
    assert path.read_text() == "new\n"


def test_missing_folder_and_directory_targets_are_errors(tmp_path: Path) -> None:
    with pytest.raises(AutotuneError, match="does not exist"):
        export.check_writable(tmp_path / "nope" / "jarvis.env", force=False)
    with pytest.raises(AutotuneError, match="is a directory"):
        export.check_writable(tmp_path, force=True)


HOSTILE = "x\n$(touch PWNED)\rJARVIS_N_THREADS=999\u2028\x85\x0b\x1b[31m`id`;'\"\\"


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_render_makes_every_header_text_one_comment_line(fmt: str) -> None:
    header = export.ExportHeader(model=HOSTILE, study=HOSTILE, date=HOSTILE, score_s=0.5,
                                 improvement=HOSTILE, notes=(HOSTILE, HOSTILE))
    text = export.render(WINNER, CORE_FIELDS, header, fmt=fmt)
    lines = text.splitlines()
    assert lines == text.split("\n")[:-1]
    assert len([line for line in lines if not line.startswith("#")]) == len(CORE_FIELDS)
    # systemd continues a comment line that ends in an odd run of backslashes
    assert all((len(line) - len(line.rstrip("\\"))) % 2 == 0 for line in lines)
    assert lines[1].endswith("\\\\")
    assert "# date: x\\n$(touch PWNED)\\rJARVIS_N_THREADS=999\\u2028\\x85\\x0b\\x1b[31m" in text
    assert dotenv_values(stream=io.StringIO(text)) == WINNER.to_env(CORE_FIELDS)


def test_header_values_are_capped_so_no_line_grows_without_bound() -> None:
    header = export.ExportHeader(model="m" * 100_000, study="s", date="d")
    text = export.render(WINNER, CORE_FIELDS, header)
    assert max(len(line) for line in text.splitlines()) < 2 * export.HEADER_LIMIT


def test_a_score_read_back_as_text_is_left_out_not_a_crash() -> None:
    header = export.ExportHeader(model="m", study="s", date="d", score_s="0.5\nX=1")  # type: ignore[arg-type]
    assert "# score" not in export.render(WINNER, CORE_FIELDS, header)


def test_gpu_indexes_must_be_whole_numbers() -> None:
    gpu = WINNER.replace(n_gpu_layers=-1)
    with pytest.raises(AutotuneError, match="GPU index"):
        export.machine_variables(gpu, ["0\nX=1"], "Linux")  # type: ignore[list-item]
    with pytest.raises(AutotuneError, match="GPU index"):
        export.machine_variables(gpu, [True], "Linux")


def test_new_file_gets_the_umask_mode_and_an_existing_file_keeps_its_mode(
        tmp_path: Path) -> None:
    path = tmp_path / "jarvis.env"
    old_umask = os.umask(0o027)
    try:
        export.write(path, "new\n")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    path.chmod(0o600)
    export.write(path, "newer\n", force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "newer\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jarvis.env"]


def test_planted_symlink_at_the_target_is_refused_and_its_target_untouched(
        tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "jarvis.env"
    path.symlink_to(victim)
    with pytest.raises(AutotuneError, match="pass force=True to overwrite it"):
        export.write(path, "new\n")
    dangling = tmp_path / "dangling.env"
    dangling.symlink_to(tmp_path / "created-through-link")
    with pytest.raises(AutotuneError, match="pass force=True to overwrite it"):
        export.write(dangling, "new\n")
    assert not (tmp_path / "created-through-link").exists()
    export.write(path, "new\n", force=True)  # --force replaces the link, never follows it
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and path.read_text() == "new\n"


def test_file_appearing_after_the_check_is_not_overwritten(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    path = tmp_path / "jarvis.env"
    real_fsync = os.fsync

    def someone_writes_meanwhile(descriptor: int) -> None:
        if not path.exists():
            path.write_text("theirs\n")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", someone_writes_meanwhile)
    with pytest.raises(AutotuneError, match="appeared there"):
        export.write(path, "ours\n")
    assert path.read_text() == "theirs\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jarvis.env"]


@pytest.mark.parametrize("force", [False, True])
def test_no_temporary_file_is_left_when_placing_it_fails(tmp_path: Path, force: bool,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    path = tmp_path / "jarvis.env"
    path.write_text("mine\n") if force else None

    def fail(*_args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace" if force else "link", fail)
    with pytest.raises(AutotuneError, match="Input/output error"):
        export.write(path, "new\n", force=force)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["jarvis.env"] if force else [])


def test_no_temporary_file_is_left_when_the_disk_is_full(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(AutotuneError, match="No space left"):
        export.write(tmp_path / "jarvis.env", "new\n")
    assert list(tmp_path.iterdir()) == []


def test_filesystem_without_hard_links_still_never_clobbers(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    def unsupported(*_args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", unsupported)
    path = export.write(tmp_path / "jarvis.env", "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jarvis.env"]


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_folder_that_takes_no_new_file_is_refused_by_trying(tmp_path: Path, where: str) -> None:
    """Root ignores permission bits, so the certain cases are a file as folder and /proc."""
    if where == "under a file":
        (tmp_path / "plain").write_text("")
        target = tmp_path / "plain" / "jarvis.env"
    else:
        target = Path("/proc/jarvis.env")
    with pytest.raises(AutotuneError, match=r"^out=.*/jarvis\.env: "):
        export.check_writable(target, force=False)


def test_tune_refuses_an_unwritable_out_before_any_trial(small_gguf: Path, run_cli,
                                                          empty_cwd: Path) -> None:
    done = run_cli(str(small_gguf), "--out", "/proc/jarvis.env", "--studies-dir", "studies",
                   cwd=empty_cwd)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("autotune: error: --out /proc/jarvis.env: cannot write in")
    assert list(empty_cwd.iterdir()) == []


def test_render_refuses_to_write_a_line_that_is_not_a_plain_variable() -> None:
    """The last guard, for whatever a future caller passes as a machine variable."""
    with pytest.raises(RuntimeError, match="line check"):
        export.render(WINNER, CORE_FIELDS, HEADER, {"CUDA_VISIBLE_DEVICES": "0\nX=1"}, "dotenv")
    with pytest.raises(RuntimeError, match="line check"):
        export.render(WINNER, CORE_FIELDS, HEADER, {"CUDA_VISIBLE_DEVICES": "$(id)"}, "shell")


@pytest.mark.parametrize("name", ["tiny@box", "a, trial 2 (x)@box", "back\\slash@box",
                                  "$(touch x)'@box"])
def test_a_written_header_names_its_study_for_reading_back(name: str, tmp_path: Path) -> None:
    header = export.ExportHeader(model="Tiny", study=f"{name}, confirmed winner (trial 3)",
                                 date="2026-11-25")
    path = tmp_path / "jarvis.env"
    path.write_text(export.render(WINNER, CORE_FIELDS, header))
    assert export.named_study(path) == name


def test_a_hand_written_file_names_no_study(tmp_path: Path) -> None:
    path = tmp_path / "jarvis.env"
    path.write_text("# my settings\nexport JARVIS_N_THREADS='2'\n# study: x, trial 1 (ok)\n")
    assert export.named_study(path) is None
    assert export.named_study(tmp_path / "missing.env") is None


def test_header_states_what_the_window_holds_and_warns_below_the_guides() -> None:
    from autotune.measure.records import TrialStats
    from autotune.studies import window

    stats = TrialStats(tokens_per_turn=200.0, longest_conversation_tokens=900)
    header = export.ExportHeader(model="Tiny (tiny.gguf)", study="tiny@box", date="d",
                                 context=window.holds(1024, stats),
                                 context_warning=window.warning(1024) or "")
    lines = export.render(WINNER, CORE_FIELDS, header).splitlines()
    assert ("# context window 1024 tokens: holds conversations up to 1024 tokens, about 5 turns "
            "of this workload's average 200 tokens per turn (its longest conversation: 900 "
            "tokens)") in lines
    assert any(line.startswith("# WARNING: the context window 1024 is below the guide's 4096")
               for line in lines)
    assert window.warning(4096) is None and window.holds(8192) == (
        "context window 8192 tokens: holds conversations up to 8192 tokens")
