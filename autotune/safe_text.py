"""Untrusted text (model metadata, file names, study names) made safe to show or to write.

A GGUF file downloaded from the internet chooses its own `general.name`, and its file name
can hold any byte but `/`. Such text must never end a comment line of the export script, start
a statement a shell runs, recolour or move a terminal's cursor, or be read as rich markup.
Every character that is not visible text becomes a visible escape instead, as `repr` writes
it: line and paragraph breaks of every kind, C0 and C1 controls (ESC, U+0085), DEL, format
characters (bidi overrides that reorder what a reader sees, zero-width joiners), and the lone
surrogates that undecodable bytes of a file name become.

Example:
    >>> visible("evil\\n$(touch x)\\x1b[31m")
    'evil\\\\n$(touch x)\\\\x1b[31m'
    >>> terminal("[red]Q4[/x]")
    '\\\\[red]Q4\\\\[/x]'
"""

from __future__ import annotations

import unicodedata

from rich.markup import escape

# Cc: C0, DEL, C1 (U+0085 included); Cf: format characters; Cs: surrogates (from undecodable
# file names); Zl, Zp: U+2028 and U+2029, which Python's splitlines and some editors break on.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escaped(char: str) -> str:
    if char in SHORT_ESCAPES:
        return SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


def visible(text: object, limit: int | None = None, escape_backslash: bool = False) -> str:
    """`text` as one line of visible characters, at most `limit` of them (then `...`).

    With `escape_backslash`, a backslash is doubled as well, so the result never ends in an
    odd run of backslashes: systemd's EnvironmentFile= continues a comment line that does.
    """
    out = []
    for char in str(text):
        if char == "\\" and escape_backslash:
            out.append("\\\\")
        elif unicodedata.category(char) in HIDDEN_CATEGORIES:
            out.append(escaped(char))
        else:
            out.append(char)
    result = "".join(out)
    if limit is not None and len(result) > limit:
        result = result[:limit].rstrip("\\") + "..."
    return result


def terminal(text: object) -> str:
    """`text` for a rich markup string: visible, and its square brackets printed literally."""
    return escape(visible(text))


def is_visible(text: str) -> bool:
    """True when `visible` would leave `text` unchanged (backslashes aside)."""
    return all(unicodedata.category(c) not in HIDDEN_CATEGORIES for c in text)
