"""Interleaved rounds: every item measured once per round, in a freshly shuffled order.

A machine drifts (it heats up, a background job starts or ends). Measuring A, A, B, B puts
the drift between A and B; measuring each once per round, in a new order every round,
spreads it over both alike. Confirmation (confirm.py) and every side-by-side benchmark
run their measurements this way, through `interleaved_rounds`.

Example:
    >>> seen = interleaved_rounds(["a", "b", "c"], 2, seed=0, measure=lambda r, x: x * 2)
    >>> [(r, x) for r, x, _ in seen]
    [(0, 'a'), (0, 'c'), (0, 'b'), (1, 'c'), (1, 'b'), (1, 'a')]
    >>> seen[1][2]
    'cc'
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def interleaved_rounds(items: Iterable[T], rounds: int, seed: int | random.Random | None,
                       measure: Callable[[int, T], R],
                       keep: Callable[[int, list[T]], Sequence[T]] | None = None
                       ) -> list[tuple[int, T, R]]:
    """Call `measure(round, item)` for every item once per round, each round shuffled anew;
    return (round, item, what it measured) in the order measured.

    The order is deterministic by `seed` (None: unseeded; a Random goes on drawing from
    its own state). `keep(round, items)`, when given, is asked before every round after
    the first which of the items run in it (confirmation's racing drops some).
    """
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    active = list(items)
    done: list[tuple[int, T, R]] = []
    for round_no in range(rounds):
        if round_no and keep is not None:
            active = list(keep(round_no, active))
        order = list(active)
        rng.shuffle(order)
        for item in order:
            done.append((round_no, item, measure(round_no, item)))
    return done
