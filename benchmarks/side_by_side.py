"""Interleaved side-by-side of export files (or the guide's defaults) with `autotune bench`.

    python benchmarks/side_by_side.py MODEL jarvis.env [other.env ...] [--rounds 3] [--tokens N]

Each round runs `autotune bench MODEL --env FILE --json` once per configuration, in a
shuffled order, and the table gives each configuration's median mean latency and its ratio
to the guide's defaults (JARVIS_N_THREADS=8, context 4096, cache on, size 100), which are
always included. Ratios measured side by side in one run are what to compare on a shared
machine; absolute seconds are not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from autotune.guide import DEFAULTS_LABEL, GUIDE_DEFAULTS
from autotune.measure.records import OUTPUT_VERSION, TrialStats
from autotune.measure.settings import CORE_FIELDS, Settings
from autotune.search.rounds import interleaved_rounds

AUTOTUNE = str(Path(sys.executable).with_name("autotune"))


def bench(model: str, env_file: str, extra: list[str]) -> tuple[TrialStats, list[str]]:
    """One `autotune bench --json` run, exactly as a user runs it: its statistics, diagnosis."""
    done = subprocess.run([AUTOTUNE, "bench", model, "--env", env_file, "--json", *extra],
                          capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        raise SystemExit(f"bench failed for {env_file}: {done.stderr.strip()}")
    report = json.loads(done.stdout)
    if report.get("version") != OUTPUT_VERSION:
        raise SystemExit(f"bench printed JSON version {report.get('version')!r}; this script "
                         f"reads version {OUTPUT_VERSION}")
    return TrialStats.from_dict(report["stats"]), report["diagnosis"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("env_files", nargs="*")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens", type=int, help="tokens per request (bench's default)")
    parser.add_argument("--workload", help="JSONL workload (bench's built-in one)")
    args = parser.parse_args()
    extra = [*(["--tokens", str(args.tokens)] if args.tokens else []),
             *(["--workload", args.workload] if args.workload else [])]
    with tempfile.TemporaryDirectory() as folder:
        defaults = Path(folder) / "guide-defaults.env"
        guide = Settings(**GUIDE_DEFAULTS).to_env(CORE_FIELDS)  # type: ignore[arg-type]
        defaults.write_text("".join(f"{k}={v}\n" for k, v in guide.items()))
        configs = {DEFAULTS_LABEL: str(defaults), **{f: f for f in args.env_files}}

        def one(round_no: int, name: str) -> float:
            stats, diagnosis = bench(args.model, configs[name], extra)
            print(f"round {round_no + 1}: {name}: mean {stats.mean_s:.3f} s, "
                  f"p95 {stats.p95_s:.3f} s, diagnosis {diagnosis}", flush=True)
            return stats.mean_s

        done = interleaved_rounds(configs, args.rounds, args.seed, one)
    means = {name: [mean for _, of, mean in done if of == name] for name in configs}
    base = statistics.median(means[DEFAULTS_LABEL])
    print(f"\n{'configuration':40} {'median mean':>12} {'vs defaults':>12}")
    for name, values in means.items():
        median = statistics.median(values)
        print(f"{name:40} {median:>10.3f} s {median / base:>11.2f}x")


if __name__ == "__main__":
    main()
