"""Confirmation: re-measure the finalists and the guide's defaults, interleaved, in rounds.

A search ranks candidates on one noisy run each. Before a winner is declared, the best
few and the guide's defaults run again, in a shuffled order each round (so slow drift of
the machine falls on all of them alike); the winner has the lowest median score over the
rounds, and the improvement is the per-round ratio of the defaults' mean latency to the
winner's, reported as its median and its range, with an interval from a paired bootstrap:
a round is drawn, then its requests with replacement (each request ran under both
configurations, so its two latencies are a pair), and the ratio of mean latencies taken
for each resample. Two rounds' range says little; the interval says where a fresh A/B of
the same two configurations (one run of each, interleaved) should land, as pyperf and asv
resample before they call a change.

Among finalists the confirmation cannot tell apart, the larger context window wins: a
window is a promise about how long a conversation may grow before history is dropped, and
a smaller one that is no measurably faster only breaks it sooner. "Cannot tell apart" is a
median score within TIE_MARGIN (3%) of the best: two runs of one configuration differ by
more than that (8% in the median on the recorded 2-core grid, benchmarks/results/
grid-small.json), so no ranking inside it is real. The report says when this decided.

With goals (measure/goals.py), the winner has the lowest median of the study's objective
instead, among the candidates whose medians over the rounds meet every target and budget;
the guide's defaults are measured as the comparison all the same, and win only if they meet
them too. The improvement stays the ratio of mean latencies.

Racing: a finalist is not measured in further rounds once it is clearly behind (see
clearly_behind): a run failed, or its median is more than TIE_MARGIN above the leader's
and its requests were slower than the leader's, request for request over the rounds so
far, by a one-sided Wilcoxon signed-rank test at RACE_P. Such a finalist could not win (a
failed run rules a candidate out; a median outside the tie margin cannot take the larger-
window tie-break either), so its next rounds would only have confirmed a loss. The guide's
defaults always run every round (the improvement is measured against them), and so does a
profile's trial (`Candidate.race` False), which is re-measured for its memory, not to win.
Racing applies to the objectives measured request by request (score, mean); a tail or
time-to-first-token objective runs every round.

Racing the defaults: once every candidate that may still win (the racing finalists, and a
profile's trial within TIE_MARGIN of the best) is faster than the guide's defaults by more
than DEFAULTS_MARGIN (20%), request for request (the same Wilcoxon test;
for stopped defaults, `lower_bound`'s ratio), the defaults run no further round: what the
confirmation decides from then on is which finalist wins, and each finalist already ran
beside the defaults in the rounds so far. The improvement then rests on those rounds (its
interval on their paired requests), and the report says so. On the recorded 2-core runs
the defaults were 1.5x (1B shape) to 2.5x (demo model) slower than the winner, and cost a
quarter to half of the confirmation's time.

Near-ties: with `more_rounds` (a budget's, search/budget.py), rounds go on after the
planned ones while more than one racing finalist is still in the race and another round
fits, until racing separates them or they are shown tied: the paired bootstrap's interval
of each one's mean latency over the leader's lies within TIE_MARGIN either way, and no
further round would change the tie-break. Either way the report says which finalists
it could not separate, and why (`unseparated`).

Stopped defaults: a run of the guide's defaults may be stopped at a time limit (a budget's
cap, or the trial limit when they are much slower than the limit allows). The finalists'
runs are whole, so each such round still bounds the improvement from below: the requests
the defaults did before the stop took longer than the winner's whole workload by at least
`lower_bound`'s ratio, since the ones they did not reach would only add to their time.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.goals import METRICS, Goals, Objective
from autotune.measure.records import Status, TrialResult, TrialStats
from autotune.measure.scoring import Weights, score
from autotune.measure.settings import Settings
from autotune.measure.stats import summarize
from autotune.search.events import ConfirmEnded, OnEvent
from autotune.search.rounds import interleaved_rounds
from autotune.search.space import BASELINE_LABEL
from autotune.studies.records import CandidateResult, Confirmation, ConfirmRun, Improvement

BASELINE = BASELINE_LABEL


@dataclass(frozen=True)
class Candidate:
    label: str
    settings: Settings
    trial_number: int | None = None
    race: bool = True  # dropped from later rounds once clearly behind (see clearly_behind)


TIE_MARGIN = 0.03
# The guide's defaults run no further round once every finalist is this much faster.
DEFAULTS_MARGIN = 0.2
# One-sided, per-request: a finalist as fast as the leader is dropped about 1 time in 100.
RACE_P = 0.01
RACED_OBJECTIVES = (Objective.SCORE, Objective.MEAN)


@dataclass(frozen=True)
class Outcome:
    """The confirmation's runs and per-candidate results, and what they decide."""

    confirmation: Confirmation
    winner: CandidateResult | None
    improvement: Improvement | None
    tie_break: str = ""  # why a larger window was chosen over the best score, when it was
    added_rounds: int = 0  # rounds run after the planned ones, for near-ties
    unseparated: str = ""  # the finalists those rounds could not tell apart

    @property
    def dropped(self) -> tuple[str, ...]:
        """Why each finalist dropped by racing was not measured further."""
        return tuple(f"{c.label}: {c.dropped}" for c in self.confirmation.candidates
                     if c.dropped)


