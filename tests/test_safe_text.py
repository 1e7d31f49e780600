"""Untrusted text made one visible line: every hidden character escaped, markup literal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from autotune.safe_text import is_visible, terminal, visible


@pytest.mark.parametrize(("hidden", "shown"), [
    ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\x00", "\\x00"), ("\x1b", "\\x1b"),
    ("\x7f", "\\x7f"), ("\x85", "\\x85"), ("\x9b", "\\x9b"), ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"), ("\u202e", "\\u202e"), ("\ufeff", "\\ufeff"),
    ("\udcff", "\\udcff"), ("\U000e0001", "\\U000e0001")])
def test_each_hidden_character_becomes_a_visible_escape(hidden: str, shown: str) -> None:
    assert visible(f"a{hidden}b") == f"a{shown}b"
    assert not is_visible(hidden)
    assert visible(f"a{hidden}b").splitlines() == [f"a{shown}b"]


def test_visible_text_is_kept_as_it_is() -> None:
    text = "SmolLM2-135M Instruct [Q4_K_M] $(x) `y` 'z' \"w\" ; é 模型 \\"
    assert visible(text) == text and is_visible(text)


def test_backslashes_doubled_on_request_so_no_line_ends_in_an_odd_one() -> None:
    assert visible("a\\", escape_backslash=True) == "a\\\\"
    assert visible("a\\\nb", escape_backslash=True) == "a\\\\\\nb"


def test_limit_cuts_long_text_and_never_leaves_a_trailing_backslash() -> None:
    assert visible("x" * 50, limit=10) == "x" * 10 + "..."
    assert visible("\\" * 50, limit=9, escape_backslash=True) == "..."


def test_terminal_text_prints_markup_literally_and_no_escape_sequence() -> None:
    out = io.StringIO()
    name = "[red]Q4[/x] [Q4_K_M] \x1b[31mred\x1b]0;title\x07 \\"
    Console(file=out, width=200, force_terminal=False).print(f"[bold]{terminal(name)}[/]")
    assert out.getvalue() == "[red]Q4[/x] [Q4_K_M] \\x1b[31mred\\x1b]0;title\\x07 \\\n"
