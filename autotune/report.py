"""Terminal reports: metric tables, the guide's targets as pass/fail, the diagnosis.

Names here (model, study, file, host, workload, labels) come from model files and storages
that anyone may have written; each goes through `terminal` (or `cell` in tables), so rich
markup in it prints literally and control characters show as escapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from autotune.guide import DEFAULTS_LABEL
from autotune.measure.diagnosis import targets
from autotune.measure.records import STAT_NAMES, BenchReport, Finding, Status, TrialStats
from autotune.measure.settings import BY_FIELD, BY_NAME, Settings, format_value
from autotune.measure.trial import BUSY_PERCENT
from autotune.safe_text import terminal
from autotune.studies.records import Profile, TuneReport

if TYPE_CHECKING:
    from autotune.search.check import CheckReport
    from autotune.studies.profiles import Point
    from autotune.studies.tables import TrialRow


def seconds(value: object) -> str:
    return "-" if value is None else f"{value:.3f} s"


def mebibytes(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def signed_mebibytes(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:+,.1f} MiB"


def percent(value: object) -> str:
    return "-" if value is None else f"{value:.0%}"


def number(value: object, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# (label, TrialStats field, formatter): the rows every metric table shows, in order.
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
    ("cache save/restore, total", "cache_total_s", seconds),
    ("prompt evaluation it saved", "cache_saved_s", seconds),
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
    ("worker CPU (% of a core)", "cpu_percent_mean", number),
    ("other processes' CPU", "other_cpu_percent_mean", number),
)
assert {key for _, key, _ in METRICS} <= set(STAT_NAMES), "a metric row names no statistic"


def metrics_table(columns: dict[str, TrialStats], title: str = "") -> Table:
    """Metric rows against one column per trial's statistics (e.g. defaults and winner)."""
    table = Table(title=title or None)
    table.add_column("metric")
    for name in columns:
        table.add_column(terminal(name), justify="right")
    for label, key, fmt in METRICS:
        values = [getattr(stats, key) for stats in columns.values()]
        if all(v is None for v in values):
            continue
        table.add_row(label, *("-" if v is None else fmt(v) for v in values))
    return table


def targets_table(columns: dict[str, TrialStats]) -> Table:
    table = Table(title="The guide's targets")
    table.add_column("target")
    for name in columns:
        table.add_column(terminal(name), justify="center")
    checks = {name: targets(summary) for name, summary in columns.items()}
    first = next(iter(checks.values()))
    for key, check in first.items():
        table.add_row(check.target, *(verdict(checks[n][key].passed) for n in columns))
    return table


def verdict(passed: bool | None) -> str:
    return {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]n/a[/]"}[passed]


def print_findings(console: Console, findings: tuple[Finding, ...]) -> None:
    if not findings:
        console.print("Diagnosis: none of the guide's four spike causes shows in these "
                      "measurements.")
        return
    console.print("Diagnosis:")
    for finding in findings:
        console.print(f"  [bold]{terminal(finding.cause)}[/]: {terminal(finding.evidence)}.")
        if finding.fix:
            console.print(f"    {'try' if finding.tentative else 'fix'}: {terminal(finding.fix)}")
        if finding.measured:
            console.print(f"    measured: {terminal(finding.measured)}")


def print_explanation(console: Console, lines: tuple[str, ...]) -> None:
    """What each tuned setting bought, as the study measured it (studies.explain)."""
    if not lines:
        return
    console.print("What each setting bought (mean latency per request, the study's trials):")
    for line in lines:
        console.print(f"  {terminal(line)}")


def print_bench(console: Console, report: BenchReport) -> None:
    mode = f"{report.clients} concurrent clients" if report.clients > 1 else "sequential"
    console.print(f"[bold]{terminal(report.model.name)}[/] "
                  f"({terminal(report.model.quantization)}), "
                  f"workload {terminal(report.workload.name)}: {report.workload.requests} "
                  f"requests x {report.iterations} pass(es), {mode}, "
                  f"{report.tokens_per_request} tokens each")
    console.print(f"Measured on {terminal(report.measured_on)}", soft_wrap=True)
    if report.status != Status.OK:
        console.print(f"[red]trial {terminal(report.status)}[/]: {terminal(report.reason)}")
    stats = report.stats
    console.print(metrics_table({"measured": stats}))
    if len(stats.pass_mean_s) > 1:
        drift = ", ".join(f"pass {i + 1}: {m:.3f} s" for i, m in enumerate(stats.pass_mean_s))
        console.print(f"Per pass: {drift} (drift {stats.pass_drift:+.1%})")
    console.print(targets_table({"measured": stats}))
    cost = report.cache_cost
    if cost is not None:
        console.print(f"Context cache: {cost.cache_s:.2f} s saving and restoring, about "
                      f"{cost.saved_s:.2f} s of prompt evaluation saved "
                      f"({cost.restored_tokens} tokens restored)")
    print_findings(console, report.findings)
    if report.evidence_study:
        console.print(f"Fixes checked against study {terminal(report.evidence_study)}.")
    others = stats.other_cpu_percent_mean
    if others is not None and others > BUSY_PERCENT:
        console.print(f"[yellow]Warning:[/] other processes used {others:.0f}% of a core "
                      "during the measurement; rerun on a quiet machine before trusting it.")


