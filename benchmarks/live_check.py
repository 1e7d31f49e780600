"""Live check: real default studies against the grid optimum, measured side by side.

    python benchmarks/live_check.py [MODEL] [--grid benchmarks/results/grid.json]
        [--seeds 5] [--rounds 3] [--out benchmarks/results/live-check]

For each seed, a real study with the tuner's defaults (`tune`, as `autotune MODEL --seed S`
runs it, in a studies folder of its own so that none warm-starts from another, writing
no export) gives its confirmed winner, its
wall time, and the time of its search and of its confirmation. Then every distinct winner,
the grid optimum's cell (from the grid_truth.py file) and the guide's defaults are measured
side by side, interleaved in one run: every configuration once per round, in a shuffled
order, with the tuner's own trial (`Measurement.run`, the machine lock held). Each seed's
winner is held against the optimum by their median scores there: the goal is the median
seed within 3%. Writes JSON and a Markdown table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from autotune.guide import DEFAULTS_LABEL, GUIDE_DEFAULTS
from autotune.measure.hardware import detect
from autotune.measure.model import demo_model_path, inspect_model
from autotune.measure.scoring import score
from autotune.measure.settings import Settings
from autotune.measure.workload import builtin_workload
from autotune.search.rounds import interleaved_rounds
from autotune.search.study import Measurement, versions
from autotune.search.tune import TuneOptions, tune

sys.path.insert(0, str(Path(__file__).parent))
from grid_truth import cell_key  # a configuration's name, as the grid names its cells

RESULTS = Path(__file__).parent / "results"
GOAL = 0.03  # the median seed's winner within 3% of the grid optimum's score
OPTIMUM = "grid optimum"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def study(model: str, seed: int, folder: str) -> dict:
    """One default study: its winner's settings, wall time and phases."""
    started = time.monotonic()
    # a studies folder of its own: no seed warm-starts from another's winner
    report = tune(model, TuneOptions(seed=seed, studies_dir=str(Path(folder) / f"seed-{seed}"),
                                     out=None, study_name=f"live-{seed}"))
    wall = time.monotonic() - started
    winner = next(c for c in report.candidates if c.label == report.winner.label)
    improvement = report.improvement
    return {"seed": seed, "wall_s": wall, "search_s": report.phases["search"],
            "confirmation_s": report.phases["confirmation"], "trials": report.n_trials,
            "winner": winner.label, "settings": winner.settings.to_dict(),
            "key": cell_key(winner.settings.to_dict()),
            "dropped": [c.label for c in report.candidates if c.dropped],
            "speedup": improvement.speedup if improvement else None,
            "speedup_low": improvement.low if improvement else None,
            "speedup_high": improvement.high if improvement else None,
            "notes": list(report.notes)}


def side_by_side(model, configs: dict[str, dict], rounds: int, seed: int) -> dict[str, list]:
    """Every configuration once per round, shuffled: each one's scores over the rounds."""
    info = inspect_model(model)
    measurement = Measurement(builtin_workload())

    def one(round_no: int, name: str) -> float | None:
        result = measurement.run(info, Settings.from_dict(configs[name]))
        value = score(result.latencies, measurement.weights).total_s \
            if result.ok and not result.reloads else None
        log(f"side by side, round {round_no + 1}: {name}: "
            f"{'failed' if value is None else f'{value:.3f} s'}")
        return value

    done = interleaved_rounds(configs, rounds, seed, one)
    return {name: [value for _, of, value in done if of == name] for name in configs}


def median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) and known else None


