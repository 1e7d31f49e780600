"""Options, help and exit statuses through click's CliRunner, where no model is needed."""

from __future__ import annotations

import re
from pathlib import Path

import click
import optuna
import pytest
from click.testing import CliRunner
from conftest import keep_study_record

import autotune
from autotune.cli import STUDIES_ENV, cli, flag
from autotune.errors import AutotuneError, MeasurementFailed, Option, StorageFailed
from autotune.measure.machine_lock import MachineBusy
from autotune.search.space import BASELINE_LABEL, parse_fixes
from autotune.studies import export
from autotune.studies.plots import compare_figure, latency_groups
from autotune.studies.storage import open_storage

COMMANDS = ("tune", "bench", "compare", "show", "export")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_shows_examples(runner: CliRunner, command: str) -> None:
    done = runner.invoke(cli, [command, "--help"])
    assert done.exit_code == 0
    examples = done.output.split("Examples:")[1].split("Options:")[0]
    assert examples.count("autotune ") >= 2


def test_exit_statuses_say_what_failed() -> None:
    assert AutotuneError("bad input").exit_status == 2
    assert MeasurementFailed("no trial finished").exit_status == 1
    assert MachineBusy("busy").exit_status == 1
    assert StorageFailed("disk full").exit_status == 75  # sysexits' EX_TEMPFAIL: run again


def test_the_library_names_its_parameters_and_the_cli_its_flags(
        runner: CliRunner, tmp_path: Path, small_gguf: Path) -> None:
    existing = tmp_path / "jarvis.env"
    existing.write_text("mine\n")
    with pytest.raises(AutotuneError) as caught:
        export.check_writable(existing, force=False)
    assert str(caught.value) == f"out={existing}: file exists; pass force=True to overwrite it"
    done = runner.invoke(cli, [str(small_gguf), "--out", str(existing)])
    assert done.exit_code == 2 and done.output == (
        f"autotune: error: --out {existing}: file exists; pass --force to overwrite it\n")

    with pytest.raises(AutotuneError) as caught:
        open_storage(tmp_path, "sqlite:///studies.db")
    assert str(caught.value) == "pass studies_dir or storage, not both"
    done = runner.invoke(cli, ["compare", "--studies-dir", str(tmp_path),
                               "--storage", "sqlite:///studies.db"])
    assert done.output == "autotune: error: pass --studies-dir or --storage, not both\n"

    with pytest.raises(AutotuneError) as caught:
        parse_fixes(["n_threads=many"])
    assert str(caught.value) == "JARVIS_N_THREADS='many' in fixes: expected a whole number"
    done = runner.invoke(cli, [str(small_gguf), "--fix", "n_threads=many"])
    assert done.output == ("autotune: error: JARVIS_N_THREADS='many' in --fix: expected a "
                           "whole number\n")


def test_a_setting_is_named_by_the_flag_that_sets_it() -> None:
    assert flag(Option("studies_dir")) == "--studies-dir"
    assert flag(Option("fmt", "yaml")) == "--format yaml"
    assert flag(Option("trial_number", "N")) == "--trial N"
    assert flag(Option("force", True)) == "--force"
    assert flag(Option("wait", False)) == "--no-wait"


def options_named_in_library_errors() -> set[str]:
    source = Path(autotune.__file__).parent
    return {name for path in source.rglob("*.py") if path.name != "cli.py"
            for name in re.findall(r'\bOption\("(\w+)"', path.read_text())}


def test_every_setting_a_library_error_names_is_a_flag_of_the_cli() -> None:
    flags = {opt for command in cli.commands.values() for param in command.params
             if isinstance(param, click.Option) for opt in param.opts}
    named = options_named_in_library_errors()
    assert {"out", "force", "storage", "studies_dir", "wait"} <= named
    assert {name: flag(Option(name)) for name in named
            if flag(Option(name)) not in flags} == {}


def test_a_user_error_is_one_line_and_status_2(runner: CliRunner, tmp_path: Path) -> None:
    done = runner.invoke(cli, ["show", "nope", "--studies-dir", str(tmp_path)])
    assert done.exit_code == 2
    assert done.output.count("\n") == 1 and done.output.startswith("autotune: error: ")


def test_studies_dir_comes_from_the_environment(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "team-studies"
    done = runner.invoke(cli, ["compare"], env={STUDIES_ENV: str(folder)})
    assert done.exit_code == 2
    assert str(folder / "autotune.journal") in done.output


def test_an_explicit_storage_wins_over_the_environment(runner: CliRunner,
                                                       tmp_path: Path) -> None:
    done = runner.invoke(cli, ["compare", "--storage", str(tmp_path / "other.journal")],
                         env={STUDIES_ENV: str(tmp_path / "team-studies")})
    assert done.exit_code == 2
    assert "other.journal" in done.output and "team-studies" not in done.output


def finished(number_of_latencies: float, label: str | None = None) -> optuna.trial.FrozenTrial:
    attrs = {"status": "ok", "latencies": [number_of_latencies] * 4,
             "settings": {"n_threads": 2}}
    if label:
        attrs["label"] = label
    return optuna.trial.create_trial(value=number_of_latencies, user_attrs=attrs)


def study_of(*trials: optuna.trial.FrozenTrial, name: str = "s") -> optuna.Study:
    study = optuna.create_study(study_name=name)
    study.add_trials(list(trials))
    keep_study_record(study, tuned_fields=["n_threads"])
    return study


def test_the_compare_box_is_the_confirmed_winner_when_there_is_one() -> None:
    study = study_of(finished(2.0, BASELINE_LABEL), finished(0.5), finished(0.7))
    study.set_user_attr("winner", {"label": "trial 2", "trial_number": 2,
                                   "settings": {"n_threads": 2}, "score_s": 0.7, "mean_s": 0.7,
                                   "improvement": None})
    (winner, defaults) = latency_groups(study)
    assert winner == ("s\nconfirmed winner (trial 2)", [0.7] * 4)
    assert defaults[0] == "s\nguide defaults"


def test_an_unconfirmed_study_says_its_box_is_the_best_search_trial() -> None:
    study = study_of(finished(2.0, BASELINE_LABEL), finished(0.5))
    labels = [label for label, _ in latency_groups(study)]
    assert labels[0] == "s\nbest search trial 1 (unconfirmed)"


@pytest.mark.parametrize("suffix", ["png", "html"])
def test_a_hostile_study_name_draws_literally(tmp_path: Path, suffix: str) -> None:
    # `$` starts matplotlib's mathtext (an unbalanced one raises); `<` starts HTML in plotly.
    name = "evil $x^{$ <script>alert(1)</script>\n"
    study = study_of(finished(0.5), name=name)
    out = compare_figure([study], tmp_path / f"cmp.{suffix}")
    data = out.read_bytes()
    assert data[:4] == b"\x89PNG" if suffix == "png" else b"&lt;script&gt;" in data
    if suffix == "html":
        assert b"<script>alert(1)" not in data