def print_tune(console: Console, report: TuneReport) -> None:
    """The defaults against the winner, metric by metric, then the guide's targets."""
    columns = {DEFAULTS_LABEL: report.baseline.stats or TrialStats(),
               f"winner ({report.winner.label})": report.winner.stats or TrialStats()}
    console.print(metrics_table(columns, title=f"Study {terminal(report.study_name)}: "
                                f"{report.n_trials} trials"))
    console.print(targets_table(columns))
    for name, stats in columns.items():
        if (stats.cache_total_s is not None and stats.cache_saved_s is not None
                and stats.cache_total_s - stats.cache_saved_s >= 0.01):
            console.print(f"{terminal(name)}: the context cache cost {stats.cache_total_s:.2f} s "
                          f"to save and restore and saved about {stats.cache_saved_s:.2f} s of "
                          "prompt evaluation.")
    print_goals(console, report)
    improvement = report.improvement
    if improvement:
        console.print(f"Against the guide's defaults: [bold]{terminal(improvement.describe())}"
                      "[/].")
    best = " ".join(f"{k}={v}" for k, v in report.best.items())
    console.print(f"Best: {terminal(best)}")
    if report.profiles:
        fields = [BY_NAME[name].field for name in report.best if name in BY_NAME]
        console.print(profiles_table(report.profiles, fields))
    if report.context:
        console.print(f"The {terminal(report.context)}.")
    if report.context_warning:
        console.print(f"[yellow]Warning:[/] {terminal(report.context_warning)} (pass "
                      "--min-context 4096 to keep the guide's window).")
    if report.tie_break:
        console.print(f"Tie: {terminal(report.tie_break)}.")
    print_explanation(console, report.explanation)
    for note in report.notes:
        console.print(f"Note: {terminal(note)}")
    total = report.costs.total_s
    if total:
        measured = report.costs.requests_s
        console.print(f"Wall time {total:.0f} s, {measured / total:.0%} of it measured requests "
                      "(the rest: worker starts, model loads, sampler, storage).")
    if report.out:
        out = terminal(report.out)
        console.print(f"Wrote {out}: run `. {out}` and restart Jarvis.")


def print_goals(console: Console, report: TuneReport) -> None:
    """What the study minimised, the winner against the defaults on it, and the targets."""
    from autotune.measure.goals import Objective

    objective = Objective(report.objective)
    winner, baseline = report.winner.objective_value, report.baseline.objective_value
    console.print(f"Objective: {objective.describe()}: winner {seconds(winner)}, "
                  f"{DEFAULTS_LABEL} {seconds(baseline)} (medians over the confirmation "
                  "rounds).")
    if report.targets:
        defaults = ("missed " + "; ".join(report.baseline.missed) if report.baseline.missed
                    else "met them")
        console.print(f"Targets ({terminal(', '.join(report.targets))}): the winner met every "
                      f"one; the {DEFAULTS_LABEL} {terminal(defaults)}.")


def print_check(console: Console, report: CheckReport) -> None:
    """The verdict in one line, then what changed since the study, one note a line."""
    style = "green" if report.holds else "red"
    console.print(f"[{style}]{terminal(report.verdict)}[/]", soft_wrap=True)
    for note in report.notes:
        console.print(f"  note: {terminal(note)}", soft_wrap=True)


# (label, study-summary column, formatter): the rows of `autotune compare`.
COMPARE_ROWS = (
    ("model", "model_file", str),
    ("quantization", "quantization", str),
    ("host", "host", str),
    ("cores (physical/logical)", "cores", str),
    ("GPUs", "gpus", str),
    ("llama-cpp-python", "llama_cpp_python", str),
    ("workload", "workload", str),
    ("trials (ok/pruned/failed)", "outcomes", str),
    ("best trial score", "best_score_s", seconds),
    ("winner", "winner", str),
    ("winner score", "winner_score_s", seconds),
    ("winner mean latency", "winner_mean_s", seconds),
    ("guide defaults mean", "defaults_mean_s", seconds),
    ("improvement", "improvement", str),
)


