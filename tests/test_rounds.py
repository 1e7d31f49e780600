"""Interleaved rounds: the order every confirmation and side-by-side benchmark measures in."""

from __future__ import annotations

import random
from collections import Counter

from autotune.search.rounds import interleaved_rounds

ITEMS = ["a", "b", "c", "d", "e"]


def order_of(rounds: int, seed: int | random.Random | None) -> list[tuple[int, str]]:
    return [(r, x) for r, x, _ in interleaved_rounds(ITEMS, rounds, seed, lambda r, x: None)]


def test_every_item_runs_once_per_round_in_a_fresh_order() -> None:
    done = order_of(6, seed=1)
    assert Counter(r for r, _ in done) == {r: len(ITEMS) for r in range(6)}
    per_round = [[x for r, x in done if r == round_no] for round_no in range(6)]
    assert all(sorted(order) == ITEMS for order in per_round)
    assert len({tuple(order) for order in per_round}) > 1  # shuffled anew each round


def test_a_seed_repeats_the_order_and_a_random_goes_on_drawing() -> None:
    assert order_of(4, seed=7) == order_of(4, seed=7)
    assert order_of(4, seed=7) != order_of(4, seed=8)
    rng = random.Random(7)
    first, second = order_of(2, rng), order_of(2, rng)
    assert first + [(r + 2, x) for r, x in second] == order_of(4, seed=7)


def test_measure_gets_the_round_and_its_results_come_back_in_order() -> None:
    done = interleaved_rounds(ITEMS, 2, 0, lambda r, x: f"{x}{r}")
    assert [value for _, _, value in done] == [f"{x}{r}" for r, x, _ in done]


def test_keep_decides_each_later_round_s_items() -> None:
    asked = []

    def drop_a(round_no: int, active: list[str]) -> list[str]:
        asked.append((round_no, sorted(active)))
        return [x for x in active if x != "a"]

    done = interleaved_rounds(ITEMS, 3, 0, lambda r, x: None, keep=drop_a)
    assert asked == [(1, ITEMS), (2, ITEMS[1:])]  # never before the first round
    assert [x for r, x, _ in done if r == 0].count("a") == 1
    assert all(x != "a" for r, x, _ in done if r > 0)
