"""The command line: parse arguments, call the library, print. `autotune MODEL` tunes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from autotune.errors import AutotuneError, Option
from autotune.measure import bench as bench_lib
from autotune.measure.machine_lock import Holder, MachineLock
from autotune.measure.records import StudyEvidence
from autotune.measure.scoring import Weights
from autotune.measure.settings import Settings, load_env_file
from autotune.measure.trial import BUSY_PERCENT
from autotune.measure.workload import load_workload
from autotune.report import print_bench, print_tune
from autotune.safe_text import is_visible, terminal, visible
from autotune.search.events import (
    AnchorChecked,
    BusyTrial,
    ConfirmEnded,
    ProgressEvent,
    Started,
    TrialEnded,
    Waiting,
)
from autotune.search.space import parse_fixes

err_console = Console(stderr=True)
STUDIES_ENV = "AUTOTUNE_STUDIES"
# The library's settings whose flag is not `--` and the name with `-` for `_`; a setting's
# bool is the value its flag sets (wait=False is --no-wait).
FLAGS = {"fmt": "--format", "trial_number": "--trial", "fixes": "--fix", "wait": "--no-wait"}


def flag(option: Option) -> str:
    """A library setting named in an error, as this command line spells it: `--out FILE`."""
    name = FLAGS.get(option.name, "--" + option.name.replace("_", "-"))
    if option.value is None or isinstance(option.value, bool):
        return name
    return f"{name} {option.value}"


class DefaultGroup(click.Group):
    """A group that runs `default_command` when the first argument names no command."""

    def __init__(self, *args: Any, default_command: str = "tune", **kwargs: Any) -> None:
        # click.Group's own arguments, passed through as they came
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args.insert(0, self.default_command)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        """The one place errors become exit statuses: the library raises, the CLI decides.

        An AutotuneError is one line on stderr and its `exit_status`: 2 for bad input, 1
        for a measurement that failed or a machine that is busy, 75 for a study that could
        not be saved mid-run (run the same command again once it can be).
        """
        try:
            return super().invoke(ctx)
        except AutotuneError as err:
            # messages quote file and study names, which may hold any character
            click.echo(f"autotune: error: {visible(err.render(flag))}", err=True)
            ctx.exit(err.exit_status)


@dataclass(frozen=True)
class Bar:
    """One command's progress bar: moved on by each request, or by each tuning event."""

    progress: Progress
    task: TaskID

    def advance(self, _event: object = None) -> bool:
        """One step on (an `on_request` callback: False, never stop the trial)."""
        self.progress.advance(self.task)
        return False

    def on_event(self, event: ProgressEvent) -> None:
        print_event(self.progress, self.task, event)


@contextmanager
def progress_bar(description: str, total: int, remaining: bool = True) -> Iterator[Bar]:
    """The progress bar of every command: on stderr when it is a terminal (disabled
    otherwise), gone when done; the time left shown unless not `remaining`."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), *([TimeRemainingColumn()] if remaining else [])]
    progress = Progress(*columns, console=err_console, transient=True,
                        disable=not err_console.is_terminal)
    with progress:
        yield Bar(progress, progress.add_task(description, total=total))


def settings_from(env_file: str | None) -> Settings:
    """Settings from --env FILE when given, else from the environment (else defaults)."""
    return load_env_file(env_file) if env_file else Settings.from_env()


def no_wait_option(command: Callable) -> Callable:
    return click.option("--no-wait", is_flag=True,
                        help="If another autotune is measuring on this machine, exit (status "
                             "1) instead of waiting for it: two measurements at once on the "
                             "same cores slow each other many times over.")(command)


def say_waiting(holder: Holder) -> None:
    err_console.print(waiting_line(holder.describe()), markup=False)


def waiting_line(holder: str) -> str:
    return (f"waiting for the machine, held by {holder} (one measurement at a time, "
            "served in the order asked; --no-wait exits instead)")


def study_evidence(study_name: str | None, env_file: str | None, settings: Settings,
                   studies_dir: str | None, storage: str | None) -> StudyEvidence | None:
    """What a kept study measured, for bench's diagnosis: --study NAME (which must exist),
    else the study the --env file's header names, when the storage holds it (None if not)."""
    from autotune.studies.explain import evidence_for
    from autotune.studies.export import named_study
    from autotune.studies.storage import load_study, study_names

    if study_name is not None:
        loaded = load_study(study_name, open_studies(studies_dir, storage))
        return evidence_for(loaded, settings)
    named = named_study(env_file) if env_file else None
    if named is None:
        return None
    try:
        where = open_studies(studies_dir, storage)
        found = named in study_names(where)
    except AutotuneError:
        found = False
    if not found:
        err_console.print(f"note: {visible(env_file)} names study {visible(repr(named), 80)}, "
                          "which this storage does not hold; the diagnosis is not checked "
                          "against it", markup=False)
        return None
    return evidence_for(load_study(named, where), settings)


