"""Faults injected into a study the real tuner wrote: no fault loses a study.

Each fault is made certain: a torn record by truncating the journal, a tuner killed in
the middle of a write by the storage's fault switch, a file-size limit by RLIMIT_FSIZE, a
read-only folder by dropping root's power to ignore file modes. A disk that fills up and a
folder remounted read-only in the middle of a study are real where the machine lets a
test mount (a small tmpfs, a read-only bind remount: tests/mounts.py), made while the
tuner is stopped by the fault switch right after its first trial is kept; elsewhere the
switch itself fails the writes from that point on, and the test says which it used.
After each, the real commands (`autotune MODEL` resuming, `compare`, `show`, `export`) run
on the result.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import AUTOTUNE, CLI_TIMEOUT_S, QUICK_STUDY, clean_env
from mounts import FILLER, bound, fill, read_only, remount, report, tmpfs
from test_storage import backups, one_error_line, tear_last_record

from autotune.errors import StorageFailed
from autotune.studies.faults import FAULT_VARIABLE
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


# A disk that fills up and a folder made read-only in the middle of a study. The real
# fault is made while the tuner is stopped (the fault switch's `stop`: right after the
# record that ends its first trial, with the journal's lock released and no file open),
# so it falls between two given writes whatever the timing; where this machine does not
# let a test mount, the switch fails the writes from that same point instead.
MID_STUDY_TRIALS = 2  # trials each run adds: the fault falls after the first
TMPFS_BYTES = 2 << 20  # the kept study's journal is about 20 kB


@dataclass
class MidStudyFault:
    name: str  # full-disk, read-only
    how: str  # what made it, for the report
    switch: str  # AUTOTUNE_STORAGE_FAULT for the tuner
    make: Callable[[], None]  # the real fault, made while the tuner is stopped
    undo: Callable[[], None]  # free the space, make the folder writable again
    reason: str  # the OS's words for it, in the error line
    fix: str  # what the error line says to do
    again: str = ""  # what a run started before the fix says to do
    again_status: int = 2

    @property
    def real(self) -> bool:
        return self.switch.startswith("stop:")


@contextmanager
def full_disk(folder: Path, kept: Path, real: bool) -> Iterator[MidStudyFault]:
    """The kept study on a small tmpfs that the fault fills to its last byte (when `real`
    and mounting is allowed), else in a plain folder, with the switch's no-space."""
    with tmpfs(folder, TMPFS_BYTES) if real else nullcontext(False) as mounted:
        folder.mkdir(exist_ok=True)
        shutil.copytree(kept, folder, dirs_exist_ok=True)
        how = (f"a {TMPFS_BYTES >> 20} MiB tmpfs, filled to its last byte" if mounted else
               "the fault switch (no-space:1)" + (": mounting a tmpfs is not allowed here"
                                                  if real else ""))
        yield MidStudyFault("full-disk", how, "stop:1" if mounted else "no-space:1",
                            make=lambda: fill(folder) and None,
                            undo=lambda: (folder / FILLER).unlink(missing_ok=True),
                            reason="No space left on device", fix="free some space on the disk",
                            again="free some space on its disk and run the same command again",
                            again_status=StorageFailed.exit_status)


@contextmanager
def read_only_mid_study(folder: Path, kept: Path, real: bool) -> Iterator[MidStudyFault]:
    """The kept study in a folder bind-mounted onto itself, which the fault remounts
    read-only (when `real` and mounting is allowed), else with the switch's read-only."""
    shutil.copytree(kept, folder)
    with bound(folder) if real else nullcontext(False) as mounted:
        how = ("a read-only bind remount of the studies folder" if mounted else
               "the fault switch (read-only:1)" + (": mounting is not allowed here"
                                                   if real else ""))

        def undo() -> None:
            if mounted:
                remount(folder, writable=True)

        yield MidStudyFault("read-only", how, "stop:1" if mounted else "read-only:1",
                            make=lambda: remount(folder, writable=False), undo=undo,
                            reason="Read-only file system", fix="writable again",
                            again="make it writable")


@pytest.fixture(params=[("full-disk", True), ("full-disk", False), ("read-only", True),
                        ("read-only", False)],
                ids=["full-disk-tmpfs", "full-disk-switch", "read-only-remount",
                     "read-only-switch"])
def mid_study(request: pytest.FixtureRequest, kept_study: Path, tmp_path: Path
              ) -> Iterator[tuple[Path, MidStudyFault]]:
    """A copy of the kept study in a folder that a fault will hit mid-study: on a real
    filesystem fault where `real` and mounting is allowed, else through the fault switch."""
    name, real = request.param
    folder = tmp_path / "studies"
    make = full_disk if name == "full-disk" else read_only_mid_study
    with make(folder, kept_study, real) as fault:
        yield folder, fault


