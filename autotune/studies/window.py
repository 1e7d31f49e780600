"""What a chosen context window promises: the longest conversation it holds, and a warning
below the guide's window.

A window is a promise to the user, not only a speed knob: the workload a study measures is
a sample, and a real conversation longer than the window overflows it, so the backend
drops history. The export header and the tuner's report say what the chosen window holds,
in tokens and, where the study measured it, in turns of its workload.

Example:
    >>> print(holds(1024, TrialStats(tokens_per_turn=180.0, longest_conversation_tokens=700)))
    ... # doctest: +NORMALIZE_WHITESPACE
    context window 1024 tokens: holds conversations up to 1024 tokens, about 5 turns of
    this workload's average 180 tokens per turn (its longest conversation: 700 tokens)
    >>> print(warning(1024))  # doctest: +NORMALIZE_WHITESPACE
    the context window 1024 is below the guide's 4096: a conversation longer than 1024
    tokens overflows it and the backend drops its history
    >>> warning(4096) is None
    True
"""

from __future__ import annotations

from autotune.guide import GUIDE_CONTEXT
from autotune.measure.records import TrialStats


def holds(window: int, stats: TrialStats | None = None) -> str:
    """One line: the longest conversation `window` holds, in the workload's turns if known."""
    text = f"context window {window} tokens: holds conversations up to {window} tokens"
    per_turn = stats.tokens_per_turn if stats else None
    if per_turn:
        text += (f", about {int(window // per_turn)} turns of this workload's average "
                 f"{per_turn:.0f} tokens per turn")
        if stats and stats.longest_conversation_tokens:
            text += f" (its longest conversation: {stats.longest_conversation_tokens} tokens)"
    return text


def warning(window: int) -> str | None:
    """A warning when `window` is below the guide's; None otherwise."""
    if window >= GUIDE_CONTEXT:
        return None
    return (f"the context window {window} is below the guide's {GUIDE_CONTEXT}: a "
            f"conversation longer than {window} tokens overflows it and the backend drops its "
            "history")