def storage_options(command: Callable) -> Callable:
    """--studies-dir and --storage, the same on every command that reads or writes studies."""
    command = click.option("--storage", metavar="URL",
                           help="Any Optuna storage URL (sqlite:///x.db, postgresql://...) or "
                                "a journal file path, instead of --studies-dir.")(command)
    return click.option("--studies-dir", metavar="DIR",
                        help=f"Folder of the embedded study journal  [default: "
                             f"${STUDIES_ENV}, else studies]")(command)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autotune")
def cli() -> None:
    """Measure, don't guess: tune a local GGUF assistant backend's JARVIS_* settings.

    `autotune MODEL.gguf` runs the tuner (the `tune` command); `autotune bench MODEL.gguf`
    measures one configuration; `compare`, `show` and `export` read kept studies;
    `autotune check FILE MODEL` says whether a tuned file still beats the guide's defaults.
    """
    quiet_libraries()


def quiet_libraries() -> None:
    """Our own lines report each trial; Optuna's log and API-maturity notes are noise here."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Attempting to set identical")


def out_console() -> Console:
    """stdout; wide when it is a file or a pipe, so tables are not cut to 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--env", "env_file", metavar="FILE",
              help="Settings from this .env or export file (default: the environment).")
@click.option("--iterations", default=1, show_default=True, type=click.IntRange(1),
              help="Passes over the workload; two or more show drift and memory growth.")
@click.option("--concurrent", is_flag=True, help="Send requests from several clients at once.")
@click.option("--clients", default=bench_lib.DEFAULT_CLIENTS, show_default=True,
              type=click.IntRange(1), help="Client threads with --concurrent.")
@click.option("--workload", "workload_file", metavar="FILE",
              help="Conversations as JSONL (default: the built-in assistant workload).")
@click.option("--tokens", default=bench_lib.DEFAULT_TOKENS, show_default=True,
              type=click.IntRange(1), help="Tokens generated per request.")
@click.option("--timeout", default=1800.0, show_default=True, type=click.FloatRange(1),
              help="Wall-clock limit for the trial, seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--study", "study_name", metavar="NAME",
              help="Check the diagnosis's fixes against what this kept study measured  "
                   "[default: the study named in the --env file's header, when the storage "
                   "holds it]")
@storage_options
@no_wait_option
def bench(model: str, env_file: str | None, iterations: int, concurrent: bool, clients: int,
          workload_file: str | None, tokens: int, timeout: float, as_json: bool,
          study_name: str | None, studies_dir: str | None, storage: str | None,
          no_wait: bool) -> None:
    """Latency test of one configuration of the backend (the guide's test_latency.py).

    Loads MODEL in a fresh worker process with the JARVIS_* settings, replays the
    workload, and reports latency statistics, the guide's targets and a diagnosis of
    which spike causes show.

    \b
    Examples:
      autotune bench model.gguf --iterations 5     # drift and memory growth over 5 passes
      autotune bench model.gguf --env jarvis.env   # the settings a tuning run wrote
      autotune bench model.gguf --concurrent --json
      autotune bench model.gguf --env jarvis.env --study MODEL@CLASS --studies-dir studies

    A fix that a study measured slower is not advised: the diagnosis says what the study
    measured instead (the study is --study, else the one the --env file's header names).
    Without a study, turning on a setting that is off is something to try and measure.

    Exit status: 0 measured, 1 the trial itself failed (or --no-wait found the machine
    busy), 2 bad input.
    """
    settings = settings_from(env_file)
    workload = load_workload(workload_file)
    clients = clients if concurrent else 1
    evidence = study_evidence(study_name, env_file, settings, studies_dir, storage)
    with progress_bar("bench", len(workload.requests) * iterations, remaining=False) as bar:
        report = bench_lib.bench(model, settings, workload, iterations=iterations,
                                 clients=clients, tokens_per_request=tokens,
                                 timeout_s=timeout, on_request=bar.advance,
                                 lock=MachineLock(wait=not no_wait, on_wait=say_waiting),
                                 evidence=evidence)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_bench(out_console(), report)
    if not report.ok:
        raise click.exceptions.Exit(1)


