"""Faults injected into a study the real tuner wrote: no fault loses a study.

Each fault is made certain: a torn record by truncating the journal, a tuner killed in
the middle of a write by the storage's fault switch, a full disk by RLIMIT_FSIZE, a
read-only folder by dropping root's power to ignore file modes. After each, the real
commands (`autotune MODEL` resuming, `compare`, `show`, `export`) run on the result.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import uuid
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import AUTOTUNE, CLI_TIMEOUT_S, QUICK_STUDY, clean_env
from mounts import read_only
from test_storage import backups, one_error_line, tear_last_record

from autotune.errors import StorageFailed
from autotune.studies.journal import FAULT_VARIABLE
from autotune.studies.storage import open_storage

pytestmark = pytest.mark.slow  # real tuning studies: `pytest -m "not slow"` skips them

QUICK = QUICK_STUDY
STUDY = "faults"


@pytest.fixture(scope="module")
def kept_study(model_path: Path, tiny_workload_file: Path,
               tmp_path_factory: pytest.TempPathFactory, run_cli) -> Path:
    """A studies folder holding one finished 2-trial study with a confirmed winner."""
    folder = tmp_path_factory.mktemp("kept") / "studies"
    done = run_cli(str(model_path), "--trials", "2", "--studies-dir", str(folder),
                   "--study-name", STUDY, "--workload", str(tiny_workload_file),
                   "--out", str(folder.parent / "j.env"), *QUICK, cwd=folder.parent)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture
def studies(kept_study: Path, tmp_path: Path) -> Path:
    """A private copy of the kept study, free to damage."""
    return Path(shutil.copytree(kept_study, tmp_path / "studies"))


def trials(folder: Path) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(storage=str(folder), create=False)
    return optuna.load_study(study_name=STUDY, storage=storage).get_trials()


def finished(folder: Path) -> dict[int, list | None]:
    return {t.number: t.user_attrs.get("latencies") for t in trials(folder)
            if t.state.is_finished()}


def tune_args(model_path: Path, workload: Path, folder: Path, count: int = 1) -> list[str]:
    return [str(model_path), "--trials", str(count), "--studies-dir", str(folder),
            "--study-name", STUDY, "--workload", str(workload),
            "--out", str(folder.parent / "resumed.env"), "--force", *QUICK]


def run_marked(args: list[str], cwd: Path, marker: str, preexec_fn=None,
               **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI with a marker in its environment, which every worker it starts inherits."""
    return subprocess.run([AUTOTUNE, *args], cwd=cwd, capture_output=True, text=True,
                          env=clean_env(AUTOTUNE_TEST_MARK=marker, **env),
                          preexec_fn=preexec_fn, timeout=CLI_TIMEOUT_S, check=False)


def strays(marker: str) -> list[psutil.Process]:
    """Processes still running that the marked command started (there must be none)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("AUTOTUNE_TEST_MARK") == marker:
                found.append(process)
        except psutil.Error:
            continue
    return found


def assert_no_strays(marker: str) -> None:
    # A worker whose tuner was killed sees its stdin close and exits; give it time to.
    _, alive = psutil.wait_procs(strays(marker), timeout=60)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"


def read_commands_work(folder: Path, run_cli) -> list[str]:
    """compare, show and export all succeed; returns their stderr lines."""
    lines = []
    for command in (("compare", "--json"), ("show", STUDY, "--json"),
                    ("export", STUDY, "--trial", "0")):
        done = run_cli(*command, "--studies-dir", str(folder), cwd=folder.parent)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        lines += done.stderr.strip().splitlines()
    return lines


def test_a_torn_record_then_a_resumed_run_keeps_every_trial(
        studies: Path, model_path: Path, tiny_workload_file: Path, run_cli) -> None:
    before = finished(studies)
    tear_last_record(studies / "autotune.journal")  # the winner, written last
    marker = uuid.uuid4().hex
    done = run_marked(tune_args(model_path, tiny_workload_file, studies), studies.parent,
                      marker)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "torn last record" in warnings[0]
    assert len(backups(studies)) == 1 and "Traceback" not in done.stderr
    assert_no_strays(marker)
    after = finished(studies)
    assert {n: after[n] for n in before} == before and len(after) == len(before) + 1
    assert not [line for line in read_commands_work(studies, run_cli) if "warning" in line]


def test_read_commands_repair_a_torn_record_once(studies: Path, run_cli) -> None:
    before = finished(studies)
    tear_last_record(studies / "autotune.journal", keep=0.3)
    warnings = [line for line in read_commands_work(studies, run_cli) if "warning" in line]
    assert len(warnings) == 1 and len(backups(studies)) == 1
    assert finished(studies) == before


@pytest.mark.parametrize("write", [1, 12], ids=["first-write", "mid-trial"])
def test_a_tuner_killed_mid_write_loses_no_trial(
        studies: Path, model_path: Path, tiny_workload_file: Path, write: int,
        run_cli) -> None:
    # Write 1 is the study's first attribute; write 12 falls while a worker is measuring.
    before = finished(studies)
    marker = uuid.uuid4().hex
    killed = run_marked(tune_args(model_path, tiny_workload_file, studies), studies.parent,
                        marker, **{FAULT_VARIABLE: f"torn-write:{write}"})
    assert killed.returncode == -9, killed.stderr
    assert_no_strays(marker)
    journal = studies / "autotune.journal"
    assert not journal.read_bytes().endswith(b"\n"), "the fault switch tore no record"
    holder = json.loads(Path(f"{journal}.lock").read_text())  # left by the killed tuner
    assert not psutil.pid_exists(holder["pid"]) or psutil.Process(
        holder["pid"]).create_time() != holder["started"]

    warnings = [line for line in read_commands_work(studies, run_cli) if "warning" in line]
    assert len(warnings) == 1 and len(backups(studies)) == 1
    assert {n: finished(studies)[n] for n in before} == before
    running = [t for t in trials(studies) if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) == (write > 1)  # killed inside a trial, or before one began

    marker = uuid.uuid4().hex
    resumed = run_marked(tune_args(model_path, tiny_workload_file, studies), studies.parent,
                         marker)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr and "warning" not in resumed.stderr
    assert_no_strays(marker)
    after = trials(studies)
    assert {n: finished(studies)[n] for n in before} == before
    assert not [t for t in after if t.state == optuna.trial.TrialState.RUNNING]
    assert len([t for t in after if t.user_attrs.get("status") == "ok"]) >= len(before) + 1


def ends_in_one_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The run's own progress lines come first; it ends in one error line, with the exit
    status of a study that could not be saved (75), and no traceback. Returns the line."""
    assert done.returncode == StorageFailed.exit_status, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert done.stderr.count("autotune: error:") == 1 and last.startswith("autotune: error:")
    for needle in ("cannot write to the study journal", "recorded before this are kept",
                   "run the same command again to resume", *needles):
        assert needle in last
    return last


