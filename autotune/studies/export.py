"""Write (and read back) the script of JARVIS_* exports that a user sources.

Two formats: `shell` (`export NAME='value'`, for `. ./jarvis.env` in sh or bash) and
`dotenv` (`NAME=value`, for systemd's EnvironmentFile= and `docker --env-file`). Both
read back through python-dotenv, so `autotune bench --env FILE` measures what was written.

The header repeats text that a downloaded model file chose (its name, its file name), so
`render` makes every header value one visible line itself instead of trusting its callers,
and then checks that each line of the result is a comment or one of the expected variables.
The file is written as sh's and editors' users expect in a shared folder: a new file made
exclusively beside the target, fsynced, renamed into place, never clobbering a file that
appeared after `check_writable` found the path free.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autotune.errors import AutotuneError, Option
from autotune.measure.settings import Settings, load_env_file
from autotune.safe_text import visible
from autotune.studies import window
from autotune.studies.files import fsync_folder, replace_atomically, written_beside
from autotune.studies.profiles import PROFILES, unconfirmed_profiles
from autotune.studies.records import Improvement, Profile, StudyRecord, TrialRecord

if TYPE_CHECKING:
    import optuna

FORMATS = ("shell", "dotenv")
NOT_FOR_LLAMA = ("PYTORCH_CUDA_ALLOC_CONF and TF_FORCE_GPU_ALLOW_GROWTH are not set: they "
                 "configure PyTorch and TensorFlow memory, and llama.cpp reads neither.")
# Characters of one header value: a model's name can be megabytes, and docker's --env-file
# reader rejects a line over 64 KiB.
HEADER_LIMIT = 300
# What a written line may be, nothing else: a comment, or a known name with a plain value.
NAME = r"(?:JARVIS_[A-Z_]+|CUDA_VISIBLE_DEVICES|LLAMA_METAL)"
VALUE = r"[0-9A-Za-z.,+-]*"
# A comment's backslashes come in pairs or start an escape: one that ends a line would make
# systemd read the next line as part of the comment.
COMMENT = r"#(?:[^\\\r\n]|\\[^\r\n])*"
NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)
LINE = {"shell": re.compile(rf"{COMMENT}|export {NAME}='{VALUE}'"),
        "dotenv": re.compile(rf"{COMMENT}|{NAME}={VALUE}")}


@dataclass(frozen=True)
class ExportHeader:
    """What the header comment says about where the settings came from."""

    model: str
    study: str
    date: str
    score_s: float | None = None
    improvement: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    # what the window holds (studies.window.holds), and its warning below the guide's
    context: str = ""
    context_warning: str = ""
    goals: str = ""  # `objective: p95 latency; targets: p95<=1.5s` (studies with goals)


def shell_quote(value: str) -> str:
    """Single-quote for sh: the only character needing care inside '...' is ' itself."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def machine_variables(settings: Settings, gpus: list[int], system: str) -> dict[str, str]:
    """The machine-level variables that apply: the GPUs used, Metal on macOS."""
    found = {}
    for gpu in gpus:  # read back from a storage, which anyone may have written
        if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
            raise AutotuneError(f"GPU index {visible(repr(gpu), 40)} in the study's hardware "
                                "record is not a whole number; export with a study tuned here")
    if gpus and settings.n_gpu_layers != 0:
        found["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    if system == "Darwin":
        found["LLAMA_METAL"] = "1"
    return found


def comment(text: object) -> str:
    """One comment line, whatever `text` holds (see safe_text.visible)."""
    return "# " + visible(text, HEADER_LIMIT, escape_backslash=True)


def render(settings: Settings, fields: tuple[str, ...], header: ExportHeader,
           machine: dict[str, str] | None = None, fmt: str = "shell") -> str:
    """The export file's text, for the given tuned fields."""
    check_format(fmt)
    lines = [comment(f"JARVIS_* settings for {header.model}, measured by autotune"),
             comment(f"date: {header.date}"),
             comment(f"study: {header.study}")]
    if isinstance(header.score_s, (int, float)) and not isinstance(header.score_s, bool):
        lines.append(comment(f"score: {header.score_s:.3f} s (mean latency + spike and "
                             "consistency penalties)"))
    if header.goals:
        lines.append(comment(header.goals))
    if header.improvement:
        lines.append(comment(f"improvement over the guide's defaults: {header.improvement}"))
    if header.context:
        lines.append(comment(header.context))
    if header.context_warning:
        lines.append(comment(f"WARNING: {header.context_warning}"))
    lines += [comment(note) for note in header.notes]
    if fmt == "shell":
        lines.append(comment("use: . ./jarvis.env   (then restart Jarvis)"))
    variables = {**settings.to_env(fields), **(machine or {})}
    for name, value in variables.items():
        lines.append(f"export {name}={shell_quote(value)}" if fmt == "shell"
                     else f"{name}={value}")
    lines.append(comment(NOT_FOR_LLAMA))
    text = "\n".join(lines) + "\n"
    check_lines(text, fmt, len(lines))
    return text


def check_lines(text: str, fmt: str, expected: int) -> None:
    """The last guard: every line a comment or a plain variable, however a line is split."""
    if len(text.splitlines()) != expected or not all(
            LINE[fmt].fullmatch(line) for line in text.splitlines()):
        raise RuntimeError(f"export text failed its line check:\n{text!r}")


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise AutotuneError(Option("fmt", visible(fmt, 40)),
                            f": expected one of {', '.join(FORMATS)}")


def check_writable(path: str | os.PathLike[str], force: bool) -> Path:
    """Refuse, before any work is done, a target that cannot or may not be written.

    Whether the folder takes a new file is found by making one there (and removing it):
    permissions, read-only mounts, quotas and root's rights all answer the same way then.
    """
    out = Path(path)
    shown = Option("out", visible(out))
    if out.is_dir():
        raise AutotuneError(shown, ": is a directory, expected a file path")
    if os.path.lexists(out) and not force:
        raise AutotuneError(shown, ": file exists; pass ", Option("force", True),
                            " to overwrite it")
    folder = out.parent
    if not folder.exists():
        raise AutotuneError(shown, f": folder {visible(folder)} does not exist")
    if not folder.is_dir():
        raise AutotuneError(shown, f": {visible(folder)} is not a folder")
    try:
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.", suffix=".tmp")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as err:
        raise AutotuneError(shown, f": cannot write in {visible(folder)} ({err.strerror}); "
                            "choose another ", Option("out")) from None
    return out


def write(path: str | os.PathLike[str], text: str, force: bool = False) -> Path:
    """Write `text` to `path` atomically, keeping an existing file's mode.

    Without `force`, a file that appeared at `path` since `check_writable` is kept: the new
    file is hard-linked into place, which fails rather than replace it. With `force` the
    target is renamed over, so a symlink there is replaced, never followed.
    """
    out = check_writable(path, force)
    data, mode = text.encode("utf-8"), kept_mode(out)
    try:
        if force:
            replace_atomically(out, data, mode)
        else:
            with written_beside(out, data, mode) as temporary:
                place_new(temporary, out, data, mode)
            fsync_folder(out.parent)
    except FileExistsError:
        raise AutotuneError(Option("out", visible(out)), ": a file appeared there while "
                            "autotune worked; it is kept. Pass ", Option("force", True),
                            " to overwrite it, or another ", Option("out")) from None
    except OSError as err:
        raise AutotuneError(Option("out", visible(out)), f": cannot write it ({err.strerror}); "
                            "the study is kept: `autotune export STUDY > FILE` writes it "
                            "elsewhere") from None
    return out


def place_new(temporary: str, out: Path, data: bytes, mode: int) -> None:
    """Put the written file at `out` only if nothing is there (FileExistsError otherwise)."""
    try:
        os.link(temporary, out)
    except OSError as err:
        if isinstance(err, FileExistsError) or err.errno not in NO_HARD_LINKS:
            raise
        # A filesystem without hard links: create exclusively, which also never clobbers.
        descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())