def compare_table(summaries: list[dict]) -> Table:
    """Studies side by side: one column per study, metadata then results then settings."""
    table = Table(title="Studies")
    table.add_column("")
    for row in summaries:
        table.add_column(terminal(row["study"]), justify="right")
    derived = [{**row,
                "cores": f"{row.get('physical_cores')}/{row.get('logical_cores')}",
                "outcomes": f"{row['ok']}/{row['pruned']}/{row['failed']}",
                "gpus": row.get("gpus") or "none",
                "improvement": improvement_cell(row)}
               for row in summaries]
    for label, key, fmt in COMPARE_ROWS:
        table.add_row(label, *(present(r.get(key), fmt) for r in derived))
    variables = dict.fromkeys(k for r in summaries for k in r if k.startswith("JARVIS_"))
    for name in variables:
        table.add_row(terminal(name), *(present(r.get(name), str) for r in summaries))
    return table


def improvement_cell(row: dict) -> str:
    """The speedup with its interval (or, for older studies, its range over rounds)."""
    if row.get("speedup") is None:
        return "-"
    if row.get("speedup_at_least"):
        return f"at least {row['speedup']:.2f}x (the defaults were stopped)"
    low, high = row.get("speedup_low"), row.get("speedup_high")
    if low is None or high is None or low != low:  # NaN: a study without an interval
        return f"{row['speedup']:.2f}x (range {row['speedup_min']:.2f}-{row['speedup_max']:.2f})"
    return f"{row['speedup']:.2f}x (95%: {low:.2f}-{high:.2f})"


def present(value: object, fmt) -> str:
    """A table cell: `-` for a missing value, else the formatted value as literal text."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return terminal(fmt(value))


def trials_table(trials: list[TrialRow], fields: list[str], objective: str = "score") -> Table:
    """A study's trials: outcome, score (and the study's own objective, when it is another),
    latency, and the settings each tried."""
    table = Table(title="Trials" if objective == "score" else
                  f"Trials (the study minimises {terminal(objective)})")
    value = () if objective == "score" else (f"value ({terminal(objective)})",)
    for name in ("#", "status", *value, "score", "mean", "p95", *fields):
        table.add_column(name, justify="right" if name != "status" else "left")
    for row in trials:
        status = str(row.status or row.state.lower())
        if row.label:
            status += f" ({row.label})"
        values = (present(row.value, seconds),) if value else ()
        table.add_row(str(row.trial), terminal(status), *values,
                      present(row.score_s, seconds), present(row.stats.mean_s, seconds),
                      present(row.stats.p95_s, seconds),
                      *(present(row.settings.get(f), str) for f in fields))
    return table


def importance_table(scores: dict[str, float], evaluator: str) -> Table:
    table = Table(title=f"Parameter importance ({terminal(evaluator)}, feasible trials)")
    table.add_column("setting")
    table.add_column("importance", justify="right")
    for name, value in scores.items():
        table.add_row(terminal(name), f"{value:.2f}")
    return table


def short_settings(settings: Settings, fields: tuple[str, ...] | list[str]) -> str:
    """`MODEL_CONTEXT_WINDOW=4096 N_THREADS=2 ...`: the tuned `fields` of a configuration."""
    return " ".join(f"{BY_FIELD[k].name.removeprefix('JARVIS_')}="
                    f"{format_value(settings.value(k))}" for k in fields if k in BY_FIELD)


def profiles_table(profiles: tuple[Profile, ...] | list[Profile],
                   fields: tuple[str, ...] | list[str]) -> Table:
    """The study's profiles: `autotune export STUDY --profile NAME` writes each."""
    table = Table(title="Profiles (autotune export STUDY --profile NAME)")
    for column in ("profile", "configuration", "latency", "peak memory", "confirmed"):
        table.add_column(column, justify="right" if column in ("latency", "peak memory")
                         else "left")
    for profile in profiles:
        where = profile.label or f"trial {profile.trial_number}"
        confirmed = (f"yes, {profile.rounds} round{'s' if profile.rounds != 1 else ''}"
                     if profile.confirmed else f"no: {profile.search_run}")
        table.add_row(profile.name,
                      terminal(f"{where}: {short_settings(profile.settings, fields)}"),
                      seconds(profile.shown_value_s), mebibytes(profile.shown_memory_bytes),
                      confirmed)
    return table


def front_table(points: list[Point], profiles: dict[str, Profile],
                fields: tuple[str, ...] | list[str]) -> Table:
    """The feasible trials no other beats on both latency and peak memory, and the
    profiles' (a winner chosen for its larger window need not be on the front)."""
    table = Table(title="Latency against peak memory: the front and the profiles (fastest "
                  "first)")
    for column in ("trial", "value", "peak memory", "profile", "configuration"):
        table.add_column(column, justify="right" if column != "configuration" else "left")
    for point in points:
        names = ", ".join(n for n, p in profiles.items()
                          if p.trial_number == point.trial_number)
        value = seconds(point.value_s)
        if point.estimated_from:
            value = f"~{value} (pruned: {point.estimated_from} requests)"
        table.add_row(str(point.trial_number), value,
                      mebibytes(point.memory_bytes), names,
                      terminal(short_settings(point.settings, fields)))
    return table
