"""What a tuning run's wall time pays for: a real study on a model, broken down.

    python benchmarks/overhead.py MODEL [--trials 12] [--rounds 2] [--finalists 3] [--json FILE]

Runs the tuner as `autotune MODEL` would (into a temporary studies folder, writing no
export) and prints where its wall time went: the measured requests, each worker's start
(interpreter and imports), the model's inspection and loads, warm-ups, the rest of each
trial, waiting for the machine, and the sampler, storage and records around the trials.
The harness's own share is all but the requests, the loads and warm-ups every trial needs,
and the waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from autotune.search.costs import harness_share
from autotune.search.tune import TuneOptions, tune


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--finalists", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="save the breakdown here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        started = time.perf_counter()
        report = tune(args.model, TuneOptions(
            trials=args.trials, rounds=args.rounds, finalists=args.finalists, seed=args.seed,
            studies_dir=folder, out=None),
            on_event=lambda event: print(event, file=sys.stderr, flush=True))
        wall = time.perf_counter() - started
    parts = report.costs
    total = sum(parts.values())
    print(f"{report.n_trials} trials, {args.finalists} finalists x {args.rounds} rounds: "
          f"{wall:.1f} s wall ({total:.1f} s accounted for)")
    print("| part | seconds | share |\n|---|---:|---:|")
    for name, seconds in parts.items():
        print(f"| {name} | {seconds:.1f} | {seconds / total:.1%} |")
    share = harness_share(parts)
    print(f"harness overhead: {share * total:.1f} s, {share:.1%} of the wall time")
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_s": wall, "parts": parts,
                                               "trials": report.n_trials}, indent=2) + "\n",
                                   encoding="utf-8")


if __name__ == "__main__":
    main()