def kept_mode(out: Path) -> int:
    """The existing regular file's permissions, else what a new file gets under the umask."""
    with suppress(FileNotFoundError):
        status = os.lstat(out)
        if stat.S_ISREG(status.st_mode):
            return stat.S_IMODE(status.st_mode)
    umask = os.umask(0o022)  # the only portable way to read it is to set it and set it back
    os.umask(umask)
    return 0o666 & ~umask


def export_text(study: optuna.Study, trial_number: int | None = None, fmt: str = "shell",
                date: str | None = None, profile: str | None = None) -> str:
    """The export script for a study's confirmed winner, one of its profiles (`fast`,
    `balanced`, `lean`: see studies/profiles.py), or any of its trials.

    Every text here was read back from a storage, which anyone may have written; `render`
    makes it safe, and a record of the wrong shape is one error naming the study.
    """
    try:
        return export_from_records(study, trial_number, fmt, date, profile)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise AutotuneError(f"study {visible(repr(study.study_name))}: its records cannot be "
                            f"exported ({visible(type(err).__name__)}: {visible(err, 80)}); "
                            "tune it again or export another trial with ",
                            Option("trial_number", "N")) from None


def export_from_records(study: optuna.Study, trial_number: int | None, fmt: str,
                        date: str | None, profile: str | None = None) -> str:
    record = StudyRecord.read(study)
    name = visible(repr(study.study_name))
    notes = record.space.notes if record.space else ()
    if profile is not None:
        chosen = profile_to_export(study, record, trial_number, profile)
        settings = chosen.settings
        scored = record.goals is None or record.goals.objective == "score"
        score_s = chosen.shown_value_s if scored else None  # else the note gives its value
        stats = next((TrialRecord.read(t, study.study_name).stats
                      for t in study.get_trials(deepcopy=False)
                      if t.number == chosen.trial_number), None)
        is_winner = record.winner is not None and chosen.label == record.winner.label
        improvement = (describe(record.winner.improvement)
                       if is_winner and record.winner is not None else "")
        source = (f"{study.study_name}, confirmed winner ({chosen.label})" if is_winner
                  else f"{study.study_name}, trial {chosen.trial_number} (profile {profile})")
        notes = (f"profile {chosen.describe()}", *notes)
    elif trial_number is None:
        winner = record.winner
        if not winner:
            raise AutotuneError(f"study {name} has no confirmed winner yet; pass ",
                                Option("trial_number", "N"), " or finish a tuning run")
        settings = winner.settings
        score_s, improvement = winner.score_s, describe(winner.improvement)
        source = f"{study.study_name}, confirmed winner ({winner.label})"
        runs = record.confirmation.runs if record.confirmation else ()
        stats = next((r.stats for r in runs if r.label == winner.label
                      and r.stats.tokens_per_turn), None)
        if winner.tie_break:
            notes = (*notes, winner.tie_break)
    else:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number == trial_number]
        kept = TrialRecord.read(trials[0], study.study_name) if trials else None
        if kept is None or kept.settings is None:
            raise AutotuneError(f"study {name} has no measured trial {trial_number}")
        settings = kept.settings
        score_s = kept.score.total_s if kept.score else None
        improvement = ""
        source = f"{study.study_name}, trial {trial_number} ({kept.status})"
        stats = kept.stats
    model, hardware = record.model, record.hardware
    header = ExportHeader(
        model=f"{model.name} ({os.path.basename(str(model.path))})",
        study=source, date=date or time.strftime("%Y-%m-%d %H:%M %Z"), score_s=score_s,
        improvement=improvement, notes=tuple(notes),
        context=window.holds(settings.context_window, stats),
        context_warning=window.warning(settings.context_window) or "",
        goals=record.goals.describe() if record.goals else "")
    gpus = [g.index for g in hardware.gpus] if hardware.can_offload else []
    machine = machine_variables(settings, gpus, hardware.system)
    return render(settings, record.tuned_fields, header, machine, fmt)


