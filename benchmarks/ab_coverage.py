"""Does a study's improvement interval hold? Fresh A/Bs of its export against the defaults.

    python benchmarks/ab_coverage.py MODEL STUDY [--studies-dir DIR] [--ab 10] [--json FILE]

Each A/B runs the guide's defaults and the study's confirmed winner once each, in a
shuffled order, on the workload and request shape the study measured, each trial alone on
the machine (the machine lock). Its ratio of mean latencies is checked against the
interval the study's confirmation reported (`autotune show STUDY`). The interval says 95%
of fresh A/Bs land in it: out of ten, nine or ten should.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.machine_lock import MachineLock
from autotune.measure.settings import Settings
from autotune.measure.trial import TrialSpec, run_trial
from autotune.measure.workload import builtin_workload, load_workload
from autotune.search.rounds import interleaved_rounds
from autotune.search.study import Measurement
from autotune.studies.records import StudyRecord
from autotune.studies.storage import load_study, open_storage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("study")
    parser.add_argument("--studies-dir", default="studies")
    parser.add_argument("--workload", help="the JSONL workload the study measured, if not "
                                           "the built-in one")
    parser.add_argument("--ab", type=int, default=10, help="fresh A/Bs to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="save every A/B here")
    args = parser.parse_args(argv)
    record = StudyRecord.read(load_study(args.study, open_storage(args.studies_dir,
                                                                  create=False)))
    winner = record.winner
    if winner is None or winner.improvement is None or winner.improvement.low is None:
        raise SystemExit(f"study {args.study!r} has no confirmed improvement interval")
    workload = load_workload(args.workload) if args.workload else builtin_workload()
    measurement = Measurement(workload, record.measurement.tokens_per_request,
                              record.measurement.clients)
    if measurement.identity() != record.measurement:
        raise SystemExit("this workload is not the one the study measured: pass --workload")
    configs = {"defaults": Settings(**GUIDE_DEFAULTS),  # type: ignore[arg-type]
               "winner": winner.settings}
    improvement = winner.improvement
    means: dict[int, dict[str, float]] = {}  # per A/B (a round), each side's mean
    ratios = []

    def one(round_no: int, name: str) -> None:
        number = round_no + 1
        spec = TrialSpec(args.model, configs[name], workload,
                         tokens_per_request=measurement.tokens_per_request,
                         clients=measurement.clients)
        with MachineLock().held("A/B coverage benchmark"):
            result = run_trial(spec)
        if not result.ok:
            raise SystemExit(f"A/B {number}: {name} {result.status}: {result.reason}")
        ab = means.setdefault(number, {})
        ab[name] = statistics.fmean(result.latencies)
        if len(ab) == len(configs):
            ratios.append(ab["defaults"] / ab["winner"])
            inside = improvement.low <= ratios[-1] <= improvement.high
            print(f"A/B {number}: {ratios[-1]:.2f}x {'inside' if inside else 'OUTSIDE'}",
                  file=sys.stderr, flush=True)

    # each A/B is one round: both sides once, in a shuffled order
    interleaved_rounds(configs, args.ab, args.seed, one)
    covered = sum(improvement.low <= r <= improvement.high for r in ratios)
    print(f"study {args.study}: confirmed {improvement.describe()}")
    print("| A/B | " + " | ".join(str(i) for i in range(1, len(ratios) + 1)) + " |")
    print("|---" * (len(ratios) + 1) + "|")
    print("| defaults / winner | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
    print(f"{covered} of {len(ratios)} fresh A/Bs inside {improvement.low:.2f}x-"
          f"{improvement.high:.2f}x (median {statistics.median(ratios):.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "study": args.study, "interval": [improvement.low, improvement.high],
            "confidence": improvement.confidence, "ratios": ratios, "covered": covered},
            indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