def studies_folder(studies_dir: str | None, storage: str | None) -> str | None:
    """--studies-dir, else $AUTOTUNE_STUDIES unless --storage names another storage."""
    if studies_dir or storage:
        return studies_dir
    return os.environ.get(STUDIES_ENV) or None


def print_event(progress: Progress, task: TaskID, event: ProgressEvent) -> None:
    """One line per finished trial or confirmation run, and the bar moved on.

    Names, notes and reasons can quote the model file: each goes through `terminal`, so
    brackets print as they are and control characters as visible escapes.
    """
    log = progress.console.print
    if isinstance(event, Waiting):
        log(waiting_line(event.holder), markup=False)
    elif isinstance(event, Started):
        verb = "resuming" if event.resumed else "starting"
        log(f"{verb} study {terminal(event.study)} in {terminal(event.storage)}")
        for note in event.notes:
            log(f"  note: {terminal(note)}")
    elif isinstance(event, TrialEnded):
        if event.value is not None:
            value = f"{event.objective} {event.value:.3f} s"
        elif event.infeasible:
            value = f"infeasible, {terminal(event.infeasible)}"
        else:
            value = terminal(f"{event.status or event.state.lower()}: {event.reason}")
        label = f" ({terminal(event.label)})" if event.label else ""
        best = f"{event.best:.3f} s" if event.best is not None else "-"
        params = terminal(", ".join(f"{k}={v}" for k, v in event.params.items()))
        others = event.other_cpu_percent
        busy = (f" [yellow]machine busy: others used {others:.0f}% of a core[/]"
                if others is not None and others > BUSY_PERCENT else "")
        log(f"trial {event.number}{label}: {value} ({params}){busy}")
        progress.update(task, completed=event.done, total=event.total,
                        description=f"trial {event.done}/{event.total}, best {best}")
    elif isinstance(event, AnchorChecked):
        again = (f"; trials {', '.join(map(str, event.requeued))} measured again"
                 if event.requeued else "")
        log(f"drift anchor (trial {event.anchor_trial}'s configuration): {event.ratio:.2f}x "
            f"its first run, {'drifted' if event.drifted else 'steady'}{again}")
    elif isinstance(event, BusyTrial):
        used = (f"other processes used {event.other_cpu_percent:.0f}% of a core while it ran "
                f"(more than --busy-limit {event.limit:g})")
        if event.remeasured:
            log(f"trial {event.number}: {used}; measuring it again now")
        else:
            log(f"trial {event.number}: {used}, as its first run did: the load is the "
                "machine's own, and later trials are kept as measured")
    elif isinstance(event, ConfirmEnded):
        if event.done == 1:
            progress.update(task, completed=0)
        value = f"{event.value:.3f} s" if event.value is not None else event.status
        log(f"confirm {event.done}/{event.total}: {terminal(event.label)}: "
            f"{terminal(value)}")
        progress.update(task, completed=event.done, total=event.total,
                        description=f"confirming {event.done}/{event.total}")