def markdown(doc: dict) -> str:
    optimum = doc["medians"][OPTIMUM]
    lines = [
        f"Live check, {doc['created']}: {doc['model']} on {doc['machine']}, llama-cpp-python "
        f"{doc['versions']['llama_cpp_python']}, autotune {doc['versions']['autotune']}; "
        f"{len(doc['studies'])} default studies, then {doc['rounds']} interleaved rounds of "
        f"every winner, the grid optimum ({doc['optimum_key']}) and the guide's defaults.",
        "",
        "| seed | winner | side-by-side score | vs grid optimum | study wall time | search "
        "| confirmation | trials | finalists dropped | improvement (95%) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in doc["studies"]:
        mine = doc["medians"][row["key"]]
        gap = f"{100 * (mine / optimum - 1):+.1f}%" if mine and optimum else "-"
        speed = (f"{row['speedup']:.2f}x ({row['speedup_low']:.2f}-{row['speedup_high']:.2f})"
                 if row["speedup"] and row["speedup_low"] else "-")
        lines.append(f"| {row['seed']} | {row['key']} | "
                     f"{mine:.3f} s | {gap} | {row['wall_s']:.0f} s | {row['search_s']:.0f} s | "
                     f"{row['confirmation_s']:.0f} s | {row['trials']} | "
                     f"{len(row['dropped'])} | {speed} |" if mine else
                     f"| {row['seed']} | {row['key']} | failed | - | {row['wall_s']:.0f} s | "
                     f"- | - | {row['trials']} | - | {speed} |")
    lines += ["", "| configuration | side-by-side median score | scores over the rounds |",
              "|---|---:|---|"]
    for name, values in doc["scores"].items():
        median = doc["medians"][name]
        shown = ", ".join("failed" if v is None else f"{v:.3f}" for v in values)
        lines.append(f"| {name} | {'-' if median is None else f'{median:.3f} s'} | {shown} |")
    summary = doc["summary"]
    lines += ["", f"Median seed's winner against the grid optimum: "
              f"{100 * summary['median_gap']:+.1f}% (goal: within {GOAL:.0%}, "
              f"{'met' if summary['median_gap'] <= GOAL else 'not met'}). Median study wall "
              f"time {summary['median_wall_s']:.0f} s (search {summary['median_search_s']:.0f} s, "
              f"confirmation {summary['median_confirmation_s']:.0f} s; goal 120 s, "
              f"{'met' if summary['median_wall_s'] <= 120 else 'not met'})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="GGUF file (the demo model)")
    parser.add_argument("--grid", default=str(RESULTS / "grid.json"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="the side-by-side order")
    parser.add_argument("--out", default=str(RESULTS / "live-check"))
    args = parser.parse_args(argv)
    model = args.model or demo_model_path()
    grid = json.loads(Path(args.grid).read_text())
    if not grid.get("optimum"):
        raise SystemExit(f"{args.grid} names no grid optimum")
    studies = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(1, args.seeds + 1):
            log(f"study {seed}/{args.seeds} (seed {seed})")
            studies.append(study(str(model), seed, folder))
            log(f"  winner {studies[-1]['key']} in {studies[-1]['wall_s']:.0f} s")
    configs = {OPTIMUM: grid["optimum"]["settings"],
               DEFAULTS_LABEL: dataclasses.asdict(Settings(**GUIDE_DEFAULTS))}
    for row in studies:  # a winner in the optimum's cell is measured as the optimum
        if row["key"] != grid["optimum"]["key"]:
            configs.setdefault(row["key"], row["settings"])
    scores = side_by_side(model, configs, args.rounds, args.seed)
    medians = {name: median_or_none(values) for name, values in scores.items()}
    medians.setdefault(grid["optimum"]["key"], medians[OPTIMUM])
    optimum = medians[OPTIMUM]
    gaps = [medians[r["key"]] / optimum - 1 for r in studies if medians[r["key"]] and optimum]
    machine = detect()
    doc = {"format": "autotune-live-check", "format_version": 1,
           "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "model": inspect_model(model).name,
           "machine": f"{machine.cpu} ({machine.physical_cores}/{machine.logical_cores} cores)",
           "versions": dataclasses.asdict(versions()), "grid": args.grid,
           "optimum_key": grid["optimum"]["key"], "rounds": args.rounds, "studies": studies,
           "scores": scores, "medians": medians, "summary": {
               "median_gap": statistics.median(gaps) if gaps else float("inf"),
               "median_wall_s": statistics.median(r["wall_s"] for r in studies),
               "median_search_s": statistics.median(r["search_s"] for r in studies),
               "median_confirmation_s": statistics.median(r["confirmation_s"]
                                                          for r in studies)}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    table = markdown(doc)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
