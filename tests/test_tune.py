"""`autotune MODEL`: a real (short) study on the real model, resumed, killed, exported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import AUTOTUNE, CLI_TIMEOUT_S, QUICK_STUDY, clean_env, workers_of

from autotune.guide import DEFAULTS_LABEL
from autotune.measure.records import Status
from autotune.measure.settings import CORE_FIELDS
from autotune.search.study import FAILED_SCORE_S
from autotune.studies.records import SCHEMA_VERSION, StudyRecord, TrialRecord
from autotune.studies.storage import open_storage

pytestmark = pytest.mark.slow  # real tuning studies: `pytest -m "not slow"` skips them

QUICK = (*QUICK_STUDY, "--json")
Run = Callable[..., subprocess.CompletedProcess[str]]


def study_trials(studies: Path) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(studies)
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()


@pytest.fixture(scope="module")
def first_run(model_path: Path, tiny_workload_file: Path,
              tmp_path_factory: pytest.TempPathFactory, run_cli: Run
              ) -> tuple[Path, dict, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("tune")
    done = run_cli(str(model_path), "--trials", "4", "--studies-dir", str(folder / "studies"),
                   "--out", str(folder / "jarvis.env"), "--workload", str(tiny_workload_file),
                   *QUICK, cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder, json.loads(done.stdout), done


def test_summary_names_the_study_its_winner_and_the_improvement(first_run) -> None:
    _, summary, _ = first_run
    assert (summary["version"], summary["kind"], summary["n_trials"]) == (1, "tune", 4)
    assert summary["study_name"].startswith("SmolLM2-135M-Instruct.Q4_1@")
    assert set(summary["best"]) == {f"JARVIS_{n}" for n in (
        "MODEL_CONTEXT_WINDOW", "N_THREADS", "N_GPU_LAYERS", "ENABLE_CONTEXT_CACHE",
        "MAX_CACHE_SIZE")}
    assert summary["baseline"]["settings"]["JARVIS_N_THREADS"] == "8"
    # one round: the improvement is that round's ratio of the two representative runs
    assert summary["improvement"]["speedup"] == pytest.approx(
        summary["baseline"]["stats"]["mean_s"] / summary["winner"]["stats"]["mean_s"])


def test_the_search_tries_no_more_threads_than_the_machine_has(first_run) -> None:
    folder, summary, _ = first_run
    logical = psutil.cpu_count(logical=True)
    searched = [TrialRecord.read(t) for t in study_trials(folder / "studies")]
    searched = [t for t in searched if t.label != DEFAULTS_LABEL and t.settings]
    assert searched and all(t.settings.n_threads <= logical for t in searched)
    # Only the guide's defaults (8 threads) can be more; they win only when measured faster.
    if summary["winner"]["label"] != DEFAULTS_LABEL:
        assert int(summary["best"]["JARVIS_N_THREADS"]) <= logical


def test_export_file_sources_into_the_five_core_variables(first_run) -> None:
    folder, summary, _ = first_run
    env = subprocess.run(["sh", "-c", f". {folder / 'jarvis.env'}; env"], capture_output=True,
                         text=True, check=True, env={}).stdout.splitlines()
    jarvis = dict(line.split("=", 1) for line in env if line.startswith("JARVIS_"))
    assert jarvis == summary["best"]
    assert len(jarvis) == len(CORE_FIELDS)


def test_every_trial_records_its_score_parts_and_measurements(first_run) -> None:
    folder, _, _ = first_run
    trials = study_trials(folder / "studies")
    labels = [TrialRecord.read(t).label for t in trials[:2]]
    assert labels == ["guide model-size advice", "guide defaults"]
    for trial in trials:
        kept = TrialRecord.read(trial)
        assert kept.status in (Status.OK, Status.PRUNED)
        assert kept.host and kept.pid and kept.stats and kept.settings
        if trial.state == optuna.trial.TrialState.COMPLETE:
            parts = kept.score
            assert parts is not None and trial.value == pytest.approx(parts.total_s)
            assert parts.total_s == pytest.approx(
                parts.mean_s + parts.spike_penalty_s + parts.consistency_penalty_s)
            assert len(kept.latencies) == 4 and kept.stats.requests_done == 4
            assert len(kept.stats.pass_mean_s) == 1
            assert trial.constraints == {"failed": 0.0, "context_overflow": 0.0}


def test_study_records_model_versions_hardware_and_workload(first_run) -> None:
    folder, _, _ = first_run
    storage = open_storage(folder / "studies")
    (summary,) = optuna.get_all_study_summaries(storage)
    record = StudyRecord.from_attrs(summary.study_name, summary.user_attrs)
    assert record.schema == SCHEMA_VERSION
    assert record.model.architecture == "llama" and record.model.fingerprint
    assert record.versions.llama_cpp_python == "0.3.36" and record.versions.autotune
    assert record.hardware.logical_cores == psutil.cpu_count(logical=True)
    assert (record.measurement.workload, record.measurement.requests) == ("tiny", 4)
    assert record.winner and record.winner.settings
    assert record.confirmation and record.confirmation.candidate("guide defaults")


def test_existing_out_file_stops_the_run_before_any_work(first_run, model_path: Path,
                                                         run_cli: Run) -> None:
    folder, _, _ = first_run
    before = (folder / "jarvis.env").read_text()
    stored = files_in(folder / "studies")
    done = run_cli(str(model_path), "--trials", "1", "--studies-dir", str(folder / "studies"),
                   "--out", str(folder / "jarvis.env"), cwd=folder)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--force" in done.stderr
    assert (folder / "jarvis.env").read_text() == before
    # before any work: the storage was not even opened, so no trial (and no worker) ran
    assert files_in(folder / "studies") == stored
    assert len(study_trials(folder / "studies")) == 4


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_same_command_again_resumes_the_study(first_run, model_path: Path,
                                              tiny_workload_file: Path, run_cli: Run) -> None:
    folder, summary, _ = first_run
    before = {t.number: t.user_attrs.get("latencies") for t in study_trials(folder / "studies")}
    done = run_cli(str(model_path), "--trials", "2", "--studies-dir", str(folder / "studies"),
                   "--out", str(folder / "jarvis.env"), "--force",
                   "--workload", str(tiny_workload_file), *QUICK, cwd=folder)
    assert done.returncode == 0, done.stderr
    assert first_run[2].stderr.startswith("starting study ")  # its queued baselines aside
    assert done.stderr.startswith("resuming study ")
    again = json.loads(done.stdout)
    assert again["study_name"] == summary["study_name"]
    assert again["n_trials"] == 6
    after = {t.number: t.user_attrs.get("latencies") for t in study_trials(folder / "studies")}
    assert {n: after[n] for n in before} == before


def test_a_different_workload_will_not_resume_the_study(first_run, model_path: Path,
                                                        run_cli: Run) -> None:
    folder, _, _ = first_run
    done = run_cli(str(model_path), "--trials", "1", "--studies-dir", str(folder / "studies"),
                   "--out", str(folder / "other.env"), cwd=folder)
    assert done.returncode == 2
    assert "--study-name" in done.stderr and "Traceback" not in done.stderr


def test_failed_trials_inform_the_sampler_and_never_stop_the_study(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path, run_cli: Run) -> None:
    # every worker hangs once its model is loaded: no trial can finish, however fast the machine
    done = run_cli(str(model_path), "--trials", "3", "--trial-timeout", "1",
                   "--studies-dir", str(tmp_path / "studies"), "--out", str(tmp_path / "j.env"),
                   "--workload", str(tiny_workload_file), *QUICK, cwd=tmp_path,
                   env={"AUTOTUNE_WORKER_FAULT": "hang@load"})
    assert done.returncode == 1  # a measurement that failed, not bad input
    errors = [line for line in done.stderr.splitlines() if line.startswith("autotune: error")]
    assert len(errors) == 1 and "no trial finished" in errors[0]
    trials = study_trials(tmp_path / "studies")
    assert len(trials) == 3
    for trial in trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert TrialRecord.read(trial).status == Status.TIMED_OUT
        assert trial.value == FAILED_SCORE_S
        assert trial.constraints == {"failed": 1.0, "context_overflow": 0.0}
    assert not (tmp_path / "j.env").exists()
    assert started_in(tmp_path) == [], "a hung worker outlived its trial"


def test_a_context_that_drops_history_is_never_the_winner(model_path: Path, tmp_path: Path,
                                                           run_cli: Run) -> None:
    # The built-in workload overflows 512 tokens on its last turns: fast, but it forgets.
    done = run_cli(str(model_path), "--trials", "2", "--fix", "context_window=512",
                   "--min-context", "512",
                   "--studies-dir", str(tmp_path / "studies"), "--out", str(tmp_path / "j.env"),
                   *QUICK, cwd=tmp_path)
    assert done.returncode == 1
    assert "overflowing the context" in done.stderr
    for trial in study_trials(tmp_path / "studies"):
        kept = TrialRecord.read(trial)
        assert kept.status == Status.OK and trial.value < FAILED_SCORE_S
        assert trial.constraints["context_overflow"] > 0
        assert kept.infeasible and "dropped history" in kept.infeasible
    assert not (tmp_path / "j.env").exists()


def test_sigkill_mid_study_leaves_no_worker_and_loses_no_trial(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path, run_cli: Run) -> None:
    studies = tmp_path / "studies"
    args = [AUTOTUNE, str(model_path), "--trials", "40", "--studies-dir", str(studies),
            "--out", str(tmp_path / "j.env"), "--workload", str(tiny_workload_file), *QUICK]
    tuner = subprocess.Popen(args, cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_S  # only so that a broken test cannot hang
        finished: list[int] = []
        worker: list[psutil.Process] = []
        while time.monotonic() < deadline:
            time.sleep(0.2)
            # the journal is made (and tried) before the study is created in it
            if (studies / "autotune.journal").exists() and optuna.get_all_study_summaries(
                    open_storage(studies)):
                finished = [t.number for t in study_trials(studies) if t.state.is_finished()]
            worker = workers_of(tuner.pid)
            if len(finished) >= 2 and worker:
                break
        assert len(finished) >= 2 and worker, "the study never got going"
        os.kill(tuner.pid, signal.SIGKILL)
        tuner.wait()
        _gone, alive = psutil.wait_procs(worker, timeout=60)  # it goes at once: stdin closed
        assert not alive, "a worker outlived its study"
    finally:
        if tuner.poll() is None:
            tuner.kill()
    before = {t.number: t.user_attrs.get("latencies") for t in study_trials(studies)
              if t.state.is_finished()}
    done = run_cli(str(model_path), "--trials", "1", "--studies-dir", str(studies),
                   "--out", str(tmp_path / "j.env"), "--workload", str(tiny_workload_file),
                   *QUICK, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = study_trials(studies)
    assert {t.number: t.user_attrs.get("latencies") for t in trials if t.number in before} == before
    orphans = [t for t in trials if TrialRecord.read(t).status == Status.INTERRUPTED]
    assert len(orphans) == 1 and orphans[0].state == optuna.trial.TrialState.FAIL
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)


@pytest.mark.parametrize(("fault", "status"), [
    ("abort@load", "crashed"), ("segfault@request:1", "crashed"),
    ("oom@load", "out_of_memory"), ("exit@start", "failed")])
def test_each_worker_fault_is_recorded_and_the_study_goes_on(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path, run_cli: Run, fault: str,
        status: str) -> None:
    done = run_cli(str(model_path), "--trials", "2", "--studies-dir", str(tmp_path / "studies"),
                   "--out", str(tmp_path / "j.env"), "--workload", str(tiny_workload_file),
                   *QUICK, cwd=tmp_path, env={"AUTOTUNE_WORKER_FAULT": fault})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "no trial finished" in done.stderr
    trials = study_trials(tmp_path / "studies")
    assert [TrialRecord.read(t).status for t in trials] == [status, status]
    for trial in trials:
        assert trial.value == FAILED_SCORE_S
        assert f"AUTOTUNE_WORKER_FAULT: {fault}" in TrialRecord.read(trial).stderr_tail
    assert not (tmp_path / "j.env").exists()
    assert started_in(tmp_path) == [], "a worker outlived its study"


def started_in(folder: Path) -> list[int]:
    """Processes still running in `folder`: the tuner's workers inherit its working dir."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.cwd() == str(folder) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def test_a_second_study_starts_from_the_first_ones_winner_unless_told_not_to(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path, run_cli: Run) -> None:
    studies = str(tmp_path / "studies")
    common = ("--trials", "3", "--studies-dir", studies, "--workload", str(tiny_workload_file),
              *QUICK)

    def tune(name: str, *extra: str) -> dict:
        done = run_cli(str(model_path), "--study-name", name, "--out",
                       str(tmp_path / f"{name}.env"), *common, *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    # one thread throughout: its winner is neither baseline (8 threads; all cores)
    first = tune("first", "--fix", "n_threads=1")
    assert int(first["best"]["JARVIS_MODEL_CONTEXT_WINDOW"]) >= 4096  # the default floor
    assert "holds conversations up to" in first["context"]
    warm = tune("second")
    assert any("warm start" in note and "first" in note for note in warm["notes"])

    def labels(name: str) -> list[str | None]:
        study = optuna.load_study(study_name=name, storage=open_storage(studies))
        return [TrialRecord.read(t).label for t in study.get_trials()]

    assert labels("second")[2] == "warm start: first"  # right after the two baselines
    tune("cold", "--no-warm-start")
    assert labels("cold")[2] is None


def test_a_configuration_measured_whole_is_not_measured_again(model_path: Path,
                                                              tiny_workload, tmp_path: Path
                                                              ) -> None:
    from autotune.measure.hardware import detect
    from autotune.measure.model import inspect_model
    from autotune.search.space import build_space
    from autotune.search.study import Measurement, open_study, search

    model, machine = inspect_model(model_path), detect()
    space = build_space(model, machine, fixed={"n_threads": 2}, min_context=512)
    measurement = Measurement(tiny_workload, tokens_per_request=4)
    study = open_study("repeats", open_storage(tmp_path / "studies"), model, machine,
                       measurement, space, 0, warm_start=False)
    study.pruner = optuna.pruners.NopPruner()  # so the first of the two runs whole
    same = {"context_window": 1024, "enable_context_cache": False}
    study.enqueue_trial(same)
    study.enqueue_trial(same)
    search(study, model, space, measurement, machine.host, trials=4, timeout_s=None,
           anchor_every=0, busy_limit=0)
    first, again = study.trials[2], study.trials[3]
    kept = TrialRecord.read(again)
    assert kept.label == "repeat of trial 2" and again.value == first.value
    assert kept.latencies == TrialRecord.read(first).latencies
    assert again.constraints == first.constraints
    assert measurement.costs.trials == 3  # the repeat ran no worker