def check_study_name(name: str | None) -> None:
    """A study name is shown, typed back and written into export headers: visible text only."""
    if name is not None and (not name.strip() or not is_visible(name)):
        raise AutotuneError(f"--study-name {visible(repr(name), 80)}: use visible characters "
                            "only (no newline, tab, escape or other control character)")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--budget", "budget_text", metavar="DURATION",
              help="Wall-clock time for the whole command, search and confirmation together, "
              "e.g. 45s, 10m, 1h30m. The first trial measures what a run costs here; then "
              "the tuner plans the trials, finalists and rounds that fit (a budget that "
              "cannot buy a confirmed winner is said after the first requests, and nothing "
              "is written). Without --trials the default is 5m; with --trials and no "
              "--budget, the count is run whatever it takes.")
@click.option("--trials", type=click.IntRange(1), default=None,
              help="Trials to run now (a resumed study adds these to those it has)  "
              "[default: 5, fewer when the budget runs short]")
@click.option("--timeout", type=click.FloatRange(1), default=None,
              help="Wall-clock limit for the search alone, seconds; the search stops at it "
              "or at the budget's plan, whichever comes first.")
@click.option("--seed", type=int, default=None, help="Seed of the sampler and of the "
              "confirmation order, for a reproducible search.")
@click.option("--workload", "workload_file", metavar="FILE",
              help="Conversations as JSONL (default: the built-in assistant workload).")
@click.option("--tokens", default=bench_lib.DEFAULT_TOKENS, show_default=True,
              type=click.IntRange(1), help="Tokens generated per request.")
@click.option("--concurrent", is_flag=True, help="Measure with several clients at once.")
@click.option("--clients", default=bench_lib.DEFAULT_CLIENTS, show_default=True,
              type=click.IntRange(1), help="Client threads with --concurrent.")
@click.option("--extended", is_flag=True,
              help="Also search n_batch, n_ubatch, flash attention and the f16 KV cache.")
@click.option("--fix", "fixes", multiple=True, metavar="NAME=VALUE",
              help="Pin a setting instead of searching it, e.g. --fix n_threads=4 (repeatable).")
@click.option("--min-context", default=4096, show_default=True, type=click.IntRange(512),
              metavar="N", help="Smallest context window the study may choose, tokens. The "
              "workload is a sample: a longer real conversation overflows a smaller window "
              "and drops history, so the floor is the guide's window (lowered, and said so, "
              "only when the model's trained context or the memory cannot hold it); pass "
              "--min-context 512 to let the study go lower.")
@click.option("--no-warm-start", is_flag=True, help="Start a new study from the guide's "
              "baselines alone; by default the winners of earlier studies of similar models "
              "(same architecture, size within 2x) on this kind of machine are tried next.")
@click.option("--anchor-every", default=4, show_default=True, type=click.IntRange(0),
              metavar="N", help="Every N trials, re-run the drift anchor (the faster "
              "baseline's first requests); trials measured while the machine drifted "
              "beyond its own run-to-run spread are measured again. 0: never.")
@click.option("--busy-limit", default=BUSY_PERCENT, show_default=True,
              type=click.FloatRange(0), metavar="PERCENT",
              help="Measure a trial again at once when other processes used more than "
              "PERCENT of one core while it ran, and rank only the quiet run (0: never). "
              "When the run again is as busy, the load is the machine's own: later trials "
              "are kept as measured.")
@click.option("--finalists", default=3, show_default=True, type=click.IntRange(1),
              help="Best trials re-measured against the guide's defaults.")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1),
              help="Interleaved confirmation rounds.")
@click.option("--no-racing", is_flag=True, help="Run every finalist every round; by "
              "default a finalist clearly slower than the leader request for request "
              "(Wilcoxon p<0.01, median over 3% behind) runs no further round.")
@click.option("--spike-weight", default=Weights.spike_weight, show_default=True,
              type=click.FloatRange(0), help="Score weight of spike excess latency.")
@click.option("--spike-factor", default=Weights.spike_factor, show_default=True,
              type=click.FloatRange(1), help="A request over this many medians is a spike.")
@click.option("--cv-weight", default=Weights.cv_weight, show_default=True,
              type=click.FloatRange(0), help="Score weight of std/mean above 0.5.")