def confirm(candidates: list[Candidate], measure: Callable[[Candidate], TrialResult],
            rounds: int, weights: Weights, seed: int | None = None,
            on_event: OnEvent | None = None, goals: Goals | None = None,
            racing: bool = True,
            more_rounds: Callable[[list[Candidate]], bool] | None = None,
            extra_rounds: int = 0) -> Outcome:
    """Run every candidate once per round, shuffled; return runs, per-candidate and winner.

    `measure` runs one trial of the candidate's settings (alone on the machine) and
    returns it. With `racing`, a finalist clearly behind after a round runs no further
    rounds. After the `rounds`, up to `extra_rounds` more run while racing finalists are
    still tied and `more_rounds(active)` says another round fits.
    """
    runs: list[ConfirmRun] = []
    dropped: dict[str, str] = {}
    total = rounds * len(candidates)
    added = 0

    def race(round_no: int, active: list[Candidate]) -> list[Candidate]:
        nonlocal total, added
        if racing:
            dropped.update(clearly_behind(active, runs, goals or Goals()))
            active = [c for c in active if c.label not in dropped]
            rested = defaults_behind(active, runs, goals or Goals())
            if rested:
                dropped[BASELINE] = rested
                active = [c for c in active if c.label != BASELINE]
        if round_no >= rounds:
            if (more_rounds is None or len(still_racing(active)) < 2
                    or shown_tied(still_racing(active), runs, seed, goals or Goals())
                    or not more_rounds(active)):
                return []
            added += 1
            total = len(runs) + len(active)
            return active
        total = len(runs) + (rounds - round_no) * len(active)
        return active

    def run_once(round_no: int, candidate: Candidate) -> ConfirmRun:
        result = measure(candidate)
        run = ConfirmRun(round=round_no, label=candidate.label, status=result.status,
                         reason=result.reason, trial_number=candidate.trial_number,
                         settings=candidate.settings, stats=summarize(result),
                         score=score(result.latencies, weights) if result.ok else None,
                         latencies={r.index: r.latency_s for r in result.requests})
        runs.append(run)
        if on_event is not None:
            value = (goals or Goals()).objective.of(run.stats, run.score)
            on_event(ConfirmEnded(done=len(runs), total=total, label=candidate.label,
                                  status=result.status, value=value if run.score else None))
        return run

    interleaved_rounds(candidates, rounds + (extra_rounds if more_rounds else 0), seed,
                       run_once, keep=race)
    outcome = decide(candidates, runs, seed, goals, dropped)
    return dataclasses.replace(outcome, added_rounds=added,
                               unseparated=unseparated(outcome, candidates, added, runs, seed,
                                                       goals or Goals()))


def is_guide_defaults(settings: Settings) -> bool:
    """The guide's defaults as the baseline runs them: a `--fix` (say n_threads=1) makes
    that trial another configuration, a finalist like any other. GPU layers aside: a build
    without offload runs the guide's -1 as 0."""
    return all(settings.value(k) == v for k, v in GUIDE_DEFAULTS.items() if k != "n_gpu_layers")


def still_racing(active: list[Candidate]) -> list[Candidate]:
    return [c for c in active if c.race and c.label != BASELINE]


