"""The guide's folk wisdom, measured: threads, context window and context cache, side by side.

    python benchmarks/threads_and_cache.py MODEL [--rounds 2] [--tokens 12]

Runs one latency trial per configuration per round (interleaved, shuffled) on the
built-in workload and prints each configuration's median mean latency, time to first
token, cache save/restore time and peak memory, with its ratio to the guide's defaults.
"""

from __future__ import annotations

import argparse
import statistics

from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.bench import bench
from autotune.measure.hardware import detect
from autotune.measure.records import TrialStats
from autotune.measure.settings import Settings
from autotune.search.rounds import interleaved_rounds


def configurations(physical: int) -> dict[str, Settings]:
    guide = Settings(**{**GUIDE_DEFAULTS, "n_gpu_layers": 0})  # type: ignore[arg-type]
    return {
        "guide defaults (8 threads, 4096, cache 100)": guide,
        f"{physical} threads": guide.replace(n_threads=physical),
        f"{physical} threads, cache off": guide.replace(n_threads=physical,
                                                        enable_context_cache=False),
        f"{physical} threads, context 1024": guide.replace(n_threads=physical,
                                                           context_window=1024),
        f"{physical} threads, context 512": guide.replace(n_threads=physical,
                                                          context_window=512),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    machine = detect()
    configs = configurations(machine.physical_cores)

    def one(round_no: int, name: str) -> TrialStats:
        report = bench(args.model, configs[name], tokens_per_request=args.tokens,
                       machine=machine)
        mean = report.stats.mean_s
        print(f"round {round_no + 1}: {name}: {report.status}, mean "
              f"{float('nan') if mean is None else mean:.3f} s", flush=True)
        return report.stats

    done = interleaved_rounds(configs, args.rounds, args.seed, one)
    rows = {name: [stats for _, of, stats in done if of == name] for name in configs}
    base = statistics.median(r.mean_s for r in next(iter(rows.values())))
    print(f"\n{machine.physical_cores} physical / {machine.logical_cores} logical cores, "
          f"{args.tokens} tokens per request, {args.rounds} interleaved rounds")
    print(f"{'configuration':44} {'mean':>8} {'ratio':>6} {'ttft':>7} {'cache':>7} "
          f"{'reloads':>7} {'peak RSS':>9}")
    for name, reports in rows.items():
        mean = statistics.median(r.mean_s for r in reports)
        print(f"{name:44} {mean:>7.3f}s {mean / base:>5.2f}x "
              f"{statistics.median(r.ttft_mean_s for r in reports):>6.3f}s "
              f"{statistics.median(r.cache_mean_s for r in reports):>6.3f}s "
              f"{reports[0].reloads:>7} {reports[0].peak_rss_bytes / 2**20:>7.0f}Mi")


if __name__ == "__main__":
    main()