@click.option("--trial-timeout", default=None, type=click.FloatRange(1),
              help="Wall-clock limit of one trial, seconds  [default: follows what runs cost "
              "here: 30 min until one has ended, then 4 typical runs, 5-30 min; never past "
              "the --budget]")
@click.option("--objective", type=click.Choice(["score", "p95", "p99", "ttft", "mean"]),
              default="score", show_default=True,
              help="What the study minimises and confirmation picks the winner by: score "
                   "(mean latency + spike and consistency penalties), p95 or p99 latency, "
                   "ttft (mean time to first token) or mean latency. Pruning: score and "
                   "mean compare each request's latency with the best trial's (Wilcoxon), "
                   "ttft each request's time to first token; p95 and p99 are no per-request "
                   "quantity, so a trial is stopped only once its final percentile must "
                   "exceed the best feasible trial's, whatever its remaining requests take.")
@click.option("--target", "targets", multiple=True, metavar="METRIC<=LIMIT",
              help="A limit the winner must meet, e.g. 'p95<=1.5s' or 'ttft_p95<300ms' "
                   "(repeatable; metrics mean, p50, p95, p99, max, ttft_p95 in s or ms, cv "
                   "without a unit). A trial that misses one is infeasible; when none meets "
                   "them, nothing is written and the exit status is 1.")
@click.option("--max-memory", metavar="SIZE", help="Budget for the worker's peak resident "
              "memory, e.g. 6GiB or 800MB (B, KiB, MiB, GiB, KB, MB, GB).")
@click.option("--max-gpu-memory", metavar="SIZE", help="Budget for the worker's peak GPU "
              "memory over all offload devices, e.g. 10GiB: layers that would not fit in it "
              "are not searched (noted as not applying on a machine without GPU offload).")
@click.option("--gpu-margin", default="1GiB", show_default=True, metavar="SIZE",
              help="Memory left free on each offload device, for llama.cpp's compute "
              "buffers and other programs: only layers that fit in the rest are searched.")
@click.option("--study-name", help="Study to create or resume  [default: MODEL@CLASS, the "
              "kind of machine, shared by every host of that kind]")
@storage_options
@click.option("--out", default="jarvis.env", show_default=True, metavar="FILE",
              help="Where to write the export script.")
@click.option("--format", "fmt", type=click.Choice(["shell", "dotenv"]), default="shell",
              show_default=True, help="shell: export NAME='value'; dotenv: NAME=value.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary instead of tables.")
