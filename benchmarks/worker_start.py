"""What a trial worker costs before it loads the model: import time, start-up, memory, by git ref.

    python benchmarks/worker_start.py [--refs 2b1c07e worktree] [--rounds 5] [--json FILE]

For each ref (a commit checked out with `git worktree add --detach`, or `worktree`: this
tree), interleaved over the rounds in a shuffled order, with the same interpreter:
- import: `python -c "import <worker module>"` timed from outside (spawn to exit) and
  inside (perf_counter around the import), and the heavy modules it leaves in sys.modules;
- start: the ref's real worker, started the way that ref's trial starts it and sent that
  ref's own spec for the demo model; its RSS at the `loaded` event (sampled with psutil if
  the event has none) and the start-up cost a trial pays before loading: spawn to `loaded`
  minus the load_s the worker reports.

The default "before" is 2b1c07e, the last commit whose worker imported pandas and Optuna
through autotune/__init__.py (f52f1bf made the studies API load on first use). Each
measurement holds the machine lock, so the numbers are not taken while another one runs.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from autotune.measure.machine_lock import MachineLock
from autotune.measure.model import demo_model_path
from autotune.search.rounds import interleaved_rounds

REPO = Path(__file__).resolve().parents[1]
WORKTREE = "worktree"
HEAVY = ("optuna", "pandas", "matplotlib", "plotly", "sqlalchemy", "scipy", "numpy")
# Run inside a ref's tree (untimed): how its trial starts the worker, and the spec its
# trial would send for the demo model.
LAYOUT = """
import importlib, json, sys
model, module = sys.argv[1:]
package = module.rsplit(".", 1)[0]
trial, workload, settings = (importlib.import_module(f"{package}.{name}")
                             for name in ("trial", "workload", "settings"))
command = (trial.worker_command() if hasattr(trial, "worker_command")
           else [sys.executable, "-m", module])
spec = trial.TrialSpec(model, settings.Settings(), workload.builtin_workload()).to_wire()
spec = json.loads(spec) if isinstance(spec, str) else spec  # a JSON line since the records
print(json.dumps({"module": module, "command": command, "spec": spec, "file": trial.__file__}))
"""
# Only builtin modules before the timer, so the import timed is the worker's own.
TIMED_IMPORT = ("import sys, time; started = time.perf_counter(); import {module}; "
                "print([time.perf_counter() - started, "
                "[m for m in {heavy!r} if m in sys.modules]])")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", nargs="+", default=["2b1c07e", WORKTREE],
                        help=f"git refs to compare; {WORKTREE!r} is this tree as it is")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--seed", type=int, default=0, help="of the shuffled order")
    parser.add_argument("--json", metavar="FILE", help="save every sample here")
    return parser.parse_args(argv)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def environment(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AUTOTUNE_WORKER_FAULT"}
    return {**env, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}


def layout(root: Path, model: Path) -> dict:
    """The ref's worker module (by its files: an editable install of another tree would
    answer for modules this one lacks), how its trial starts it, and the spec it sends."""
    new = (root / "autotune" / "measure" / "worker.py").exists()
    module = "autotune.measure.worker" if new else "autotune.worker"
    done = subprocess.run([sys.executable, "-c", LAYOUT, str(model), module], cwd=root,
                          env=environment(root), capture_output=True, text=True, check=True)
    found = json.loads(done.stdout)
    if not Path(found.pop("file")).is_relative_to(root):
        raise SystemExit(f"{root}: its trial module was imported from elsewhere")
    return found


def time_import(root: Path, module: str) -> tuple[float, float, list[str]]:
    """Outside (spawn to exit) and inside seconds, and the heavy modules it loaded."""
    code = TIMED_IMPORT.format(module=module, heavy=HEAVY)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=environment(root),
                          capture_output=True, text=True, check=True)
    outside = time.perf_counter() - started
    inside, heavy = ast.literal_eval(done.stdout.strip())
    return outside, inside, heavy


def start_worker(root: Path, command: list[str], spec: dict) -> tuple[float, float, int]:
    """Spawn to `loaded` in seconds, the worker's own load_s, and its RSS at `loaded`."""
    with tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=root, env=environment(root), text=True,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=stderr, start_new_session=True)
        try:
            process.stdin.write(json.dumps(spec) + "\n")
            process.stdin.flush()
            event: dict = {}
            for line in process.stdout:
                event = json.loads(line)
                if event.get("event") == "loaded":
                    to_loaded = time.perf_counter() - started
                    rss = event.get("rss_bytes") or psutil.Process(process.pid).memory_info().rss
                    return to_loaded, event["load_s"], rss
                if event.get("event") == "load_failed":
                    break
            stderr.seek(0)
            raise SystemExit(f"worker in {root} did not load: {event}\n{stderr.read()[-2000:]}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    low, mid, high = (f"{v * scale:.{digits}f}" for v in (min(values), statistics.median(values),
                                                          max(values)))
    return f"{mid} ({low}–{high})"


