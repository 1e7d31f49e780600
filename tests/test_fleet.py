"""Fleet studies: hosts of one machine class share a study, on a real PostgreSQL server.

The server is started by the `postgres_server` fixture (conftest.py, pg_server.py); the
same checks run against the embedded journal where they apply. Two hosts are two tuner
processes on this machine with AUTOTUNE_HOST=a and b: one machine class, two names (they
take turns on the machine lock, trial by trial). A host of another class is a study made
from another machine's description, which the real tuner on this machine must refuse.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import (
    AUTOTUNE,
    CLI_TIMEOUT_S,
    QUICK_STUDY,
    clean_env,
    keep_study_record,
    make_hardware,
    make_model,
    workers_of,
)
from optuna.trial import TrialState

import autotune
from autotune.errors import AutotuneError
from autotune.measure.hardware import GIB, detect, machine_class
from autotune.measure.model import inspect_model
from autotune.measure.records import Status
from autotune.measure.workload import load_workload
from autotune.search.space import build_space
from autotune.search.study import Measurement, open_study
from autotune.search.tune import default_study_name
from autotune.studies.records import StudyRecord, TrialRecord
from autotune.studies.storage import (
    HEARTBEAT_ENV,
    fail_orphaned_trials,
    has_heartbeat,
    open_storage,
    study_names,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["journal", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh storage: the embedded journal, or a database on the real server."""
    if request.param == "journal":
        return str(tmp_path / "studies" / "autotune.journal")
    return request.getfixturevalue("postgres_url")


def made_up_study(where: str, machine, model=None, workload=None, name: str = "m@fleet"
                  ) -> optuna.Study:
    model = model or make_model()
    space = build_space(model, machine, False, {})
    measurement = Measurement(workload or load_workload(None), tokens_per_request=4)
    return open_study(name, open_storage(storage=where, longest_trial_s=60), model, machine,
                      measurement, space, seed=1)


# --- the machine class and the default name (no server needed) ----------------------------

def test_a_class_ignores_the_host_and_free_memory_but_not_the_machine() -> None:
    here = machine_class(make_hardware(host="a", available_memory_bytes=1))
    assert here == machine_class(make_hardware(host="b", total_memory_bytes=16 * GIB - 2**20))
    assert here.name.startswith("2c4t-16g-") and here.name == machine_class(
        make_hardware(host="c")).name
    other = machine_class(make_hardware(llama_cpp_version="0.3.37"))
    assert other.label == here.label and other.digest != here.digest
    assert other.differences(here) == ["llama-cpp-python: 0.3.37, not 0.3.36"]


def test_the_host_name_can_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_HOST", "rack-07")
    assert detect().host == "rack-07"


def test_the_default_name_is_the_class_unless_a_host_study_exists() -> None:
    a, b = make_hardware(host="a"), make_hardware(host="b")
    assert default_study_name("/m/tiny.gguf", a) == default_study_name("/m/tiny.gguf", b) \
        == f"tiny@{machine_class(a).name}"
    assert default_study_name("/m/tiny.gguf", a, ["tiny@a", "x"]) == "tiny@a"


# --- against the journal and the real server ----------------------------------------------

def test_hosts_of_one_class_join_and_another_class_is_refused(where: str) -> None:
    made_up_study(where, make_hardware(host="a"))
    joined = made_up_study(where, make_hardware(host="b"))
    assert StudyRecord.read(joined).machine_class == machine_class(make_hardware())
    assert [TrialRecord.read(t).label for t in joined.trials] == [
        "guide model-size advice", "guide defaults"]  # enqueued once, by the creator
    with pytest.raises(AutotuneError) as refused:
        made_up_study(where, make_hardware(host="c", total_memory_bytes=32 * GIB,
                                           physical_cores=4))
    text = str(refused.value)
    assert "\n" not in text and "host 'c' is of another" in text
    assert "physical cores: 4, not 2; memory (GiB): 32, not 16" in text


def test_a_study_made_before_classes_stays_its_hosts(where: str) -> None:
    storage = open_storage(storage=where, longest_trial_s=60)
    old = optuna.create_study(study_name="m@box", storage=storage)
    measured = Measurement(load_workload(None), tokens_per_request=4).identity()
    # the record as autotune kept it before machine classes
    keep_study_record(old, measurement=dataclasses.asdict(measured))
    assert StudyRecord.read(old).machine_class is None
    made_up_study(where, make_hardware(host="box"), name="m@box")
    with pytest.raises(AutotuneError, match="was measured on host 'box'"):
        made_up_study(where, make_hardware(host="other"), name="m@box")