@no_wait_option
def tune(model: str, budget_text: str | None, trials: int | None, timeout: float | None,
         seed: int | None,
         workload_file: str | None, tokens: int, concurrent: bool, clients: int,
         extended: bool, fixes: tuple[str, ...], min_context: int, no_warm_start: bool,
         anchor_every: int, busy_limit: float, finalists: int, rounds: int,
         no_racing: bool, spike_weight: float, spike_factor: float, cv_weight: float,
         trial_timeout: float | None, objective: str, targets: tuple[str, ...],
         max_memory: str | None, max_gpu_memory: str | None, gpu_margin: str,
         study_name: str | None,
         studies_dir: str | None, storage: str | None, out: str, fmt: str, force: bool,
         as_json: bool, no_wait: bool) -> None:
    """Find the fastest steady JARVIS_* settings for MODEL on this machine.

    Runs an Optuna study (each candidate a latency trial in its own process), re-measures
    the best few against the guide's defaults, and writes the winner to --out as a
    script to source. Running the same command again resumes the study.

    \b
    Examples:
      autotune model.gguf                            # up to 5 trials in 5m, ./jarvis.env
      autotune model.gguf --budget 20m               # what fits in 20 minutes
      autotune model.gguf --trials 30 --timeout 900  # 30 more trials, the search <= 900 s
      autotune model.gguf --fix n_threads=4 --format dotenv --out jarvis.conf
      autotune model.gguf --min-context 8192         # promise longer conversations
      autotune model.gguf --study-name fresh --no-warm-start
      autotune model.gguf --objective p95 --target 'p95<=1.5s' --study-name fast-tail
      autotune model.gguf --max-memory 6GiB --target 'ttft_p95<300ms' --study-name laptop

    A study keeps its objective, targets and budgets: resuming it with others is refused
    (give another --study-name).

    Exit status: 0 written, 1 no trial or finalist finished or met the targets (or
    --no-wait found the machine busy), 2 bad input, 75 the study could not be saved
    mid-run (a full disk, a read-only folder): what it kept is safe; free space or make
    the folder writable, and run the same command again to resume.
    """
    from autotune.measure.goals import parse_size
    from autotune.search.budget import DEFAULT_BUDGET_S, parse_duration
    from autotune.search.tune import TuneOptions
    from autotune.search.tune import tune as tune_lib

    check_study_name(study_name)
    goals = goals_from(objective, targets, max_memory, max_gpu_memory)
    budget_s = parse_duration(budget_text) if budget_text is not None else (
        DEFAULT_BUDGET_S if trials is None else None)
    trials = trials or TuneOptions.trials
    options = TuneOptions(
        trials=trials, timeout_s=timeout, budget_s=budget_s, seed=seed,
        workload=load_workload(workload_file),
        tokens_per_request=tokens, clients=clients if concurrent else 1, extended=extended,
        fixed=parse_fixes(fixes), finalists=finalists, rounds=rounds,
        weights=Weights(spike_weight=spike_weight, spike_factor=spike_factor,
                        cv_weight=cv_weight), goals=goals,
        trial_timeout_s=trial_timeout, study_name=study_name,
        studies_dir=studies_folder(studies_dir, storage),
        storage=storage, out=out, fmt=fmt, force=force, wait=not no_wait,
        min_context=min_context, warm_start=not no_warm_start, anchor_every=anchor_every,
        busy_limit=busy_limit,
        racing=not no_racing, gpu_margin=parse_size(gpu_margin, "gpu_margin"))
    with progress_bar(f"trial 0/{trials}", trials) as bar:
        report = tune_lib(model, options, on_event=bar.on_event)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_tune(out_console(), report)


def goals_from(objective: str, targets: tuple[str, ...], max_memory: str | None,
               max_gpu_memory: str | None):
    """The tune command's goals; a bad target or size is one line, exit status 2."""
    from autotune.measure.goals import Goals, Objective, Target, parse_size

    return Goals(objective=Objective(objective),
                 targets=tuple(Target.parse(t) for t in targets),
                 max_memory_bytes=parse_size(max_memory) if max_memory else None,
                 max_gpu_memory_bytes=(parse_size(max_gpu_memory, "max_gpu_memory")
                                       if max_gpu_memory else None))


def open_studies(studies_dir: str | None, storage: str | None):
    from autotune.studies.storage import open_storage

    return open_storage(studies_folder(studies_dir, storage), storage, create=False)


@cli.command()
@click.argument("studies", nargs=-1)
@storage_options
@click.option("--plot", metavar="FILE", help="Write a figure of latency distributions and "
              "best settings: .png (matplotlib) or .html (plotly).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON records.")
def compare(studies: tuple[str, ...], studies_dir: str | None, storage: str | None,
            plot: str | None, as_json: bool) -> None:
    """Studies side by side: hardware, workload, winner, improvement, best settings.

    Compares the named STUDIES, or every study in the storage when none is named.

    \b
    Examples:
      autotune compare
      autotune compare a@host b@host --plot cmp.png
      autotune compare --storage sqlite:///studies.db --json
    """
    from autotune.report import compare_table
    from autotune.studies.records import output
    from autotune.studies.storage import study_names
    from autotune.studies.tables import selected, summary_row

    where = open_studies(studies_dir, storage)
    loaded = selected(where, studies or None)
    if not loaded:
        raise AutotuneError(f"no studies in the storage (known: {study_names(where) or 'none'})")
    if plot:
        from autotune.studies.plots import compare_figure, kind_of

        kind_of(plot)
        compare_figure(loaded, plot)
    rows = [summary_row(s).flat() for s in loaded]
    if as_json:
        click.echo(json.dumps(output("compare", studies=rows), indent=2, default=str))
    else:
        out_console().print(compare_table(rows))
        if plot:
            out_console().print(f"Wrote {terminal(plot)}")