def table(results: dict[str, dict]) -> str:
    rows = [("import, outside (s)", lambda r: spread(r["import_outside_s"])),
            ("import, inside (s)", lambda r: spread(r["import_inside_s"])),
            ("spawn to `loaded` minus load_s (s)",
             lambda r: spread([a - b for a, b in zip(r["to_loaded_s"], r["load_s"], strict=True)])),
            ("load_s (s)", lambda r: spread(r["load_s"])),
            ("RSS at `loaded` (MiB)", lambda r: spread(r["rss_bytes"], 2 ** -20, 1)),
            ("heavy modules after import", lambda r: ", ".join(r["heavy"]) or "none")]
    names = [f"{label} (`{r['module']}`)" for label, r in results.items()]
    lines = [f"| median (range) | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {name} | {' | '.join(cell(r) for r in results.values())} |"
              for name, cell in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = demo_model_path()
    roots: dict[str, Path] = {}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="worker-start-") as folder:
        try:
            for ref in args.refs:
                commit = git("rev-parse", f"{'HEAD' if ref == WORKTREE else ref}^{{commit}}")
                label = ref if ref == WORKTREE else commit[:7]
                if ref == WORKTREE:
                    roots[label] = REPO
                else:
                    roots[label] = Path(folder) / label
                    git("worktree", "add", "--quiet", "--detach", str(roots[label]), label)
                results[label] = {"commit": commit, **layout(roots[label], model),
                                  "import_outside_s": [],
                                  "import_inside_s": [], "to_loaded_s": [], "load_s": [],
                                  "rss_bytes": [], "heavy": []}

            def one(round_no: int, label: str) -> None:
                round_no -= args.warmup  # the warm-up rounds first, untimed
                r, root = results[label], roots[label]
                with MachineLock().held("worker start benchmark"):
                    outside, inside, heavy = time_import(root, r["module"])
                    to_loaded, load_s, rss = start_worker(root, r["command"], r["spec"])
                if round_no < 0:
                    return
                for key, value in (("import_outside_s", outside), ("import_inside_s", inside),
                                   ("to_loaded_s", to_loaded), ("load_s", load_s),
                                   ("rss_bytes", rss)):
                    r[key].append(value)
                r["heavy"] = heavy
                print(f"round {round_no + 1}: {label}: import {outside:.3f} s, "
                      f"start-up {to_loaded - load_s:.3f} s, rss {rss / 2**20:.1f} MiB",
                      file=sys.stderr, flush=True)

            interleaved_rounds(results, args.warmup + args.rounds, args.seed, one)
        finally:
            for root in roots.values():
                if root != REPO:
                    git("worktree", "remove", "--force", str(root))
    print(table(results))
    if args.json:
        for r in results.values():
            del r["spec"]  # the workload's text: not a measurement
        Path(args.json).write_text(json.dumps(
            {"rounds": args.rounds, "python": sys.version, "model": str(model),
             "cpus": os.cpu_count(), "refs": results}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