def run_with_fault(args: list[str], cwd: Path, marker: str, fault: MidStudyFault,
                   at_fault: Callable[[], None]) -> subprocess.CompletedProcess[str]:
    """The CLI with the fault's switch set. A real fault is made once the tuner has stopped
    itself (it waits on the test: stopped, it writes nothing), after `at_fault` has looked
    at what it kept; then it goes on and meets the fault at its next write."""
    out, err = cwd / f"{marker}.out", cwd / f"{marker}.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen([AUTOTUNE, *args], cwd=cwd, stdout=stdout, stderr=stderr,
                                   text=True, env=clean_env(AUTOTUNE_TEST_MARK=marker,
                                                            **{FAULT_VARIABLE: fault.switch}))
        try:
            if fault.real:
                assert wait_until_stopped(process), err.read_text()
                at_fault()
                fault.make()
                os.kill(process.pid, signal.SIGCONT)
            process.wait(timeout=CLI_TIMEOUT_S)
        finally:
            if process.returncode is None:
                process.kill()  # a stopped process dies of SIGKILL too
                process.wait()
    return subprocess.CompletedProcess(args, process.returncode, out.read_text(),
                                       err.read_text())


def wait_until_stopped(process: subprocess.Popen[str]) -> bool:
    """Block until `process` stops itself (True) or ends (False), killing it if neither
    comes within the CLI's time limit."""
    watchdog = threading.Timer(CLI_TIMEOUT_S, process.kill)
    watchdog.start()
    try:
        _, status = os.waitpid(process.pid, os.WUNTRACED)
    finally:
        watchdog.cancel()
    if os.WIFSTOPPED(status):
        return True
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait
    return False


def test_a_fault_mid_study_ends_in_one_line_and_the_same_command_resumes(
        mid_study: tuple[Path, MidStudyFault], model_path: Path, tiny_workload_file: Path,
        run_cli, request: pytest.FixtureRequest) -> None:
    folder, fault = mid_study
    before = finished(folder)
    args = tune_args(model_path, tiny_workload_file, folder, MID_STUDY_TRIALS)
    at_fault: dict[int, list | None] = {}
    marker = uuid.uuid4().hex
    done = run_with_fault(args, folder.parent, marker, fault,
                          lambda: at_fault.update(finished(folder)))
    line = ends_in_one_line(done, fault.reason, fault.fix)
    assert_no_strays(marker)
    if fault.real:  # the fault fell right after the run's first trial was kept
        assert len(at_fault) == len(before) + 1 and finished(folder) == at_fault
    kept = finished(folder)  # loads while the disk is still full, or the folder read-only
    assert {n: kept[n] for n in before} == before and len(kept) == len(before) + 1
    assert not [t for t in trials(folder) if t.state == optuna.trial.TrialState.RUNNING]
    journal = folder / "autotune.journal"
    assert journal.read_bytes().endswith(b"\n") and not backups(folder)
    assert not Path(f"{journal}.lock").exists()  # none left for the next tuner to wait on
    assert not (folder.parent / "resumed.env").exists()
    assert not [line for line in read_commands_work(folder, run_cli) if "warning" in line]

    before_fix = ""
    if fault.real:  # run again before the fix: one line on what to do, nothing changed
        early = run_marked(args, folder.parent, uuid.uuid4().hex)
        one_error_line(early, fault.reason, fault.again, status=fault.again_status)
        assert finished(folder) == kept and not Path(f"{journal}.lock").exists()
        before_fix = f"; run again before the fix: exit {early.returncode}: " \
                     f"{early.stderr.strip()!r}"

    fault.undo()
    marker = uuid.uuid4().hex
    resumed = run_marked(args, folder.parent, marker)  # the same command, as the line says
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr and "warning" not in resumed.stderr
    assert_no_strays(marker)
    after = finished(folder)
    assert {n: after[n] for n in kept} == kept
    assert len(after) == len(kept) + MID_STUDY_TRIALS
    assert not [t for t in trials(folder) if t.state == optuna.trial.TrialState.RUNNING]
    assert (folder.parent / "resumed.env").exists()
    report(request, f"{fault.how}; exit {done.returncode}: {line!r}; finished trials "
                    f"{len(before)} before, {len(kept)} after the fault, {len(after)} after "
                    f"the same command again (exit {resumed.returncode}){before_fix}")


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
