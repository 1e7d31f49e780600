"""Grid truth: measure every cell of the core search space, and name the grid optimum.

    python benchmarks/grid_truth.py [MODEL] [--repeats 3] [--tokens 8] [--small]
        [--cache-sizes 1,4,100] [--contexts 1024,4096] [--finalists 3] [--rounds 3]
        [--out benchmarks/results/grid.json]
    python benchmarks/grid_truth.py --table benchmarks/results/grid.json

Every cell of the space `autotune.search.space.build_space` gives this model on this
machine (n_threads 1..logical cores, each context window, the context cache off and on at
each of `--cache-sizes`, GPU layers where there is offload), plus the guide's baselines
the study enqueues, is measured `--repeats` times with the tuner's own trial
(`Measurement.run`: `run_trial` while holding the machine lock), all repeats of all cells
in one shuffled, interleaved order. Every request of every run is saved (its latency and
the rest of its record), with the run's status, wall time, load and warm-up time, peak RSS
and the CPU the rest of the machine used meanwhile (in the table: the most any of a cell's
runs saw, in percent of one core). Then the best `--finalists` feasible
cells by median score run again, interleaved, for `--rounds` rounds: the grid optimum is
the one with the lowest median score there, given with its spread.

`--small` measures a subset that finishes in a few minutes (`make bench`): 1..cores
threads, context 1024 and 4096, cache off or on at 1 and 100, 2 repeats, 8 tokens.
The file is what `benchmarks/replay.py` replays. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

from autotune.measure.hardware import detect
from autotune.measure.model import demo_model_path, inspect_model
from autotune.measure.records import TrialResult
from autotune.measure.scoring import Weights, score
from autotune.measure.settings import Settings
from autotune.measure.trial import DEFAULT_TOKENS
from autotune.measure.workload import builtin_workload, load_workload
from autotune.search.rounds import interleaved_rounds
from autotune.search.space import MIN_CONTEXT, build_space
from autotune.search.study import Measurement, versions

FORMAT = "autotune-grid"
FORMAT_VERSION = 1
RESULTS = Path(__file__).parent / "results"
SMALL = {"contexts": (1024, 4096), "cache_sizes": (1, 100), "repeats": 2}
FULL_CACHE_SIZES = (1, 4, 100)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cell_key(settings: dict[str, object]) -> str:
    """A cell's name: `t2 c4096 cache100` / `t1 c1024 nocache` (+ `g10` with offload)."""
    cache = f"cache{settings['max_cache_size']}" if settings["enable_context_cache"] \
        else "nocache"
    gpu = f" g{settings['n_gpu_layers']}" if settings.get("n_gpu_layers") else ""
    return f"t{settings['n_threads']} c{settings['context_window']} {cache}{gpu}"


