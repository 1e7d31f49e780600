"""Terminal reports: metric tables, the guide's targets as pass/fail, the diagnosis."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from autotune.diagnosis import targets


def seconds(value: object) -> str:
    return "-" if value is None else f"{value:.3f} s"


def mebibytes(value: object) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def signed_mebibytes(value: object) -> str:
    return "-" if value is None else f"{value / 2**20:+,.1f} MiB"


def percent(value: object) -> str:
    return "-" if value is None else f"{value:.0%}"


def number(value: object, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# (label, summary key, formatter): the rows every metric table shows, in order.
METRICS = (
    ("mean latency", "mean_s", seconds),
    ("median (p50)", "p50_s", seconds),
    ("p95", "p95_s", seconds),
    ("p99", "p99_s", seconds),
    ("max", "max_s", seconds),
    ("std / mean", "cv", number),
    ("spikes (> 5 s)", "spikes", str),
    ("time to first token", "ttft_mean_s", seconds),
    ("queue wait", "queue_mean_s", seconds),
    ("cache save/restore", "cache_mean_s", seconds),
    ("tokens / s", "tokens_per_s", number),
    ("cache hit rate", "cache_hit_rate", percent),
    ("reloads (context overflow)", "reloads", str),
    ("load time", "load_s", seconds),
    ("warm-up request", "warmup_s", seconds),
    ("first request", "first_s", seconds),
    ("median of the rest", "rest_median_s", seconds),
    ("peak memory (RSS)", "peak_rss_bytes", mebibytes),
    ("memory growth / pass", "rss_growth_bytes_per_pass", signed_mebibytes),
    ("GPU memory peak", "gpu_memory_peak_bytes", mebibytes),
)


def metrics_table(columns: dict[str, dict], title: str = "") -> Table:
    """Metric rows against one column per summary (e.g. "defaults" and "winner")."""
    table = Table(title=title or None)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for label, key, fmt in METRICS:
        values = [summary.get(key) for summary in columns.values()]
        if all(v is None for v in values):
            continue
        table.add_row(label, *("-" if v is None else fmt(v) for v in values))
    return table


def targets_table(columns: dict[str, dict]) -> Table:
    table = Table(title="The guide's targets")
    table.add_column("target")
    for name in columns:
        table.add_column(name, justify="center")
    checks = {name: targets(summary) for name, summary in columns.items()}
    first = next(iter(checks.values()))
    for key, check in first.items():
        table.add_row(check["target"], *(verdict(checks[n][key]["pass"]) for n in columns))
    return table


def verdict(passed: bool | None) -> str:
    return {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]n/a[/]"}[passed]


def print_findings(console: Console, findings: list[dict[str, str]]) -> None:
    if not findings:
        console.print("Diagnosis: none of the guide's four spike causes shows in these "
                      "measurements.")
        return
    console.print("Diagnosis:")
    for finding in findings:
        console.print(f"  [bold]{finding['cause']}[/]: {finding['evidence']}.")
        console.print(f"    fix: {finding['fix']}")


def print_bench(console: Console, report: dict) -> None:
    mode = f"{report['clients']} concurrent clients" if report["clients"] > 1 else "sequential"
    console.print(f"[bold]{report['model']['name']}[/] ({report['model']['quantization']}), "
                  f"workload {report['workload']['name']}: {report['workload']['requests']} "
                  f"requests x {report['iterations']} pass(es), {mode}, "
                  f"{report['tokens_per_request']} tokens each")
    if report["status"] != "ok":
        console.print(f"[red]trial {report['status']}[/]: {report['reason']}")
    console.print(metrics_table({"measured": report}))
    pass_means = report.get("pass_mean_s") or []
    if len(pass_means) > 1:
        drift = ", ".join(f"pass {i + 1}: {m:.3f} s" for i, m in enumerate(pass_means))
        console.print(f"Per pass: {drift} (drift {report['pass_drift']:+.1%})")
    console.print(targets_table({"measured": report}))
    print_findings(console, report["findings"])


def print_tune(console: Console, summary: dict) -> None:
    """The defaults against the winner, metric by metric, then the guide's targets."""
    columns = {"guide defaults": summary["baseline"]["stats"] or {},
               f"winner ({summary['winner']['label']})": summary["winner"]["stats"] or {}}
    console.print(metrics_table(columns, title=f"Study {summary['study_name']}: "
                                f"{summary['n_trials']} trials"))
    console.print(targets_table(columns))
    improvement = summary["improvement"]
    if improvement:
        console.print(f"Mean latency: [bold]{improvement['speedup']:.2f}x[/] lower than the "
                      f"guide's defaults (range {improvement['speedup_min']:.2f}x-"
                      f"{improvement['speedup_max']:.2f}x over {improvement['rounds']} "
                      "interleaved rounds).")
    best = " ".join(f"{k}={v}" for k, v in summary["best"].items())
    console.print(f"Best: {best}")
    for note in summary["notes"]:
        console.print(f"Note: {note}")
    if summary["out"]:
        console.print(f"Wrote {summary['out']}: run `. {summary['out']}` and restart Jarvis.")
