"""Many commands on one machine: a busy trial is measured again, and tuners and a bench
share the machine in turn, each measurement alone, none lost."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from conftest import AUTOTUNE, CLI_TIMEOUT_S, QUICK_STUDY, clean_env

from autotune.measure.faults import ENV
from autotune.measure.hardware import detect
from autotune.measure.machine_lock import LOCK_FILE_ENV
from autotune.measure.model import inspect_model
from autotune.measure.settings import Settings
from autotune.measure.trial import BUSY_PERCENT, run_trial
from autotune.search.events import BusyTrial
from autotune.search.space import build_space
from autotune.search.study import Measurement, open_study, search
from autotune.studies.records import TrialRecord
from autotune.studies.standing import BUSY_LABEL, REPEAT_LABEL, ranked, superseded
from autotune.studies.storage import open_storage

TrialState = optuna.trial.TrialState
BUSY_GAP = 30.0  # percent of a core the busy fault must add for a reading to tell it
PERSISTS = "the load is the machine's own"  # what a tuner says once a re-measurement was busy


@dataclass
class PinnedLoad(Measurement):
    """Measures each trial for real, then reports other processes' CPU as `loads` says,
    run by run (0 once they run out): what the search does with a busy reading, made
    certain. What the sampler reads beside a busy program is the test below."""

    loads: list[float] = field(default_factory=list)

    def run(self, model, settings, on_request=None, before=None, anchor=False, limit_s=None):
        result = super().run(model, settings, on_request, before, anchor, limit_s)
        result.other_cpu_percent_mean = self.loads.pop(0) if self.loads else 0.0
        return result


def test_the_sampler_counts_a_busy_program_beside_the_worker(
        model_path: Path, tiny_workload, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = Measurement(tiny_workload, tokens_per_request=4).spec(
        inspect_model(model_path), Settings(n_threads=1, context_window=512))
    monkeypatch.setenv(ENV, "busy@start")
    busy = run_trial(spec).other_cpu_percent_mean
    monkeypatch.delenv(ENV)
    quiet = run_trial(spec).other_cpu_percent_mean
    assert busy is not None and quiet is not None
    if busy < quiet + BUSY_GAP:
        # the fault's loops add what they can take: on a machine whose CPU the rest of the
        # world (or a quota around this test) already takes, that is too little to tell
        pytest.skip(f"other processes' CPU reads {quiet:.0f}% of a core without the busy "
                    f"fault and {busy:.0f}% beside it: too close to tell a busy trial")
    assert busy > BUSY_GAP


def a_study(name: str, model_path: Path, tiny_workload, tmp_path: Path, loads: list[float]):
    model, machine = inspect_model(model_path), detect()
    space = build_space(model, machine, fixed={"n_threads": 1}, min_context=512)
    measurement = PinnedLoad(tiny_workload, tokens_per_request=4, loads=loads)
    study = open_study(name, open_storage(tmp_path / "studies"), model, machine, measurement,
                       space, 0, warm_start=False)
    study.pruner = optuna.pruners.NopPruner()
    return study, model, machine, space, measurement


BUSY = 2 * BUSY_PERCENT  # a reading well past the limit


@pytest.mark.slow
def test_a_trial_measured_beside_a_busy_program_is_measured_again_at_once(
        model_path: Path, tiny_workload, tmp_path: Path) -> None:
    study, model, machine, space, measurement = a_study("busy", model_path, tiny_workload,
                                                        tmp_path, loads=[BUSY])
    events: list = []
    search(study, model, space, measurement, machine.host, trials=2, timeout_s=None,
           on_event=events.append, anchor_every=0, busy_limit=BUSY_PERCENT)
    trials = study.trials
    assert len(trials) == 3 and measurement.costs.trials == 3
    # queued at once: it runs as soon as the other baseline, queued before it, has
    again = TrialRecord.read(trials[2])
    assert again.label == f"{BUSY_LABEL}0" and again.remeasures == 0
    assert again.settings == TrialRecord.read(trials[0]).settings
    assert TrialRecord.read(trials[0]).stats.other_cpu_percent_mean == BUSY
    assert [e for e in events if isinstance(e, BusyTrial)] == [
        BusyTrial(0, BUSY, BUSY_PERCENT, True)]
    assert superseded(study) == {0}
    assert 0 not in {t.number for t in ranked(study)}


@pytest.mark.slow
def test_a_machine_that_stays_busy_costs_one_more_trial_and_is_said(
        model_path: Path, tiny_workload, tmp_path: Path) -> None:
    study, model, machine, space, measurement = a_study("always-busy", model_path,
                                                        tiny_workload, tmp_path,
                                                        loads=[BUSY] * 8)
    events: list = []
    search(study, model, space, measurement, machine.host, trials=2, timeout_s=None,
           on_event=events.append, anchor_every=0, busy_limit=BUSY_PERCENT)
    labels = [TrialRecord.read(t).label for t in study.trials]
    assert labels[2:] == [f"{BUSY_LABEL}0", f"{BUSY_LABEL}1"]
    busy = [e for e in events if isinstance(e, BusyTrial)]
    # both baselines were busy; the first re-measurement was busy again: the load is the
    # machine's, the re-measurements already queued run, and nothing more is taken again
    assert [(e.number, e.remeasured) for e in busy] == [(0, True), (1, True), (2, False)]
    assert {t.number for t in ranked(study)} == {2, 3}


# --- several commands at once --------------------------------------------------------------

def command(args: list[str], cwd: Path, lock: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([AUTOTUNE, *args], cwd=cwd,
                            env=clean_env(**{LOCK_FILE_ENV: str(lock)}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def overlaps(held: list[tuple[float, float, str]]) -> list[tuple[str, str]]:
    """The pairs of measurements whose times overlap."""
    ordered = sorted(held)
    return [(a[2], b[2]) for a, b in itertools.pairwise(ordered) if b[0] < a[1]]


@pytest.mark.slow
def test_tuners_and_a_bench_at_once_take_turns_and_lose_nothing(
        model_path: Path, tiny_workload_file: Path, tmp_path: Path) -> None:
    lock = tmp_path / "measure.lock"
    studies = tmp_path / "studies"
    # the busy limit on: the other commands' start-up beside a trial makes it busy
    tune = [str(model_path), "--studies-dir", str(studies), "--workload",
            str(tiny_workload_file), *QUICK_STUDY, "--busy-limit", str(BUSY_PERCENT),
            "--trials", "2", "--no-warm-start", "--json", "--force"]
    plan = [("shared", 1), ("shared", 2), ("shared", 3), ("other", 1)]
    tuners = [command([*tune, "--study-name", name, "--out", str(tmp_path / f"{name}{n}.env")],
                      tmp_path, lock) for name, n in plan]
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while not (lock.exists() and lock.read_text()):  # a tuner's first measurement began
        assert time.monotonic() < deadline and tuners[0].poll() is None
        time.sleep(0.1)
    bench = command(["bench", str(model_path), "--workload", str(tiny_workload_file),
                     "--tokens", "4", "--json"], tmp_path, lock)
    outputs, said = [], {}
    for process in (*tuners, bench):
        out, err = process.communicate(timeout=CLI_TIMEOUT_S * 4)
        assert process.returncode == 0, err
        assert "Traceback" not in err
        outputs.append(json.loads(out))
        said[process.pid] = " ".join(err.split())  # as one line, however it was wrapped
    *tuned, benched = outputs

    storage = open_storage(studies)
    held = [(*span, f"bench {bench.pid}") for span in
            [(benched["stats"]["measured_from"], benched["stats"]["measured_until"])]]
    for (name, n), process, report in zip(plan, tuners, tuned, strict=True):
        held += [(start, end, f"{name}{n} ({process.pid})") for start, end in report["held"]]
    for name, runs in (("shared", 3), ("other", 1)):
        trials = optuna.load_study(study_name=name, storage=storage).trials
        assert [t.number for t in trials] == list(range(len(trials)))  # each kept once
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        records = [TrialRecord.read(t) for t in trials]
        again = [r for r in records if (r.label or "").startswith(BUSY_LABEL)]
        assert len(trials) == 2 * runs + len(again), [r.label for r in records]
        pids = [r.pid for r in records]
        assert sorted(set(pids)) == sorted(p.pid for (study, _), p in zip(plan, tuners,
                                                                           strict=True)
                                           if study == name)
        # what each tuner measured, it reported: every trial's own run is among them
        measured = {(s, e) for s, e, _ in held}
        for record in records:
            if not (record.label or "").startswith(REPEAT_LABEL):
                assert (record.stats.measured_from, record.stats.measured_until) in measured
        # no trial ranks that other processes' load slowed, but a re-measurement, or a
        # trial of a tuner that found the load was the machine's own and said so
        gone = superseded(optuna.load_study(study_name=name, storage=storage))
        for trial in ranked(optuna.load_study(study_name=name, storage=storage)):
            record = TrialRecord.read(trial)
            others = record.stats.other_cpu_percent_mean or 0.0
            assert trial.number not in gone
            assert (others <= BUSY_PERCENT or record.remeasures is not None
                    or PERSISTS in said[record.pid]), (trial.number, others)
    assert overlaps(held) == []
    # the bench asked once the tuners had started; it waited behind at most one
    # measurement of each of the four tuners, in the order asked
    asked = benched["stats"]["measured_from"] - benched["waited_s"]
    before = [who for start, _, who in held if asked < start < benched["stats"]["measured_from"]]
    assert len(before) <= len(tuners), before
