"""What a tuning run's wall time pays for: a real study on a model, broken down.

    python benchmarks/overhead.py MODEL [--trials 12] [--rounds 2] [--finalists 3] [--json FILE]

Runs the tuner as `autotune MODEL` would (into a temporary studies folder, writing no
export) and prints where its wall time went: the measured requests, each worker's start
(interpreter and imports), the model's inspection and loads, warm-ups, the rest of each
trial, waiting for the machine, and the sampler, storage and records around the trials.
The harness's own share is all but the requests, the loads and warm-ups every trial needs,
and the waiting.

    python benchmarks/overhead.py MODEL --refs 2b1c07e worktree [--json FILE]
    python benchmarks/overhead.py MODEL --refs 2b1c07e worktree:--anchor-every=0 worktree

Before and after: runs each git ref's own `autotune MODEL` command (a commit checked out
with `git worktree add --detach`, or `worktree`: this tree), one after the other with the
same interpreter, options and `--seed`, `--tokens 8` (the default now; 2b1c07e's was 32),
each in an empty folder, timed from outside. Both are broken down the same way, from what
each study kept: the measured requests (every trial's and confirmation run's latencies; a
repeat that reused a measurement ran none), the model loads and the warm-ups (each run's
load_s and warmup_s), and the rest of the wall time: worker starts, the model's
inspection, sampler, storage, records, and (now) the drift anchor's checks. 2b1c07e is the
last commit whose every trial worker imported pandas and Optuna. A ref written REF:OPTIONS
runs with those tuner options too (comma-separated): `worktree:--anchor-every=0` is this
tree without the drift anchor, whose checks would otherwise count in the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from autotune.search.tune import TuneOptions, tune

sys.path.insert(0, str(Path(__file__).parent))
from worker_start import REPO, WORKTREE, environment, git

TOKENS = 8
MAIN = "import sys; from autotune.cli import main; sys.argv[0] = 'autotune'; main()"
REPEAT = "repeat of trial "


def run_ref(root: Path, model: str, args, folder: Path, extra: list[str]) -> float:
    """The ref's own tuner command with `extra` options, run in `folder` (its studies land
    in folder/studies)."""
    command = [sys.executable, "-c", MAIN, model, "--trials", str(args.trials), "--rounds",
               str(args.rounds), "--finalists", str(args.finalists), "--seed", str(args.seed),
               "--tokens", str(TOKENS), "--out", str(folder / "jarvis.env"), "--force", *extra]
    env = {k: v for k, v in environment(root).items() if k != "AUTOTUNE_STUDIES"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{root}: the tuner failed: {done.stderr.strip()[-500:]}")
    return wall


def breakdown(journal: Path, wall: float) -> dict[str, float]:
    """A study's wall time split from what it kept (the same way for any version)."""
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    requests = loads = warmups = 0.0
    runs = 0
    for trial in study.trials:
        attrs = trial.user_attrs
        if str(attrs.get("label") or "").startswith(REPEAT) or "stats" not in attrs:
            continue  # a repeat reused a measurement: no worker ran
        stats = attrs["stats"]
        requests += sum(attrs.get("latencies") or [])
        loads += stats.get("load_s") or 0.0
        warmups += stats.get("warmup_s") or 0.0
        runs += 1
    for run in (study.user_attrs.get("confirmation") or {}).get("runs", []):
        stats = run["stats"]
        latencies = run.get("latencies") or {}
        requests += (sum(latencies.values()) if latencies
                     else (stats.get("mean_s") or 0.0) * stats.get("requests_done", 0))
        loads += stats.get("load_s") or 0.0
        warmups += stats.get("warmup_s") or 0.0
        runs += 1
    rest = wall - requests - loads - warmups
    return {"wall_s": wall, "worker runs": runs, "measured requests": requests,
            "model load": loads, "warm-up": warmups, "the rest": rest,
            "the rest per run": rest / runs if runs else math.nan,
            "harness share": rest / wall}


def compare_refs(args) -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="overhead-refs-") as scratch:
        for number, ref in enumerate(args.refs):
            name, _, options = ref.partition(":")
            root = REPO if name == WORKTREE else Path(scratch) / f"tree-{number}"
            if name != WORKTREE:
                git("worktree", "add", "--quiet", "--detach", str(root), name)
            try:
                folder = Path(scratch) / f"run-{number}"
                folder.mkdir()
                print(f"{ref}: tuning ...", file=sys.stderr, flush=True)
                wall = run_ref(root, args.model, args, folder,
                               options.split(",") if options else [])
                results[ref] = breakdown(folder / "studies" / "autotune.journal", wall)
                print(f"{ref}: {wall:.0f} s", file=sys.stderr, flush=True)
            finally:
                if name != WORKTREE:
                    git("worktree", "remove", "--force", str(root))
    rows = ("wall_s", "worker runs", "measured requests", "model load", "warm-up", "the rest",
            "the rest per run", "harness share")
    print(f"{args.trials} trials, {args.finalists} finalists x {args.rounds} rounds, "
          f"{TOKENS} tokens per request, seed {args.seed}")
    print("| | " + " | ".join(args.refs) + " |\n|---|" + "---:|" * len(args.refs))
    for row in rows:
        cells = [(f"{results[r][row]:.1%}" if row == "harness share" else
                  f"{results[r][row]:.0f}" if row == "worker runs" else
                  f"{results[r][row]:.2f} s" if row == "the rest per run" else
                  f"{results[r][row]:.1f} s") for r in args.refs]
        print(f"| {row.replace('wall_s', 'wall time')} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--trials", type=int, default=TuneOptions().trials)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--finalists", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="save the breakdown here")
    parser.add_argument("--refs", nargs="+", help="git refs to run one after the other "
                        f"({WORKTREE!r}: this tree), broken down from their studies; "
                        "REF:OPT,OPT adds tuner options (worktree:--anchor-every=0)")
    args = parser.parse_args(argv)
    if args.refs:
        compare_refs(args)
        return
    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        started = time.perf_counter()
        report = tune(args.model, TuneOptions(
            trials=args.trials, rounds=args.rounds, finalists=args.finalists, seed=args.seed,
            studies_dir=folder, out=None),
            on_event=lambda event: print(event, file=sys.stderr, flush=True))
        wall = time.perf_counter() - started
    parts = report.costs.to_dict()
    total = report.costs.total_s
    print(f"{report.n_trials} trials, {args.finalists} finalists x {args.rounds} rounds: "
          f"{wall:.1f} s wall ({total:.1f} s accounted for)")
    print("| part | seconds | share |\n|---|---:|---:|")
    for name, seconds in parts.items():
        print(f"| {name} | {seconds:.1f} | {seconds / total:.1%} |")
    share = report.costs.harness_share
    print(f"harness overhead: {share * total:.1f} s, {share:.1%} of the wall time")
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_s": wall, "parts": parts,
                                               "trials": report.n_trials}, indent=2) + "\n",
                                   encoding="utf-8")


if __name__ == "__main__":
    main()
