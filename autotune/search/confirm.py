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

from autotune.measure.records import TrialResult
from autotune.measure.settings import Settings
from autotune.measure.stats import summarize
from autotune.search.events import ConfirmEnded, OnEvent
from autotune.search.scoring import Weights, score
from autotune.search.space import BASELINE_LABEL
from autotune.studies.records import CandidateResult, Confirmation, ConfirmRun, Improvement

BASELINE = BASELINE_LABEL


@dataclass(frozen=True)
class Candidate:
    label: str
    settings: Settings
    trial_number: int | None = None


@dataclass(frozen=True)
class Outcome:
    """The confirmation's runs and per-candidate results, and what they decide."""

    confirmation: Confirmation
    winner: CandidateResult | None
    improvement: Improvement | None


def confirm(candidates: list[Candidate], measure: Callable[[Settings], TrialResult],
            rounds: int, weights: Weights, seed: int | None = None,
            on_event: OnEvent | None = None) -> Outcome:
    """Run every candidate once per round, shuffled; return runs, per-candidate and winner.

    `measure` runs one trial of the given settings (alone on the machine) and returns it.
    """
    rng = random.Random(seed)
    runs: list[ConfirmRun] = []
    total = rounds * len(candidates)
    for round_no in range(rounds):
        order = list(candidates)
        rng.shuffle(order)
        for candidate in order:
            result = measure(candidate.settings)
            run = ConfirmRun(round=round_no, label=candidate.label, status=result.status,
                             reason=result.reason, trial_number=candidate.trial_number,
                             settings=candidate.settings.to_dict(), stats=summarize(result),
                             score=score(result.latencies, weights) if result.ok else None)
            runs.append(run)
            if on_event is not None:
                on_event(ConfirmEnded(done=len(runs), total=total, label=candidate.label,
                                      status=result.status,
                                      value=run.score.total_s if run.score else None))
    return decide(candidates, runs)


def decide(candidates: list[Candidate], runs: list[ConfirmRun]) -> Outcome:
    """The winner and the improvement over the defaults, from finished runs alone."""
    table = []
    for candidate in candidates:
        mine = [r for r in runs if r.label == candidate.label]
        ok = [r for r in mine if r.score is not None]
        table.append(CandidateResult(
            label=candidate.label, trial_number=candidate.trial_number,
            settings=candidate.settings.to_dict(), runs=len(mine), ok_runs=len(ok),
            median_score_s=statistics.median(r.score.total_s for r in ok) if ok else None,
            median_mean_s=statistics.median(r.stats.mean_s for r in ok) if ok else None))
    confirmation = Confirmation(tuple(runs), tuple(table))
    complete = [row for row in table if row.complete]
    if not complete:
        return Outcome(confirmation, None, None)
    winner = min(complete, key=lambda row: row.median_score_s)
    return Outcome(confirmation, winner, improvement(runs, winner.label))


def improvement(runs: list[ConfirmRun], winner: str) -> Improvement | None:
    """Per round: defaults' mean latency / winner's; its median and range over rounds."""
    ratios = []
    for round_no in sorted({r.round for r in runs}):
        here = {r.label: r for r in runs if r.round == round_no and r.score is not None}
        if BASELINE in here and winner in here:
            ratios.append(here[BASELINE].stats.mean_s / here[winner].stats.mean_s)
    if not ratios:
        return None
    return Improvement(speedup=statistics.median(ratios), speedup_min=min(ratios),
                       speedup_max=max(ratios), rounds=len(ratios), ratios=tuple(ratios))