@cli.command()
@click.argument("study")
@storage_options
@click.option("--plots", "plot_dir", metavar="DIR", help="Write the optimisation history, "
              "slice and parallel-coordinate plots into DIR.")
@click.option("--plot-format", type=click.Choice(["html", "png"]), default="html",
              show_default=True, help="Format of --plots files.")
@click.option("--json", "as_json", is_flag=True, help="Print trials and importances as JSON.")
def show(study: str, studies_dir: str | None, storage: str | None, plot_dir: str | None,
         plot_format: str, as_json: bool) -> None:
    """A study's trials, its parameter importances, its latency-memory front and profiles,
    and on request its plots.

    \b
    Examples:
      autotune show MODEL@CLASS
      autotune show MODEL@CLASS --plots plots/ --plot-format png
      autotune show MODEL@CLASS --json
    """
    from autotune.report import (
        front_table,
        importance_table,
        print_explanation,
        seconds,
        trials_table,
    )
    from autotune.studies.explain import explanation
    from autotune.studies.profiles import front, points_of, unconfirmed_profiles
    from autotune.studies.records import StudyRecord, output
    from autotune.studies.storage import load_study
    from autotune.studies.tables import importance_report, trial_row

    loaded = load_study(study, open_studies(studies_dir, storage))
    record = StudyRecord.read(loaded)
    profiles = record.profiles or unconfirmed_profiles(loaded)
    points = points_of(loaded)
    chosen = {p.trial_number for p in profiles.values()}  # the winner need not be on it
    line = sorted({*front(points), *(p for p in points if p.trial_number in chosen)},
                  key=lambda p: (p.value_s, p.memory_bytes))
    rows = [trial_row(t, study) for t in loaded.get_trials(deepcopy=False)]
    importance = importance_report(loaded)
    scores = importance.scores
    written = []
    if plot_dir:
        from autotune.studies.plots import study_plots

        written = study_plots(loaded, plot_dir, plot_format)
    if as_json:
        click.echo(json.dumps(output("show", study=study, schema=record.schema,
                                     trials=[row.flat() for row in rows],
                                     importances=scores,
                                     importance_evaluator=importance.evaluator,
                                     importance_caveats=importance.caveats,
                                     winner=record.winner, front=line, profiles=profiles,
                                     explanation=explanation(loaded, record),
                                     anchors=record.anchors,
                                     plots=[str(p) for p in written]),
                              indent=2, default=str))
        return
    console = out_console()
    objective = str(record.goals.objective) if record.goals else "score"
    console.print(trials_table(rows, list(record.tuned_fields), objective))
    if scores:
        console.print(importance_table(scores, importance.evaluator))
        for caveat in importance.caveats:
            console.print(f"  caveat ({importance.evaluator}): {caveat}", markup=False)
    else:
        console.print("Parameter importance: needs at least 3 finished trials that differ.")
    if line:
        console.print(front_table(line, profiles, record.tuned_fields))
    if record.winner:
        console.print(f"Confirmed winner: {terminal(record.winner.label)}, score "
                      f"{terminal(seconds(record.winner.score_s))}")
        print_explanation(console, explanation(loaded, record))
    if record.anchors:
        from autotune.search.drift import describe

        console.print(f"Search: {terminal(describe(record.anchors))}.")
    for path in written:
        console.print(f"Wrote {terminal(path)}")


@cli.command(name="export")
@click.argument("study")
@storage_options
@click.option("--trial", "trial_number", type=int, default=None,
              help="Export this trial's settings instead of the confirmed winner.")
@click.option("--profile", type=click.Choice(["fast", "balanced", "lean"]), default=None,
              help="Export a profile of the study's latency-memory front instead: fast (the "
                   "confirmed winner), balanced (the knee) or lean (the least peak memory). "
                   "The header says whether it was re-measured in confirmation.")
