"""The export script: quoting, both formats, the header, reading back, sourcing in sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from autotune import export
from autotune.errors import AutotuneError
from autotune.settings import CORE_FIELDS, Settings

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
    with pytest.raises(AutotuneError, match="--format"):
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
    with pytest.raises(AutotuneError, match="--force"):
        export.write(path, "new\n")
    assert path.read_text() == "mine\n"
    export.write(path, "new\n", force=True)
    assert path.read_text() == "new\n"


def test_missing_folder_and_directory_targets_are_errors(tmp_path: Path) -> None:
    with pytest.raises(AutotuneError, match="does not exist"):
        export.check_writable(tmp_path / "nope" / "jarvis.env", force=False)
    with pytest.raises(AutotuneError, match="is a directory"):
        export.check_writable(tmp_path, force=True)
