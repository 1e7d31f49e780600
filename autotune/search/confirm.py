"""Confirmation: re-measure the finalists and the guide's defaults, interleaved, in rounds.

A search ranks candidates on one noisy run each. Before a winner is declared, the best
few and the guide's defaults run again, in a shuffled order each round (so slow drift of
the machine falls on all of them alike); the winner has the lowest median score over the
rounds, and the improvement is the per-round ratio of the defaults' mean latency to the
winner's, reported as its median and its range.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from autotune.measure.settings import Settings
from autotune.measure.stats import summarize
from autotune.measure.trial import TrialResult
from autotune.search.scoring import Weights, score
from autotune.search.space import BASELINE_LABEL

BASELINE = BASELINE_LABEL


@dataclass(frozen=True)
class Candidate:
    label: str
    settings: Settings
    trial_number: int | None = None


def confirm(candidates: list[Candidate], measure: Callable[[Settings], TrialResult],
            rounds: int, weights: Weights, seed: int | None = None,
            on_event: Callable[[str, dict], None] | None = None) -> dict[str, object]:
    """Run every candidate once per round, shuffled; return runs, per-candidate and winner.

    `measure` runs one trial of the given settings (alone on the machine) and returns it.
    """
    rng = random.Random(seed)
    runs: list[dict] = []
    total = rounds * len(candidates)
    for round_no in range(rounds):
        order = list(candidates)
        rng.shuffle(order)
        for candidate in order:
            result = measure(candidate.settings)
            run = {"round": round_no, "label": candidate.label, "status": result.status,
                   "reason": result.reason, "trial_number": candidate.trial_number,
                   "settings": candidate.settings.to_dict(), "stats": summarize(result)}
            if result.ok:
                run["score"] = score([r["latency_s"] for r in result.requests], weights).to_dict()
            runs.append(run)
            if on_event is not None:
                on_event("confirm", {"done": len(runs), "total": total, "label": candidate.label,
                                     "status": result.status,
                                     "value": run.get("score", {}).get("total_s")})
    return decide(candidates, runs)


def decide(candidates: list[Candidate], runs: list[dict]) -> dict[str, object]:
    """The winner and the improvement over the defaults, from finished runs alone."""
    table = []
    for candidate in candidates:
        mine = [r for r in runs if r["label"] == candidate.label]
        ok = [r for r in mine if "score" in r]
        table.append({
            "label": candidate.label, "trial_number": candidate.trial_number,
            "settings": candidate.settings.to_dict(), "runs": len(mine), "ok_runs": len(ok),
            "median_score_s": statistics.median(r["score"]["total_s"] for r in ok) if ok else None,
            "median_mean_s": statistics.median(r["stats"]["mean_s"] for r in ok) if ok else None,
        })
    complete = [row for row in table if row["ok_runs"] == row["runs"] and row["runs"]]
    if not complete:
        return {"runs": runs, "candidates": table, "winner": None, "improvement": None}
    winner = min(complete, key=lambda row: row["median_score_s"])
    return {"runs": runs, "candidates": table, "winner": winner,
            "improvement": improvement(runs, winner["label"])}


def improvement(runs: list[dict], winner: str) -> dict[str, object] | None:
    """Per round: defaults' mean latency / winner's; its median and range over rounds."""
    ratios = []
    for round_no in sorted({r["round"] for r in runs}):
        here = {r["label"]: r for r in runs if r["round"] == round_no and "score" in r}
        if BASELINE in here and winner in here:
            ratios.append(here[BASELINE]["stats"]["mean_s"] / here[winner]["stats"]["mean_s"])
    if not ratios:
        return None
    return {"speedup": statistics.median(ratios), "speedup_min": min(ratios),
            "speedup_max": max(ratios), "rounds": len(ratios), "ratios": ratios}
