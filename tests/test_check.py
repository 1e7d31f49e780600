"""`autotune check FILE MODEL`: a tuned file re-measured against the guide's defaults."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import QUICK_STUDY, keep_study_record, make_hardware

from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.hardware import machine_class
from autotune.measure.settings import CORE_FIELDS, Settings
from autotune.search.check import CheckOptions, changes, find_study, verdict
from autotune.studies import export
from autotune.studies.records import Improvement, StudyRecord
from autotune.studies.storage import open_storage

Run = Callable[..., subprocess.CompletedProcess[str]]
ROUNDS = ("--rounds", "2")


def improvement(speedup: float, low: float | None, high: float | None = None) -> Improvement:
    return Improvement(speedup=speedup, speedup_min=speedup - 0.2, speedup_max=speedup + 0.2,
                       rounds=2, low=low, high=high if high is not None else low)


def write_export(path: Path, settings: Settings, study: str) -> Path:
    """An export file as `autotune export` writes it, its header naming `study`."""
    header = export.ExportHeader(model="SmolLM2", study=study, date="2026-11-25")
    path.write_text(export.render(settings, CORE_FIELDS, header), encoding="utf-8")
    return path


def hand_made_study(folder: Path, name: str, **changes: object) -> None:
    """A study in `folder`'s journal with the tuner's record (and `changes`), no trials."""
    study = optuna.create_study(study_name=name, storage=open_storage(folder))
    keep_study_record(study, tuned_fields=list(CORE_FIELDS), **changes)


# --- the verdict and the notes: pure logic --------------------------------------------

def test_it_holds_while_its_interval_reaches_the_recorded_low_end() -> None:
    recorded = improvement(2.5, low=2.0, high=3.0)
    assert verdict(improvement(1.9, low=1.5, high=2.0), recorded) == (True, 2.0)
    assert verdict(improvement(1.7, low=1.4, high=1.99), recorded) == (False, 2.0)
    # a median just under the recorded interval is one fresh A/B in twenty, not a change
    assert verdict(improvement(2.07, low=1.74, high=2.42), improvement(2.44, 2.11, 2.75)) \
        == (True, 2.11)
    # reaching it is not enough when the file is no longer measurably faster at all
    assert verdict(improvement(1.3, low=0.9, high=2.1), recorded) == (False, 2.0)


def test_an_older_study_without_an_interval_is_held_to_its_lowest_round() -> None:
    recorded = improvement(2.5, low=None)  # speedup_min 2.3
    assert verdict(Improvement(2.2, 2.0, 2.3, 2), recorded) == (True, 2.3)
    assert verdict(Improvement(2.1, 2.0, 2.2, 2), recorded) == (False, 2.3)


def test_without_a_study_it_holds_only_when_measurably_faster() -> None:
    assert verdict(improvement(1.5, low=1.1), None) == (True, 1.0)
    assert verdict(improvement(1.5, low=0.9), None) == (False, 1.0)
    assert verdict(None, None) == (False, None)


def test_a_study_that_never_showed_the_file_faster_is_no_bar_the_defaults_clear() -> None:
    recorded = improvement(1.36, low=0.83, high=2.08)
    assert verdict(improvement(1.05, low=0.71), recorded) == (False, 1.0)
    assert verdict(improvement(1.5, low=1.2), recorded) == (True, 1.0)


def test_what_changed_since_the_study_is_noted() -> None:
    study = optuna.create_study()
    keep_study_record(study, tuned_fields=list(CORE_FIELDS),
                      versions={"autotune": "0.1", "llama_cpp_python": "0.2.90",
                                "optuna": "4.5.0", "schema": "2"})
    record = StudyRecord.read(study)
    model = dataclasses.replace(record.model, fingerprint="0" * 16)
    notes = changes(record, model, machine_class(make_hardware(physical_cores=8)),
                    Settings(n_threads=2), "0.3.36")
    text = "\n".join(notes)
    assert "llama-cpp-python is 0.3.36 now, 0.2.90 when the study measured" in text
    assert "the model file differs from the study's" in text
    assert "physical cores: 8, not 2" in text
    assert "no confirmed winner" in text


def test_a_study_the_header_names_is_found_and_a_missing_one_is_a_note(tmp_path: Path
                                                                      ) -> None:
    hand_made_study(tmp_path / "studies", "known@box")
    for name in ("known@box", "gone@box"):
        write_export(tmp_path / f"{name}.env", Settings(n_threads=2), f"{name}, trial 1 (ok)")
    found, record, notes = find_study(tmp_path / "known@box.env",
                                      CheckOptions(studies_dir=str(tmp_path / "studies")))
    assert (found, record.measurement.tokens_per_request, notes) == ("known@box", 4, [])
    for folder in ("studies", "nowhere"):  # no such study; no storage at all
        found, record, (note,) = find_study(tmp_path / "gone@box.env",
                                            CheckOptions(studies_dir=str(tmp_path / folder)))
        assert (found, record) == (None, None)
        assert note.startswith("study 'gone@box', named in the file's header, is not in ")


def test_a_study_the_header_names_that_cannot_be_read_is_a_note(tmp_path: Path) -> None:
    hand_made_study(tmp_path / "studies", "new@box", schema=99)
    write_export(tmp_path / "jarvis.env", Settings(n_threads=2), "new@box, trial 1 (ok)")
    _, record, (note,) = find_study(tmp_path / "jarvis.env",
                                    CheckOptions(studies_dir=str(tmp_path / "studies")))
    assert record is None and "written by a newer autotune" in note


# --- bad input: one line, exit 2, before anything is measured ---------------------------

def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("autotune: error: ")
    return line


def test_a_missing_file_is_one_line(run_cli: Run, small_gguf: Path, tmp_path: Path) -> None:
    line = one_line_error(run_cli("check", "absent.env", str(small_gguf), cwd=tmp_path))
    assert "absent.env: not found" in line


@pytest.mark.parametrize("text", ["FOO=bar\n# a comment\n", "{\"json\": true}\n",
                                  "hello world\n"])
def test_a_file_that_is_no_export_is_one_line(run_cli: Run, small_gguf: Path, tmp_path: Path,
                                              text: str) -> None:
    (tmp_path / "notes.txt").write_text(text, encoding="utf-8")
    one_line_error(run_cli("check", "notes.txt", str(small_gguf), cwd=tmp_path))


def test_an_unknown_study_is_one_line(run_cli: Run, small_gguf: Path, tmp_path: Path) -> None:
    hand_made_study(tmp_path / "studies", "known@box")
    write_export(tmp_path / "jarvis.env", Settings(n_threads=2), "known@box, trial 1 (ok)")
    line = one_line_error(run_cli("check", "jarvis.env", str(small_gguf), "--study", "nope",
                                  "--studies-dir", "studies", cwd=tmp_path))
    assert "no study named 'nope'" in line and "known@box" in line


def test_a_study_asked_for_where_there_is_no_storage_is_one_line(
        run_cli: Run, small_gguf: Path, tmp_path: Path) -> None:
    write_export(tmp_path / "jarvis.env", Settings(n_threads=2), "x@box, trial 1 (ok)")
    line = one_line_error(run_cli("check", "jarvis.env", str(small_gguf), "--study", "x@box",
                                  "--studies-dir", "nowhere", cwd=tmp_path))
    assert "no studies at" in line


def test_help_has_examples(run_cli: Run, tmp_path: Path) -> None:
    done = run_cli("check", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "Examples:" in done.stdout and "cron" in done.stdout


# --- measured: the real model, a tiny workload -----------------------------------------

@pytest.fixture(scope="module")
def fresh_export(model_path: Path, tiny_workload_file: Path,
                 tmp_path_factory: pytest.TempPathFactory, run_cli: Run
                 ) -> tuple[Path, dict]:
    """A quick real study (confirmed over 2 rounds) and the export it wrote."""
    folder = tmp_path_factory.mktemp("check")
    quick = [*QUICK_STUDY]
    quick[quick.index("--rounds") + 1] = "2"
    done = run_cli(str(model_path), "--trials", "3", "--studies-dir", "studies",
                   "--out", "jarvis.env", "--workload", str(tiny_workload_file), *quick,
                   "--json", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder, json.loads(done.stdout)


@pytest.mark.slow
def test_a_fresh_export_holds(fresh_export, model_path: Path, tiny_workload_file: Path,
                              run_cli: Run) -> None:
    folder, tuned = fresh_export
    done = run_cli("check", "jarvis.env", str(model_path), *ROUNDS, "--workload",
                   str(tiny_workload_file), "--studies-dir", "studies", "--json", cwd=folder)
    report = json.loads(done.stdout)
    assert done.returncode == 0, report["verdict"]
    assert (report["kind"], report["holds"]) == ("check", True)
    assert report["study_name"] == tuned["study_name"]
    assert report["threshold"] == tuned["improvement"]["low"]
    assert report["tokens_per_request"] == 4  # the study's, not the default
    assert report["settings"] == tuned["best"]
    assert report["notes"] == []  # same model, machine, library, workload and settings
    assert [c["runs"] for c in report["candidates"]] == [2, 2]
    assert "confirm 4/4" in done.stderr  # one line per run


@pytest.mark.slow
def test_the_guide_defaults_do_not_hold(fresh_export, model_path: Path,
                                        tiny_workload_file: Path, run_cli: Run) -> None:
    folder, tuned = fresh_export
    write_export(folder / "defaults.env", Settings(**GUIDE_DEFAULTS),
                 f"{tuned['study_name']}, trial 0 (ok)")
    done = run_cli("check", "defaults.env", str(model_path), "--rounds", "3", "--workload",
                   str(tiny_workload_file), "--studies-dir", "studies", cwd=folder)
    assert done.returncode == 1, done.stdout
    verdict_line, *notes = done.stdout.splitlines()
    assert verdict_line.startswith("does not hold: defaults.env: speedup ")
    assert "JARVIS_N_THREADS=8 (winner: " in "".join(notes)


@pytest.mark.slow
def test_a_study_of_another_library_and_model_file_is_noted(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path, run_cli: Run) -> None:
    hand_made_study(tmp_path / "studies", "old@box",
                    versions={"autotune": "0.1", "llama_cpp_python": "0.2.90",
                              "optuna": "4.5.0", "schema": "2"})
    write_export(tmp_path / "jarvis.env", Settings(n_threads=2, context_window=2048),
                 "old@box, trial 3 (ok)")
    done = run_cli("check", "jarvis.env", str(model_path), "--rounds", "1", "--workload",
                   str(tiny_workload_file), "--studies-dir", "studies", "--json", cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    notes = "\n".join(report["notes"])
    assert "when the study measured" in notes and "0.2.90" in notes
    assert "the model file differs from the study's" in notes
    assert "no confirmed winner" in notes
    assert report["tokens_per_request"] == 4  # the hand-made study's


def test_the_modules_examples_run() -> None:
    import doctest

    import autotune.search.check as module

    result = doctest.testmod(module, raise_on_error=False, report=True)
    assert result.attempted > 0 and result.failed == 0