def test_heartbeats_on_a_server_only(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    writing = open_storage(storage=where, longest_trial_s=300)
    assert has_heartbeat(writing) == (where.startswith("postgresql"))
    if has_heartbeat(writing):
        assert (writing.heartbeat_interval, writing.grace_period) == (30, 360)
        monkeypatch.setenv(HEARTBEAT_ENV, "1,3")
        quick = open_storage(storage=where, longest_trial_s=300)
        assert (quick.heartbeat_interval, quick.grace_period) == (1, 3)
        monkeypatch.setenv(HEARTBEAT_ENV, "1")
        with pytest.raises(AutotuneError, match="INTERVAL,GRACE"):
            open_storage(storage=where, longest_trial_s=300)
    assert not has_heartbeat(open_storage(storage=where, create=False))


def test_a_server_study_leaves_dead_trials_to_the_heartbeat(postgres_url: str) -> None:
    storage = open_storage(storage=postgres_url, longest_trial_s=60)
    study = optuna.create_study(study_name="s", storage=storage)
    trial_id = storage.create_new_trial(storage.get_study_id_from_name("s"))
    storage.set_trial_user_attr(trial_id, "host", "here")
    storage.set_trial_user_attr(trial_id, "pid", 2**22 + 1)  # no such process
    assert fail_orphaned_trials(study, storage, "here") == []
    assert study.trials[0].state == TrialState.RUNNING


# --- real tuners on the real server (slow: each measures real trials) ---------------------

def tuner(model: Path, url: str, workload: Path, cwd: Path, host: str, trials: int,
          *extra: str, **env: str) -> subprocess.Popen[str]:
    out = cwd / f"{host}.env"
    return subprocess.Popen(
        [AUTOTUNE, str(model), "--trials", str(trials), "--storage", url, "--workload",
         str(workload), "--out", str(out), "--force", *QUICK_STUDY, *extra],
        cwd=cwd, env=clean_env(AUTOTUNE_HOST=host, **env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
    return process.returncode, stderr


def the_study(url: str) -> optuna.Study:
    storage = open_storage(storage=url, create=False)
    (name,) = study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


@pytest.mark.slow
def test_two_hosts_tune_one_study_at_once(model_path: Path, tiny_workload_file: Path,
                                          postgres_url: str, tmp_path: Path, run_cli) -> None:
    started = time.monotonic()
    hosts = {host: tuner(model_path, postgres_url, tiny_workload_file, tmp_path, host, 3)
             for host in ("a", "b")}
    results = {host: finish(process) for host, process in hosts.items()}
    wall_s = time.monotonic() - started
    assert all(code == 0 for code, _ in results.values()), results

    study = the_study(postgres_url)
    assert study.study_name == f"{model_path.stem}@{machine_class(detect()).name}"
    kept = [TrialRecord.read(t, study.study_name) for t in study.trials]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6  # none lost
    assert collections.Counter(k.host for k in kept) == {"a": 3, "b": 3}
    labels = collections.Counter(k.label for k in kept if k.label)
    assert labels == {"guide defaults": 1, "guide model-size advice": 1}  # none twice
    assert len({(k.host, k.sampler_seed) for k in kept}) == 2  # a seed per process
    assert len({k.sampler_seed for k in kept}) == 2
    record = StudyRecord.read(study)
    assert record.winner is not None and record.winner.host in ("a", "b")

    # Every reader reads the PostgreSQL study.
    for command in (("compare", "--json"), ("show", study.study_name, "--json"),
                    ("export", study.study_name, "--out", str(tmp_path / "again.env"))):
        done = run_cli(*command, "--storage", postgres_url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    shown = json.loads(run_cli("show", study.study_name, "--json", "--storage",
                               postgres_url, cwd=tmp_path).stdout)
    assert len(shown["trials"]) == 6
    exported = (tmp_path / "again.env").read_text().splitlines()
    winner_file = (tmp_path / f"{record.winner.host}.env").read_text().splitlines()
    assert [x for x in exported if not x.startswith("#")] == [
        x for x in winner_file if not x.startswith("#")]
    table = autotune.load_studies(postgres_url)
    assert sorted(table["trial_host"]) == ["a", "a", "a", "b", "b", "b"]
    assert table.groupby("trial_host")["mean_s"].count().to_dict() == {"a": 3, "b": 3}
    print(f"two hosts, 6 trials: {wall_s:.1f} s")


@pytest.mark.slow
def test_the_notebook_reads_a_postgresql_study(model_path: Path, tiny_workload_file: Path,
                                               postgres_url: str, tmp_path: Path) -> None:
    import nbclient
    import nbformat

    code, stderr = finish(tuner(model_path, postgres_url, tiny_workload_file, tmp_path,
                                "a", 2))
    assert code == 0, stderr
    notebook = nbformat.read(REPO / "studies" / "compare.ipynb", as_version=4)
    os.environ["AUTOTUNE_STUDIES"] = postgres_url  # the kernel inherits it
    try:
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    finally:
        del os.environ["AUTOTUNE_STUDIES"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert "1 studies, 2 trials" in json.dumps(
        [o.get("text", "") for o in outputs])


@pytest.mark.slow
def test_a_killed_host_is_failed_by_heartbeat_and_the_other_finishes(
        model_path: Path, tiny_workload_file: Path, postgres_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    heartbeat = {HEARTBEAT_ENV: "1,3"}  # beat every second, stale after 3
    doomed = tuner(model_path, postgres_url, tiny_workload_file, tmp_path, "a", 2,
                   AUTOTUNE_WORKER_FAULT="hang@request:1", **heartbeat)
    deadline = time.monotonic() + CLI_TIMEOUT_S  # only so that a broken test cannot hang
    while True:  # until the first trial has reported a request, and hangs
        assert doomed.poll() is None and time.monotonic() < deadline, doomed.communicate()
        names = study_names(open_storage(storage=postgres_url, create=False))
        running = [t for t in the_study(postgres_url).trials
                   if t.state == TrialState.RUNNING and t.intermediate_values] if names else []
        if running:
            break
        time.sleep(0.5)
    workers = workers_of(doomed.pid)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()
    psutil.wait_procs(workers, timeout=30)  # a hanging worker exits once its tuner is gone
    (before,) = running
    assert TrialRecord.read(before).host == "a"

    # Once its heartbeat is past the grace period, the next trial anywhere fails it. Wait
    # until the server says it is (by its own clock, as the tuner's check asks it).
    monkeypatch.setenv(HEARTBEAT_ENV, heartbeat[HEARTBEAT_ENV])
    watcher = open_storage(storage=postgres_url, longest_trial_s=60)
    study_id = watcher.get_study_id_from_name(the_study(postgres_url).study_name)
    trial_id = watcher.get_trial_id_from_study_id_trial_number(study_id, before.number)
    deadline = time.monotonic() + CLI_TIMEOUT_S  # only so that a broken test cannot hang
    while trial_id not in watcher._get_stale_trial_ids(study_id):  # what fail_stale_trials asks
        assert time.monotonic() < deadline, "the killed host's trial never went stale"
        time.sleep(0.2)
    code, stderr = finish(tuner(model_path, postgres_url, tiny_workload_file, tmp_path,
                                "b", 3, **heartbeat))
    assert code == 0, stderr
    study = the_study(postgres_url)
    after = study.trials[before.number]
    assert after.state == TrialState.FAIL
    assert TrialRecord.read(after).status == Status.INTERRUPTED
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == before.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert TrialRecord.read(retries[0]).host == "b"
    assert retries[0].params == before.params  # the same settings, measured again
    by_b = [t for t in study.trials if TrialRecord.read(t).host == "b"]
    assert len(by_b) == 3 and all(t.state == TrialState.COMPLETE for t in by_b)
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING,
                                                       TrialState.WAITING)]


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_the_tuner_refuses_a_study_of_another_class(kind: str, model_path: Path,
                                                    tiny_workload_file: Path, tmp_path: Path,
                                                    request: pytest.FixtureRequest,
                                                    run_cli) -> None:
    url = (str(tmp_path / "studies" / "autotune.journal") if kind == "journal"
           else request.getfixturevalue("postgres_url"))
    elsewhere = dataclasses.replace(detect(), host="elsewhere", cpu="Another CPU 9000")
    made_up_study(url, elsewhere, model=inspect_model(model_path),
                  workload=load_workload(tiny_workload_file), name="shared")
    done = run_cli(str(model_path), "--trials", "1", "--storage", url, "--study-name",
                   "shared", "--workload", str(tiny_workload_file), *QUICK_STUDY,
                   "--out", str(tmp_path / "j.env"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "belongs to machines of class" in line
    assert f"CPU: {detect().cpu}, not Another CPU 9000" in line
    assert "--study-name" in line
