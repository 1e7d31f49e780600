"""Write (and read back) the script of JARVIS_* exports that a user sources.

Two formats: `shell` (`export NAME='value'`, for `. ./jarvis.env` in sh or bash) and
`dotenv` (`NAME=value`, for systemd's EnvironmentFile= and `docker --env-file`). Both
read back through python-dotenv, so `autotune bench --env FILE` measures what was written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from autotune.errors import AutotuneError
from autotune.settings import Settings, load_env_file

FORMATS = ("shell", "dotenv")
NOT_FOR_LLAMA = ("PYTORCH_CUDA_ALLOC_CONF and TF_FORCE_GPU_ALLOW_GROWTH are not set: they "
                 "configure PyTorch and TensorFlow memory, and llama.cpp reads neither.")


@dataclass(frozen=True)
class ExportHeader:
    """What the header comment says about where the settings came from."""

    model: str
    study: str
    date: str
    score_s: float | None = None
    improvement: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def shell_quote(value: str) -> str:
    """Single-quote for sh: the only character needing care inside '...' is ' itself."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def machine_variables(settings: Settings, gpus: list[int], system: str) -> dict[str, str]:
    """The machine-level variables that apply: the GPUs used, Metal on macOS."""
    found = {}
    if gpus and settings.n_gpu_layers != 0:
        found["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    if system == "Darwin":
        found["LLAMA_METAL"] = "1"
    return found


def render(settings: Settings, fields: tuple[str, ...], header: ExportHeader,
           machine: dict[str, str] | None = None, fmt: str = "shell") -> str:
    """The export file's text, for the given tuned fields."""
    check_format(fmt)
    lines = [f"# JARVIS_* settings for {header.model}, measured by autotune",
             f"# date: {header.date}",
             f"# study: {header.study}"]
    if header.score_s is not None:
        lines.append(f"# score: {header.score_s:.3f} s (mean latency + spike and "
                     "consistency penalties)")
    if header.improvement:
        lines.append(f"# improvement over the guide's defaults: {header.improvement}")
    lines += [f"# {note}" for note in header.notes]
    if fmt == "shell":
        lines.append("# use: . ./jarvis.env   (then restart Jarvis)")
    variables = {**settings.to_env(fields), **(machine or {})}
    for name, value in variables.items():
        lines.append(f"export {name}={shell_quote(value)}" if fmt == "shell"
                     else f"{name}={value}")
    lines.append(f"# {NOT_FOR_LLAMA}")
    return "\n".join(lines) + "\n"


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise AutotuneError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")


def check_writable(path: str | os.PathLike[str], force: bool) -> Path:
    """Refuse, before any work is done, to overwrite an existing file without --force."""
    out = Path(path)
    if out.is_dir():
        raise AutotuneError(f"--out {out}: is a directory, expected a file path")
    if out.exists() and not force:
        raise AutotuneError(f"--out {out}: file exists; pass --force to overwrite it")
    if not out.parent.exists():
        raise AutotuneError(f"--out {out}: folder {out.parent} does not exist")
    return out


def write(path: str | os.PathLike[str], text: str, force: bool = False) -> Path:
    out = check_writable(path, force)
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(out)
    return out


def read(path: str | os.PathLike[str]) -> Settings:
    """Settings back from an export file, either format."""
    return load_env_file(path)