def defaults_behind(active: list[Candidate], runs: list[ConfirmRun], goals: Goals) -> str:
    """Why the guide's defaults need no further round (see the module's docstring), or "".

    They are compared with every candidate that may still win: the racing finalists, and
    a profile's trial (not raced) whose median is within TIE_MARGIN of the best so far.
    """
    if goals.objective not in RACED_OBJECTIVES or all(c.label != BASELINE for c in active):
        return ""
    table = {row.label: row for row in decide(active, runs, goals=goals).confirmation.candidates}
    medians = [row.median_objective for label, row in table.items()
               if label != BASELINE and row.median_objective is not None]
    best = min(medians, default=None)

    def may_win(candidate: Candidate) -> bool:
        median = table[candidate.label].median_objective
        return (candidate.race or best is None or median is None
                or median <= best * (1 + TIE_MARGIN))

    others = [c for c in active if c.label != BASELINE and may_win(c)]
    if not others:
        return ""
    defaults = table[BASELINE]
    ratios, ps = [], []
    for candidate in others:
        row = table[candidate.label]
        if not row.complete or row.median_objective is None:
            return ""
        if defaults.complete and defaults.median_objective is not None:
            ratios.append(defaults.median_objective / row.median_objective)
            ps.append(slower_p(runs, BASELINE, candidate.label))
        else:
            bound = lower_bound(runs, candidate.label)
            if bound is None:
                return ""
            ratios.append(bound.speedup)
            ps.append(0.0)
    if min(ratios) <= 1 + DEFAULTS_MARGIN or max(ps) >= RACE_P:
        return ""
    rounds = max(r.round for r in runs) + 1
    test = f", request for request (Wilcoxon p={max(ps):.1g})" if max(ps) > 0 else ""
    return (f"ran no further round after round {rounds}: slower than every finalist by at "
            f"least {min(ratios):.2f}x{test}; the improvement rests on the rounds they ran")


def unseparated(outcome: Outcome, candidates: list[Candidate], added: int,
                runs: list[ConfirmRun], seed: int | None, goals: Goals) -> str:
    """After rounds for near-ties (added, or shown tied at once), the finalists still in the
    race with the winner, when there are any: the confirmation could not tell them apart."""
    if outcome.winner is None:
        return ""
    racing = {c.label for c in still_racing(candidates)}
    rows = [r for r in outcome.confirmation.candidates
            if r.label in racing and r.complete and not r.dropped]
    left = [c for c in candidates if c.label in {r.label for r in rows}]
    tied = shown_tied(left, runs, seed, goals) if len(rows) >= 2 else None
    if len(rows) < 2 or not (added or tied):
        return ""
    names = ", ".join(r.label for r in rows)
    if tied:
        low, high = tied
        return (f"{names} are tied: their mean latencies are within {TIE_MARGIN:.0%} of one "
                f"another (95% interval of the ratio {low:.3f}-{high:.3f} over "
                f"{max(r.runs for r in rows)} rounds), so the tie-break decides")
    return (f"{names} could not be separated in {max(r.runs for r in rows)} rounds: none was "
            f"clearly slower request for request (Wilcoxon p<{RACE_P:g} and a median over "
            f"{TIE_MARGIN:.0%} behind), nor shown within {TIE_MARGIN:.0%} of the leader")


def shown_tied(racing: list[Candidate], runs: list[ConfirmRun], seed: int | None,
               goals: Goals) -> tuple[float, float] | None:
    """When every racing finalist's mean latency over the leader's has a paired bootstrap
    interval within TIE_MARGIN either way, the widest such interval; else None (as for
    objectives other than the score and the mean, which this does not measure)."""
    if goals.objective not in RACED_OBJECTIVES or len(racing) < 2:
        return None
    table = decide(racing, runs, goals=goals).confirmation.candidates
    ranked = by_median(row for row in table if row.complete)
    if len(ranked) < len(racing):
        return None
    leader = ranked[0][1].label
    low, high = 1.0, 1.0
    for _, row in ranked[1:]:
        pairs = paired_rounds(runs, row.label, leader)
        if not pairs:
            return None
        lo, hi = paired_bootstrap(pairs, seed=seed)
        low, high = min(low, lo), max(high, hi)
    if low < 1 / (1 + TIE_MARGIN) or high > 1 + TIE_MARGIN:
        return None
    return low, high


def paired_rounds(runs: list[ConfirmRun], label: str, other: str
                  ) -> list[list[tuple[float, float]]]:
    """Per round both finished, the (label's, other's) latency pairs of their requests."""
    rounds = []
    for round_no in sorted({r.round for r in runs}):
        here = {r.label: r for r in runs if r.round == round_no and r.score is not None}
        if label in here and other in here:
            mine, theirs = here[label].latencies, here[other].latencies
            pairs = [(mine[i], theirs[i]) for i in sorted(mine.keys() & theirs.keys())]
            if pairs:
                rounds.append(pairs)
    return rounds