def profile_to_export(study: optuna.Study, record: StudyRecord, trial_number: int | None,
                      profile: str) -> Profile:
    """The study's kept profile `profile`; its front's, unconfirmed, when none was kept."""
    if trial_number is not None:
        raise AutotuneError(Option("trial_number", trial_number), " and ",
                            Option("profile", visible(profile, 40)), ": choose one of them")
    if profile not in PROFILES:
        raise AutotuneError(Option("profile", visible(profile, 40)),
                            f": expected one of {', '.join(PROFILES)}")
    found = (record.profiles or unconfirmed_profiles(study)).get(profile)
    if found is None:
        raise AutotuneError(f"study {visible(repr(study.study_name))} has no feasible trial "
                            "with a measured peak memory, so no profile; finish a tuning run")
    return found


def describe(improvement: Improvement | None) -> str:
    """One line for the export header and the report."""
    if not improvement:
        return "not measured (the guide's defaults did not finish)"
    return improvement.describe()


def read(path: str | os.PathLike[str]) -> Settings:
    """Settings back from an export file, either format."""
    return load_env_file(path)


# `# study: NAME, confirmed winner (LABEL)` or `# study: NAME, trial N (STATUS)`
STUDY_LINE = re.compile(r"# study: (?P<name>.+), (?:confirmed winner|trial \d+) \(.*\)")


def study_in_header(lines: Iterable[str]) -> str | None:
    """The study an export file's header says it came from, or None (a hand-written file).

    Only the first `# study:` line of the leading comments is read, and only as a name to
    look up: a name that no storage holds is simply not found. A name's backslashes were
    doubled when it was written (see `comment`); they are halved again.

    Example:
        >>> study_in_header(["# date: 2026-11-25", "# study: a, b@box, confirmed winner "
        ...                  "(trial 3)", "export JARVIS_N_THREADS='2'"])
        'a, b@box'
        >>> study_in_header(["export JARVIS_N_THREADS='2'", "# study: x, trial 1 (ok)"])
    """
    for line in lines:
        if not line.startswith("#"):
            return None
        found = STUDY_LINE.fullmatch(line.rstrip("\r\n"))
        if found:
            return found["name"].replace("\\\\", "\\")
    return None


def named_study(path: str | os.PathLike[str]) -> str | None:
    """`study_in_header` of a file; None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return study_in_header(handle)
    except OSError:
        return None