def test_a_file_size_limit_mid_trial_ends_the_run_in_one_line_and_keeps_the_study(
        studies: Path, model_path: Path, tiny_workload_file: Path, run_cli) -> None:
    before = finished(studies)
    journal = studies / "autotune.journal"
    limit = journal.stat().st_size + 2500  # room for a few records, not a whole trial

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    marker = uuid.uuid4().hex
    done = run_marked(tune_args(model_path, tiny_workload_file, studies), studies.parent,
                      marker, preexec_fn=small_disk)
    ends_in_one_line(done, "File too large")
    assert_no_strays(marker)
    assert journal.read_bytes().endswith(b"\n") and journal.stat().st_size <= limit
    assert finished(studies) == before
    assert not [line for line in read_commands_work(studies, run_cli) if "warning" in line]

    marker = uuid.uuid4().hex
    resumed = run_marked(tune_args(model_path, tiny_workload_file, studies), studies.parent,
                         marker)
    assert resumed.returncode == 0, resumed.stderr
    assert_no_strays(marker)
    after = trials(studies)
    assert {n: finished(studies)[n] for n in before} == before
    assert not [t for t in after if t.state == optuna.trial.TrialState.RUNNING]


def run_read_only(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(read_only([AUTOTUNE, *args]), cwd=cwd, capture_output=True,
                          text=True, env=clean_env(), timeout=CLI_TIMEOUT_S, check=False)


@pytest.fixture
def read_only_studies(studies: Path):
    """The copy made read-only: folder and files."""
    for path in (*studies.iterdir(), studies):
        path.chmod(0o555 if path.is_dir() else 0o444)
    yield studies
    studies.chmod(0o755)
    for path in studies.iterdir():
        path.chmod(0o644)


def test_a_read_only_studies_folder_is_read_but_never_tuned_into(
        read_only_studies: Path, model_path: Path, tiny_workload_file: Path) -> None:
    folder = read_only_studies
    probe = run_read_only(["show", STUDY, "--studies-dir", str(folder), "--json"],
                          folder.parent)
    assert probe.returncode == 0, probe.stderr
    for command in (["compare"], ["export", STUDY]):
        done = run_read_only([*command, "--studies-dir", str(folder)], folder.parent)
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    contents = {p.name: p.read_bytes() for p in folder.iterdir()}
    tuned = run_read_only(tune_args(model_path, tiny_workload_file, folder), folder.parent)
    one_error_line(tuned, f"the studies folder {folder} cannot be written",
                   "Permission denied")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == contents
    assert not (folder.parent / "resumed.env").exists()


def test_a_torn_record_in_a_read_only_folder_is_read_around(studies: Path) -> None:
    before = finished(studies)
    tear_last_record(studies / "autotune.journal")
    torn = (studies / "autotune.journal").read_bytes()
    studies.chmod(0o555)
    try:
        done = run_read_only(["show", STUDY, "--studies-dir", str(studies), "--json"],
                             studies.parent)
    finally:
        studies.chmod(0o755)
    assert done.returncode == 0, done.stderr
    (warning,) = done.stderr.strip().splitlines()
    assert "cannot be cut off" in warning and "Permission denied" in warning
    assert len(json.loads(done.stdout)["trials"]) == len(before)
    assert (studies / "autotune.journal").read_bytes() == torn and not backups(studies)