def clearly_behind(candidates: list[Candidate], runs: list[ConfirmRun], goals: Goals
                   ) -> dict[str, str]:
    """The racing finalists that cannot win, each with why (see the module's docstring).

    The leader is the best candidate so far that finished every run within the limits
    (the guide's defaults may lead); it is never dropped.
    """
    table = decide(candidates, runs, goals=goals).confirmation.candidates
    failed = {row.label: f"a run failed in round {max(r.round for r in runs) + 1}"
              for row in table if not row.complete}
    eligible = by_median(row for row in table if row.complete and not row.missed)
    racing = {c.label for c in candidates if c.race and c.label != BASELINE}
    if not eligible or goals.objective not in RACED_OBJECTIVES:
        return {label: why for label, why in failed.items() if label in racing}
    leader_value, leader = eligible[0]
    behind = {}
    for row in table:
        if row.label not in racing or row.label == leader.label:
            continue
        if row.label in failed:
            behind[row.label] = failed[row.label]
            continue
        if row.median_objective is None:
            continue
        ratio = row.median_objective / leader_value
        p = slower_p(runs, row.label, leader.label)
        if ratio > 1 + TIE_MARGIN and p < RACE_P:
            behind[row.label] = (f"clearly slower than {leader.label} after round "
                                 f"{max(r.round for r in runs) + 1}: median {ratio:.2f}x, "
                                 f"slower request for request (Wilcoxon p={p:.1g})")
    return behind


def slower_p(runs: list[ConfirmRun], label: str, leader: str) -> float:
    """One-sided Wilcoxon signed-rank p-value that `label`'s requests were slower than
    `leader`'s, pairing each request with the leader's same request of the same round."""
    differences = [mine - theirs for pairs in paired_rounds(runs, label, leader)
                   for mine, theirs in pairs]
    if len(differences) < 2 or not any(differences):
        return 1.0
    from scipy.stats import wilcoxon  # only here: the confirmation's one statistical test

    return float(wilcoxon(differences, alternative="greater").pvalue)


def decide(candidates: list[Candidate], runs: list[ConfirmRun], seed: int | None = None,
           goals: Goals | None = None, dropped: dict[str, str] | None = None) -> Outcome:
    """The winner and the improvement over the defaults, from finished runs alone; a
    finalist `dropped` by racing (label: why) cannot win."""
    goals = goals or Goals()
    dropped = dropped or {}
    table = []
    for candidate in candidates:
        mine = [r for r in runs if r.label == candidate.label]
        ok = [r for r in mine if r.score is not None]
        scores = [r.score.total_s for r in ok if r.score is not None]
        means = [r.stats.mean_s for r in ok if r.stats.mean_s is not None]
        typical = median_stats(goals, [r.stats for r in ok])
        table.append(CandidateResult(
            label=candidate.label, trial_number=candidate.trial_number,
            settings=candidate.settings, runs=len(mine), ok_runs=len(ok),
            median_score_s=statistics.median(scores) if scores else None,
            median_mean_s=statistics.median(means) if means else None,
            median_objective=median_of([goals.objective.of(r.stats, r.score)
                                        for r in ok]),
            missed=goals.missed(typical) if typical else (),
            dropped=dropped.get(candidate.label, "")))
    confirmation = Confirmation(tuple(runs), tuple(table))
    eligible = by_median(row for row in table
                         if row.complete and not row.missed and not row.dropped)
    if not eligible:
        return Outcome(confirmation, None, None)
    winner, why = larger_window_in_a_tie(eligible)
    return Outcome(confirmation, winner, improvement(runs, winner.label, seed), why)


def by_median(rows: Iterable[CandidateResult]) -> list[tuple[float, CandidateResult]]:
    """The rows that have a median value, each with it, lowest first (ties in their order)."""
    valued = [(row.median_objective, row) for row in rows if row.median_objective is not None]
    return sorted(valued, key=lambda pair: pair[0])


