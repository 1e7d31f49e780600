"""The errors a user sees, each said in one line: bad input (exit 2), failed measurement (1),
a study that could not be saved mid-run (75: free space or make the folder writable, and run
the same command again).

The library names a caller's setting by its parameter (`Option("force", True)`), never by a
command-line flag: the CLI renders the same error with its own flags (`--force`).

Example:
    >>> err = AutotuneError(Option("out", "a.env"), ": file exists; pass ",
    ...                     Option("force", True), " to overwrite it")
    >>> str(err)
    'out=a.env: file exists; pass force=True to overwrite it'
    >>> err.render(lambda option: f"--{option.name} {option.value}".removesuffix(" True"))
    '--out a.env: file exists; pass --force to overwrite it'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    """A caller's setting named in a message: its library parameter, and a value to show.

    `value` is the text the caller passed (already made visible), a number or a bool to pass; None
    names the setting alone ("pass another study_name").
    """

    name: str
    value: str | bool | int | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}={self.value}"


class AutotuneError(Exception):
    """Bad input from the user (a file, a variable, an option).

    The message is given in parts, text and `Option`s; `str` names the options as a Python
    caller passes them, `render` as the caller's own interface does. The CLI prints it on
    one line and exits with status 2; nothing else is printed and nothing is written.
    """

    exit_status = 2

    def __init__(self, *parts: str | Option) -> None:
        super().__init__(*parts)
        self.parts = parts

    def render(self, name_of: Callable[[Option], str]) -> str:
        """The message with each option named by `name_of` (a CLI: its flag and value)."""
        return "".join(name_of(p) if isinstance(p, Option) else str(p) for p in self.parts)

    def __str__(self) -> str:
        return self.render(str)


class MeasurementFailed(AutotuneError):
    """The input was fine but the measurement was not: no trial finished, a worker died.

    The CLI prints the reason on one line and exits with status 1.
    """

    exit_status = 1


class StorageFailed(AutotuneError):
    """A write to the study's storage failed mid-run (a full disk, a folder made read-only).

    What was written before it is kept, and the same command resumes the study once the
    storage can be written again. The CLI prints the reason on one line and exits with
    status 75, sysexits' EX_TEMPFAIL: nothing is wrong with the command, run it again.
    """

    exit_status = 75
