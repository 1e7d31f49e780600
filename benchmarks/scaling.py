"""How the tuner's cost grows with the model: the default study on models of real shapes.

    python benchmarks/scaling.py [--shapes demo,TinyLlama-1.1B,Llama-3.2-3B]
        [--quant Q4_K_M] [--budget 5m] [--estimate Llama-2-7B] [--out benchmarks/results/scaling]
    python benchmarks/scaling.py --table benchmarks/results/scaling.json

Each shape's model (the demo model, or a synthetic one of that shape made and cached by
benchmarks/model_shapes.py) is tuned with the command a user types, `autotune MODEL
--json` (its default budget unless `--budget` is given), in an empty studies folder, one
after the other. From its report and its study it records:

- the whole wall time, the search's and the confirmation's, and the share spent measuring
  the guide's baselines (their search trials and the defaults' confirmation runs);
- the trials run and pruned, the cost of a trial (search time over trials) and of one
  request (the winner's median mean latency), the winner's peak memory;
- the winner, and the improvement over the guide's defaults with its interval.

A shape in `--estimate` is not run: its per-request cost is estimated from the largest
measured shape's, scaled by the bytes of weights each token reads (CPU decoding is bound
by memory bandwidth), and the row is marked as an estimate. The JSON, a Markdown table
and a plot of wall time against model size go to `--out`.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from model_shapes import SHAPES, data_bytes, make_model, n_params, read_tokenizer

from autotune.measure.model import demo_model_path

AUTOTUNE = str(Path(sys.executable).with_name("autotune"))
DEMO = "demo"
GiB = 1024**3


def model_file(shape: str, quant: str) -> Path:
    return Path(demo_model_path()) if shape == DEMO else make_model(shape, quant)


def study_counts(studies: Path) -> dict[str, object]:
    """Trials by state, and the seconds spent on the guide's baselines' search trials."""
    import optuna

    from autotune.studies.records import TrialRecord
    from autotune.studies.storage import open_storage

    storage = open_storage(studies)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    states = [t.state.name for t in study.trials if t.state.is_finished()]  # not queued ones
    baseline_s = 0.0
    for trial in study.trials:
        kept = TrialRecord.read(trial, study.study_name)
        if (kept.label or "").startswith("guide") and trial.duration is not None:
            baseline_s += trial.duration.total_seconds()
    return {"trials": len(states), "pruned": states.count("PRUNED"),
            "complete": states.count("COMPLETE"), "baseline_search_s": baseline_s}


def tune_once(shape: str, quant: str, budget: str | None, seed: int) -> dict:
    path = model_file(shape, quant)
    with tempfile.TemporaryDirectory(prefix="scaling-") as folder:
        studies = Path(folder) / "studies"
        command = [AUTOTUNE, str(path), "--studies-dir", str(studies), "--out",
                   str(Path(folder) / "jarvis.env"), "--seed", str(seed), "--json"]
        if budget:
            command += ["--budget", budget]
        print(f"{shape}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              env={**os.environ, "AUTOTUNE_STUDIES": ""})
        wall = time.monotonic() - started
        if done.returncode != 0:
            return {"shape": shape, "status": "failed", "wall_s": wall,
                    "error": done.stderr.strip().splitlines()[-1:]}
        report = json.loads(done.stdout)
        counts = study_counts(studies)
        export = (Path(folder) / "jarvis.env").read_text()
    winner = report["winner"]
    stats = winner.get("stats") or {}
    improvement = report.get("improvement") or {}
    phases = report.get("phases", {})
    baseline_s = counts["baseline_search_s"] + defaults_share(report)
    return {
        "shape": shape, "status": "ok", "model": str(path), "model_bytes": path.stat().st_size,
        "wall_s": wall, "search_s": phases.get("search"),
        "confirmation_s": phases.get("confirmation"), "budget_s": report.get("budget_s"),
        "baselines_s": baseline_s, "baselines_share": baseline_s / wall,
        **counts,
        "trial_s": (phases.get("search") or 0.0) / max(1, counts["trials"]),
        "request_s": stats.get("mean_s"), "peak_rss_bytes": stats.get("peak_rss_bytes"),
        "winner": winner.get("settings"), "winner_label": winner.get("label"),
        "speedup": improvement.get("speedup"), "speedup_low": improvement.get("low"),
        "speedup_high": improvement.get("high"), "at_least": improvement.get("at_least"),
        "notes": report.get("notes", []), "export": export,
    }


def defaults_share(report: dict) -> float:
    """The confirmation's share on the guide's defaults: its runs over all runs, of its time."""
    rows = report.get("candidates", [])
    runs = sum(r.get("runs", 0) for r in rows)
    mine = sum(r.get("runs", 0) for r in rows if r.get("label") == "guide defaults")
    return (report.get("phases", {}).get("confirmation") or 0.0) * (mine / runs if runs else 0)


def estimate(shape: str, quant: str, measured: list[dict]) -> dict:
    """A shape not run: its request cost from the largest measured one's, by weight bytes."""
    base = max((r for r in measured if r["status"] == "ok" and r["shape"] != DEMO),
               key=lambda r: r["model_bytes"])
    vocab = read_tokenizer().vocab
    ratio = data_bytes(SHAPES[shape], quant, vocab) / base["model_bytes"]
    return {"shape": shape, "status": "estimate", "estimated_from": base["shape"],
            "model_bytes": data_bytes(SHAPES[shape], quant, vocab),
            "params": n_params(SHAPES[shape], vocab), "request_s": base["request_s"] * ratio,
            "trial_s": base["trial_s"] * ratio}


