"""The command line: parse arguments, call the library, print. `autotune MODEL` tunes."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autotune import bench as bench_lib
from autotune.errors import AutotuneError
from autotune.report import print_bench
from autotune.settings import Settings, load_env_file
from autotune.workload import load_workload

err_console = Console(stderr=True)


class DefaultGroup(click.Group):
    """A group that runs `default_command` when the first argument names no command."""

    def __init__(self, *args: object, default_command: str = "tune", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args.insert(0, self.default_command)
        return super().parse_args(ctx, args)


def user_errors(command: Callable) -> Callable:
    """Turn an AutotuneError into one line on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except AutotuneError as err:
            click.echo(f"autotune: error: {err}", err=True)
            raise click.exceptions.Exit(2) from None

    return wrapper


@contextmanager
def progress_bar(description: str, total: int):  # noqa: ANN201 - yields an advance callback
    """A progress bar on stderr when it is a terminal; a no-op callback otherwise."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err_console, transient=True,
                        disable=not err_console.is_terminal)
    with progress:
        task = progress.add_task(description, total=total)

        def advance(_event: object = None) -> bool:
            progress.advance(task)
            return False

        yield advance


def settings_from(env_file: str | None) -> Settings:
    """Settings from --env FILE when given, else from the environment (else defaults)."""
    return load_env_file(env_file) if env_file else Settings.from_env()


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autotune")
def cli() -> None:
    """Measure, don't guess: tune a local GGUF assistant backend's JARVIS_* settings.

    `autotune MODEL.gguf` runs the tuner (the `tune` command); `autotune bench MODEL.gguf`
    measures one configuration.
    """


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
@user_errors
def bench(model: str, env_file: str | None, iterations: int, concurrent: bool, clients: int,
          workload_file: str | None, tokens: int, timeout: float, as_json: bool) -> None:
    """Latency test of one configuration of the backend (the guide's test_latency.py).

    Loads MODEL in a fresh worker process with the JARVIS_* settings, replays the
    workload, and reports latency statistics, the guide's targets and a diagnosis of
    which spike causes show. Exits 1 when the trial itself failed.
    """
    from autotune.model import inspect_model

    inspect_model(model)
    settings = settings_from(env_file)
    workload = load_workload(workload_file)
    clients = clients if concurrent else 1
    with progress_bar("bench", len(workload.requests) * iterations) as advance:
        report = bench_lib.bench(model, settings, workload, iterations=iterations,
                                 clients=clients, tokens_per_request=tokens,
                                 timeout_s=timeout, on_request=advance)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        print_bench(Console(), report)
    if report["status"] != "ok":
        raise click.exceptions.Exit(1)


def main() -> None:
    cli(prog_name="autotune")


if __name__ == "__main__":
    sys.exit(main())