def larger_window_in_a_tie(eligible: list[tuple[float, CandidateResult]]
                           ) -> tuple[CandidateResult, str]:
    """Of the finalists `by_median`, the one with the largest window among those within
    TIE_MARGIN of the best median value (the guide's defaults are the reference, not an
    alternative), and why."""

    def window(row: CandidateResult) -> int:
        return row.settings.context_window

    best_value, best = eligible[0]
    limit = best_value * (1 + TIE_MARGIN)
    ties = [(value, row) for value, row in eligible if row.label != BASELINE
            and window(row) > window(best) and value <= limit]
    if not ties:
        return best, ""
    chosen_value, chosen = min(ties, key=lambda pair: (-window(pair[1]), pair[0]))
    return chosen, (f"{chosen.label} (context window {window(chosen)}) chosen over "
                    f"{best.label} ({window(best)}): median values {chosen_value:.3f} s "
                    f"and {best_value:.3f} s are within {TIE_MARGIN:.0%}, which "
                    "repeated runs cannot tell apart, and the larger window holds longer "
                    "conversations")


def median_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def median_stats(goals: Goals, runs: list[TrialStats]) -> TrialStats | None:
    """A candidate's statistics as its limits are judged: each limited one's median over
    its rounds (the rest as its first run had them)."""
    if not runs:
        return None
    fields = {METRICS[t.metric].stat for t in goals.limits}
    medians: dict[str, Any] = {name: median_of([getattr(r, name) for r in runs])
                               for name in fields}
    return dataclasses.replace(runs[0], **medians)


def improvement(runs: list[ConfirmRun], winner: str, seed: int | None = None
                ) -> Improvement | None:
    """Per round: defaults' mean latency / winner's; its median, range and interval."""
    ratios = []
    for round_no in sorted({r.round for r in runs}):
        here = {r.label: r for r in runs if r.round == round_no and r.score is not None}
        base_mean = here[BASELINE].stats.mean_s if BASELINE in here else None
        best_mean = here[winner].stats.mean_s if winner in here else None
        if base_mean is not None and best_mean is not None:
            ratios.append(base_mean / best_mean)
    if not ratios:
        return lower_bound(runs, winner)
    pairs = paired_rounds(runs, BASELINE, winner)
    interval = paired_bootstrap(pairs, seed=seed) if len(pairs) == len(ratios) else None
    return Improvement(speedup=statistics.median(ratios), speedup_min=min(ratios),
                       speedup_max=max(ratios), rounds=len(ratios), ratios=tuple(ratios),
                       low=interval[0] if interval else None,
                       high=interval[1] if interval else None, confidence=CONFIDENCE,
                       requests=min(len(p) for p in pairs) if interval else 0)


def lower_bound(runs: list[ConfirmRun], winner: str) -> Improvement | None:
    """The improvement when every run of the defaults was stopped: per round, the time of
    the requests they did over the winner's whole workload (see the module's docstring)."""
    ratios, reached, total = [], [], 0
    for round_no in sorted({r.round for r in runs}):
        here = {r.label: r for r in runs if r.round == round_no}
        base, best = here.get(BASELINE), here.get(winner)
        if (base is None or best is None or best.score is None or not base.latencies
                or base.status != Status.TIMED_OUT):
            continue
        ratios.append(sum(base.latencies.values()) / sum(best.latencies.values()))
        reached.append(len(base.latencies))
        total = len(best.latencies)
    if not ratios:
        return None
    low = min(ratios)
    return Improvement(speedup=low, speedup_min=low, speedup_max=max(ratios),
                       rounds=len(ratios), ratios=tuple(ratios), at_least=True,
                       stopped_after=min(reached), of_requests=total)


CONFIDENCE = 0.95
RESAMPLES = 2000


def paired_bootstrap(rounds: list[list[tuple[float, float]]], confidence: float = CONFIDENCE,
                     resamples: int = RESAMPLES, seed: int | None = None
                     ) -> tuple[float, float]:
    """Where sum(a) / sum(b) of one fresh A/B should land: a percentile interval.

    `rounds` holds, per confirmation round, the (a, b) latency pairs of the requests both
    configurations ran. Each resample is one A/B as a round would measure it: a round drawn
    at random (the drift between rounds), then as many of its pairs drawn with replacement
    (the spread between requests), a pair always kept a pair.
    """
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        pairs = rounds[rng.randrange(len(rounds))]
        top = bottom = 0.0
        for _ in pairs:
            a, b = pairs[rng.randrange(len(pairs))]
            top += a
            bottom += b
        ratios.append(top / bottom)
    ratios.sort()
    tail = (1 - confidence) / 2
    return (ratios[int(tail * (resamples - 1))], ratios[int((1 - tail) * (resamples - 1))])