def grid_cells(space, baselines, contexts=None, cache_sizes=FULL_CACHE_SIZES,
               threads=None) -> list[dict]:
    """The cells: the space's core grid (optionally narrowed), then the baselines outside it."""
    contexts = [c for c in space.context_choices if contexts is None or c in contexts]
    threads = threads or range(space.n_threads[0], space.n_threads[1] + 1)
    gpu = [0] if space.gpu_layers is None else sorted(
        {space.gpu_layers[0], 0, space.gpu_layers[1] // 2, space.gpu_layers[1]})
    caches = [(False, None)] + [(True, size) for size in cache_sizes]
    cells = []
    for n_threads, context, (on, size), layers in itertools.product(threads, contexts,
                                                                     caches, gpu):
        settings = Settings(n_threads=n_threads, context_window=context, n_gpu_layers=layers,
                            enable_context_cache=on,
                            max_cache_size=size if on else Settings().max_cache_size)
        cells.append({"settings": settings.to_dict(), "label": "", "in_space": True,
                      "core": True})
    seen = {cell_key(c["settings"]) for c in cells}
    for label, params, pinned in baselines:
        values = {**space.fixed, **params, **pinned}
        settings = Settings(**values).to_dict()
        key = cell_key(settings)
        if key in seen:
            for cell in cells:
                if cell_key(cell["settings"]) == key:
                    cell["label"] = cell["label"] or label
            continue
        seen.add(key)
        inside = space.n_threads[0] <= settings["n_threads"] <= space.n_threads[1]
        cells.append({"settings": settings, "label": label, "in_space": inside, "core": False})
    for cell in cells:
        cell["key"] = cell_key(cell["settings"])
    return cells


def run_record(cell: int, repeat: int, phase: str, result: TrialResult,
               weights: Weights) -> dict:
    parts = score(result.latencies, weights) if result.ok else None
    return {
        "cell": cell, "repeat": repeat, "phase": phase, "status": str(result.status),
        "reason": result.reason[:300], "wall_s": result.wall_s, "load_s": result.load_s,
        "warmup_s": result.warmup_s, "peak_rss_bytes": result.peak_rss_bytes,
        "cpu_percent_mean": result.cpu_percent_mean,
        "other_cpu_percent_mean": result.other_cpu_percent_mean,
        "reloads": result.reloads, "latencies": result.latencies,
        "score_s": parts.total_s if parts else None,
        "requests": [r.to_dict() for r in result.requests],
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def cell_summary(doc: dict, phase: str) -> list[dict]:
    """Per cell: repeats, ok runs, reloads, the median score (None: failed or overflowed)."""
    rows = []
    for index, cell in enumerate(doc["cells"]):
        runs = [r for r in doc["runs"] if r["cell"] == index and r["phase"] == phase]
        ok = [r for r in runs if r["score_s"] is not None]
        feasible = bool(runs) and len(ok) == len(runs) and all(r["reloads"] == 0 for r in ok)
        scores = sorted(r["score_s"] for r in ok)
        rows.append({"cell": index, "key": cell["key"], "label": cell["label"],
                     "runs": len(runs), "ok": len(ok), "feasible": feasible,
                     "reloads": max((r["reloads"] for r in runs), default=0),
                     "median_score_s": statistics.median(scores) if scores else None,
                     "min_score_s": scores[0] if scores else None,
                     "max_score_s": scores[-1] if scores else None,
                     "median_wall_s": statistics.median(r["wall_s"] for r in runs)
                     if runs else None,
                     "other_cpu_max": max((r["other_cpu_percent_mean"] or 0.0 for r in runs),
                                          default=None)})
    return rows


def start_cost(doc: dict) -> dict:
    """What a trial pays besides its requests: wall time minus the requests' latencies."""
    ok = [r for r in doc["runs"] if r["status"] == "ok"]
    if not ok:
        return {}
    overhead = [r["wall_s"] - sum(r["latencies"]) for r in ok]
    return {"median_overhead_s": statistics.median(overhead),
            "median_load_s": statistics.median(r["load_s"] or 0.0 for r in ok),
            "median_warmup_s": statistics.median(r["warmup_s"] or 0.0 for r in ok)}


def save(doc: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out)


def measure(doc: dict, out: Path, measurement: Measurement, model, cells: list[int],
            rounds: int, rng: random.Random, phase: str) -> None:
    """Every cell of `cells` once per round, interleaved, each run saved as it ends."""
    started = time.monotonic()
    total = len(cells) * rounds
    counted = itertools.count(1)

    def one(repeat: int, index: int) -> None:
        done = next(counted)
        cell = doc["cells"][index]
        result = measurement.run(model, Settings.from_dict(cell["settings"]))
        record = run_record(index, repeat, phase, result, measurement.weights)
        doc["runs"].append(record)
        save(doc, out)  # an interrupted grid keeps what it measured
        took = time.monotonic() - started
        value = "-" if record["score_s"] is None else f"{record['score_s']:.3f}s"
        other = result.other_cpu_percent_mean
        log(f"{phase} {done}/{total} {cell['key']:24} {result.status:>9} score {value}"
            f" reloads {record['reloads']} wall {result.wall_s:.1f}s other-cpu "
            f"{'-' if other is None else f'{other:.0f}%'} (eta "
            f"{took / done * (total - done) / 60:.1f} min)")

    interleaved_rounds(cells, rounds, rng, one)


def name_optimum(doc: dict) -> dict | None:
    rows = [r for r in cell_summary(doc, "final") if r["runs"]]
    ok = [r for r in rows if r["feasible"]]
    if not ok:
        return None
    best = min(ok, key=lambda r: r["median_score_s"])
    scores = [r["score_s"] for r in doc["runs"]
              if r["cell"] == best["cell"] and r["phase"] == "final"]
    runner = sorted(ok, key=lambda r: r["median_score_s"])[1:2]
    return {"cell": best["cell"], "key": best["key"], "settings":
            doc["cells"][best["cell"]]["settings"], "median_score_s": best["median_score_s"],
            "min_score_s": min(scores), "max_score_s": max(scores), "rounds": len(scores),
            "runner_up": runner[0]["key"] if runner else None,
            "runner_up_ratio": runner[0]["median_score_s"] / best["median_score_s"]
            if runner else None}


def markdown(doc: dict) -> str:
    grid = {r["cell"]: r for r in cell_summary(doc, "grid")}
    final = {r["cell"]: r for r in cell_summary(doc, "final")}
    machine, model = doc["machine"], doc["model"]
    lines = [f"Grid truth, {doc['created']}: {model['name']} ({model['quantization']}) on "
             f"{machine['cpu']} ({machine['physical_cores']}/{machine['logical_cores']} "
             f"cores), llama-cpp-python {doc['versions']['llama_cpp_python']}, autotune "
             f"{doc['versions']['autotune']}; {doc['tokens_per_request']} tokens/request, "
             f"{doc['repeats']} repeats/cell, other-CPU median "
             f"{doc['other_cpu_percent_median']:.0f}% of one core.", "",
             "| cell | baseline | grid median score | range | reloads | other CPU (max) "
             "| final median |", "|---|---|---:|---:|---:|---:|---:|"]
    ranked = sorted(grid.values(), key=lambda r: (not r["feasible"],
                                                  r["median_score_s"] or math.inf))
    for row in ranked:
        fin = final.get(row["cell"])
        med = "-" if row["median_score_s"] is None else f"{row['median_score_s']:.3f} s"
        rng = "-" if row["min_score_s"] is None else \
            f"{row['min_score_s']:.3f}-{row['max_score_s']:.3f}"
        other = "-" if row["other_cpu_max"] is None else f"{row['other_cpu_max']:.0f}%"
        lines.append(f"| {row['key']} | {row['label']} | {med} | {rng} | {row['reloads']} | "
                     f"{other} | "
                     + (f"{fin['median_score_s']:.3f} s |" if fin and fin["runs"]
                        and fin["median_score_s"] is not None else "|"))
    best = doc.get("optimum")
    if best:
        lines += ["", f"Grid optimum: **{best['key']}**, median score "
                  f"{best['median_score_s']:.3f} s (range {best['min_score_s']:.3f}-"
                  f"{best['max_score_s']:.3f} over {best['rounds']} interleaved rounds); "
                  f"runner-up {best['runner_up']} at {best['runner_up_ratio']:.3f}x."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="GGUF file (the demo model)")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--cache-sizes", help="comma-separated (1,4,100)")
    parser.add_argument("--contexts", help="comma-separated subset of the space's windows")
    parser.add_argument("--threads", help="comma-separated subset (1..logical cores)")
    parser.add_argument("--small", action="store_true", help="a subset for `make bench`")
    parser.add_argument("--finalists", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workload", help="JSONL workload (the built-in one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file (benchmarks/results/grid[-small].json)")
    parser.add_argument("--table", metavar="FILE", help="print a saved grid's table; measure "
                        "nothing")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())), end="")
        return

    def ints(text: str | None, default):
        return tuple(int(x) for x in text.split(",")) if text else default

    small = SMALL if args.small else {}
    repeats = args.repeats or small.get("repeats", 3)
    tokens = args.tokens or DEFAULT_TOKENS  # what the tuner's trials measure
    contexts = ints(args.contexts, small.get("contexts"))
    cache_sizes = ints(args.cache_sizes, small.get("cache_sizes", FULL_CACHE_SIZES))
    out = Path(args.out or RESULTS / ("grid-small.json" if args.small else "grid.json"))

    model = inspect_model(args.model or demo_model_path())
    machine = detect()
    # the whole range, as `--min-context 512` searches it: the tuner's default floor is a
    # promise to the user, and the grid measures what lies below it too
    space = build_space(model, machine, min_context=MIN_CONTEXT)
    workload = load_workload(args.workload) if args.workload else builtin_workload()
    measurement = Measurement(workload, tokens_per_request=tokens)
    cells = grid_cells(space, space.baselines(model, machine), contexts, cache_sizes,
                       ints(args.threads, None))
    identity = measurement.identity()
    requests = json.dumps([r.to_dict() for r in workload.requests], sort_keys=True)
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine.to_dict(),
        "model": model.to_dict(), "versions": dataclasses.asdict(versions()),
        "workload": {"name": workload.name, "hash": identity.workload_hash,
                     "sha256": hashlib.sha256(requests.encode()).hexdigest(),
                     "requests": len(workload.requests)},
        "tokens_per_request": tokens, "repeats": repeats, "seed": args.seed,
        "weights": dataclasses.asdict(measurement.weights), "space": {
            "n_threads": list(space.n_threads), "context_choices": list(space.context_choices),
            "gpu_layers": list(space.gpu_layers) if space.gpu_layers else None,
            "cache_sizes": list(cache_sizes), "fixed": space.fixed, "notes": space.notes},
        "small": args.small, "cells": cells, "runs": [],
    }
    rng = random.Random(args.seed)  # one order for both phases, drawn in turn
    log(f"grid: {len(cells)} cells x {repeats} repeats = {len(cells) * repeats} trials, "
        f"{tokens} tokens per request -> {out}")
    # every cell once per round: drift falls on all alike
    measure(doc, out, measurement, model, list(range(len(cells))), repeats, rng, "grid")
    ranked = sorted((r for r in cell_summary(doc, "grid") if r["feasible"]),
                    key=lambda r: r["median_score_s"])
    best = [r["cell"] for r in ranked[:args.finalists]]
    log(f"final: {len(best)} best cells x {args.rounds} interleaved rounds")
    measure(doc, out, measurement, model, best, args.rounds if len(best) > 1 else 0, rng,
            "final")
    doc["optimum"] = name_optimum(doc)
    doc["start_cost"] = start_cost(doc)
    others = [r["other_cpu_percent_mean"] for r in doc["runs"]
              if r["other_cpu_percent_mean"] is not None]
    doc["other_cpu_percent_median"] = statistics.median(others) if others else 0.0
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    save(doc, out)
    table = markdown(doc)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