@click.option("--out", metavar="FILE", help="Write here (default: print to stdout).")
@click.option("--format", "fmt", type=click.Choice(["shell", "dotenv"]), default="shell",
              show_default=True, help="shell: export NAME='value'; dotenv: NAME=value.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def export_command(study: str, studies_dir: str | None, storage: str | None,
                   trial_number: int | None, profile: str | None, out: str | None, fmt: str,
                   force: bool) -> None:
    """Re-export a study's winner (or any trial) as the export script, running nothing.

    \b
    Examples:
      autotune export MODEL@CLASS --out jarvis.env
      autotune export MODEL@CLASS --trial 7 --format dotenv
      autotune export MODEL@CLASS --profile lean --out jarvis-lean.env
    """
    from autotune.studies import export
    from autotune.studies.storage import load_study

    loaded = load_study(study, open_studies(studies_dir, storage))
    if out:
        export.check_writable(out, force)
    text = export.export_text(loaded, trial_number, fmt, profile=profile)
    if out:
        export.write(out, text, force)
        click.echo(f"Wrote {visible(out)}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command(name="check")
@click.argument("file")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1),
              help="Interleaved rounds of the file and the guide's defaults.")
@click.option("--tokens", type=click.IntRange(1), default=None,
              help="Tokens generated per request  [default: the study's, else "
                   f"{bench_lib.DEFAULT_TOKENS}]")
@click.option("--workload", "workload_file", metavar="FILE",
              help="Conversations as JSONL (default: the built-in assistant workload); "
                   "pass the study's own, if it was tuned on one.")
@click.option("--trial-timeout", default=None, type=click.FloatRange(1),
              help="Wall-clock limit of one run, seconds  [default: 30 min until one has "
              "ended, then 4 typical runs, 5-30 min]")
@click.option("--study", "study_name", metavar="NAME",
              help="The study to hold the file against  [default: the one its header names]")
@storage_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@no_wait_option
def check_command(file: str, model: str, rounds: int, tokens: int | None,
                  workload_file: str | None, trial_timeout: float | None,
                  study_name: str | None,
                  studies_dir: str | None, storage: str | None, as_json: bool,
                  no_wait: bool) -> None:
    """Does a tuned FILE still beat the guide's defaults on MODEL, here and now?

    Re-measures FILE (an export script `autotune MODEL` or `autotune export` wrote) and
    the guide's defaults, interleaved over --rounds, and says in one line whether the
    improvement holds: its re-measured interval still reaches the low end of the spread
    its study recorded (the study its header names, or --study) and the file is
    measurably faster than the defaults; with no study to be found, measurably faster.
    It notes when llama-cpp-python, the model file or the kind of machine changed since
    the study, and when FILE differs from the study's winner.
    What to run after an upgrade, or from cron.

    \b
    Examples:
      autotune check jarvis.env model.gguf              # after upgrading llama-cpp-python
      autotune check jarvis.env model.gguf --rounds 4   # a tighter answer, twice the time
      autotune check jarvis.conf model.gguf --study MODEL@CLASS --storage sqlite:///s.db
      0 4 * * 1 autotune check ~/jarvis.env ~/models/m.gguf --no-wait --json >> check.log

    Exit status: 0 it holds, 1 it does not (or a run failed, or --no-wait found the
    machine busy), 2 bad input.
    """
    from autotune.report import print_check
    from autotune.search.check import CheckOptions
    from autotune.search.check import check as check_lib

    options = CheckOptions(
        rounds=rounds, tokens_per_request=tokens,
        workload=load_workload(workload_file) if workload_file else None,
        trial_timeout_s=trial_timeout, study_name=study_name,
        studies_dir=studies_folder(studies_dir, storage), storage=storage, wait=not no_wait)
    with progress_bar(f"checking 0/{2 * rounds}", 2 * rounds) as bar:
        report = check_lib(file, model, options, on_event=bar.on_event)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_check(out_console(), report)
    if not report.holds:
        raise click.exceptions.Exit(1)


def main() -> None:
    cli(prog_name="autotune")


if __name__ == "__main__":
    main()