def table(doc: dict) -> str:
    lines = [f"Default study (`autotune MODEL`, budget {doc['budget'] or 'default'}) per model "
             f"shape, {doc['machine']}; {doc['quant']} for the synthetic shapes.", "",
             "| model | size | wall | search | confirmation | baselines | trials (pruned) | "
             "per trial | per request | peak memory | improvement |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        size = f"{r['model_bytes'] / 2**20:,.0f} MiB"
        if r["status"] == "estimate":
            lines.append(f"| {r['shape']} (estimate from {r['estimated_from']}) | {size} | - "
                         f"| - | - | - | - | {r['trial_s']:.0f} s | {r['request_s']:.2f} s "
                         "| - | - |")
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['shape']} | {size if 'model_bytes' in r else '-'} | "
                         f"{r['wall_s']:.0f} s | failed: {' '.join(r['error'])} |||||||||")
            continue
        speed = "-" if r["speedup"] is None else (
            f"at least {r['speedup']:.2f}x" if r["at_least"] else
            f"{r['speedup']:.2f}x ({r['speedup_low']:.2f}-{r['speedup_high']:.2f})"
            if r["speedup_low"] is not None else f"{r['speedup']:.2f}x")
        lines.append(
            f"| {r['shape']} | {size} | {r['wall_s']:.0f} s | {r['search_s']:.0f} s | "
            f"{r['confirmation_s']:.0f} s | {r['baselines_share']:.0%} | {r['trials']} "
            f"({r['pruned']}) | {r['trial_s']:.1f} s | {r['request_s']:.2f} s | "
            f"{(r['peak_rss_bytes'] or 0) / 2**20:,.0f} MiB | {speed} |")
    ok = [r for r in doc["rows"] if r["status"] == "ok"]
    if len(ok) >= 2:
        small, large = ok[0], ok[-1]
        lines += ["", f"From {small['shape']} to {large['shape']}: a request costs "
                  f"{large['request_s'] / small['request_s']:.1f}x as much, the whole study "
                  f"{large['wall_s'] / small['wall_s']:.1f}x as long."]
    return "\n".join(lines) + "\n"


def plot(doc: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = [r["model_bytes"] / 2**20 for r in rows]
    ax.plot(sizes, [r["wall_s"] for r in rows], "o-", label="whole study")
    ax.plot(sizes, [r["search_s"] for r in rows], "s--", label="search")
    ax.plot(sizes, [r["confirmation_s"] for r in rows], "^--", label="confirmation")
    for r, x in zip(rows, sizes, strict=True):
        ax.annotate(r["shape"], (x, r["wall_s"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("model file, MiB")
    ax.set_ylabel("wall time, s")
    ax.set_title("The default study's wall time against model size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=f"{DEMO},TinyLlama-1.1B,Llama-3.2-3B")
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--budget", help="--budget for every study (the default's otherwise)")
    parser.add_argument("--estimate", default="Llama-2-7B",
                        help="shapes estimated from the measured ones, not run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/scaling")
    parser.add_argument("--table", metavar="FILE", help="print a saved run's table")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())), end="")
        return
    from autotune.measure.hardware import detect

    machine = detect()
    rows = [tune_once(shape, args.quant, args.budget, args.seed)
            for shape in args.shapes.split(",") if shape]
    for shape in filter(None, args.estimate.split(",")):
        if any(r["status"] == "ok" and r["shape"] != DEMO for r in rows):
            rows.append(estimate(shape, args.quant, rows))
    doc = {"benchmark": "scaling", "budget": args.budget, "quant": args.quant,
           "machine": f"{machine.logical_cores} logical cores, "
                      f"{machine.total_memory_bytes / GiB:.0f} GiB", "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(doc))
    plot(doc, out.with_suffix(".png"))
    print(table(doc), end="")


if __name__ == "__main__":
    main()
