"""The drift anchor: a machine that slows mid-search has its trials measured again."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest

from autotune.measure.faults import ENV
from autotune.measure.records import Status
from autotune.search import drift
from autotune.search.events import AnchorChecked, TrialEnded
from autotune.studies.records import AnchorCheck, StudyRecord, TrialRecord, trial_attrs
from autotune.studies.standing import DRIFT_LABEL, ranked, superseded
from autotune.studies.storage import open_storage


def made(number: int, label: str | None, state=optuna.trial.TrialState.COMPLETE,
         status: Status = Status.OK) -> optuna.trial.FrozenTrial:
    """A hand-made finished trial (logic only: nothing is measured)."""
    attrs = trial_attrs(label=label, status=status, settings={"n_threads": number % 2 + 1},
                        latencies=[0.1] * 4)
    return optuna.trial.create_trial(
        state=state, value=None if state == optuna.trial.TrialState.PRUNED else 1.0 + number,
        params={"n_threads": number % 2 + 1},
        distributions={"n_threads": optuna.distributions.IntDistribution(1, 2)},
        user_attrs={k: v for k, v in attrs.items() if v is not None})


def hand_made(labels: list[str | None]) -> optuna.Study:
    study = optuna.create_study()
    for number, label in enumerate(labels):
        study.add_trial(made(number, label))
    return study


def test_a_re_measured_trial_and_its_repeats_no_longer_rank() -> None:
    study = hand_made(["guide defaults", None, "repeat of trial 1", None,
                       f"{DRIFT_LABEL}1"])
    assert superseded(study) == {1, 2}
    assert [t.number for t in ranked(study)] == [0, 3, 4]


def test_only_trials_that_ran_their_own_worker_are_taken_again() -> None:
    study = hand_made([None, "repeat of trial 0", f"{DRIFT_LABEL}0"])
    study.add_trial(made(3, None, state=optuna.trial.TrialState.PRUNED, status=Status.PRUNED))
    study.add_trial(made(4, None, status=Status.CRASHED))
    taken = [t.number for t in drift.measured_in(study, range(5))]
    # not a repeat, a re-measurement, a crash, nor trial 0, which trial 2 took again already
    assert taken == [3]


def test_the_report_line_says_steady_or_what_was_measured_again() -> None:
    steady = (AnchorCheck(3, 1, 1.04, False), AnchorCheck(7, 1, 0.97, False))
    assert drift.describe(steady) == ("drift anchor (trial 1's configuration) steady over 2 "
                                      "check(s): 1.04x, 0.97x of its first run, within ±35%")
    moved = (AnchorCheck(3, 1, 1.9, True, (2, 3)), AnchorCheck(5, 1, 1.0, False))
    assert drift.describe(moved) == (
        "drift anchor (trial 1's configuration) moved beyond ±35% in 1 of 2 check(s) "
        "(1.90x, 1.00x of its first run): trials 2, 3 measured again")
    assert drift.describe(()) == ""


def test_anchor_checks_are_kept_in_the_study_record() -> None:
    from conftest import keep_study_record

    study = optuna.create_study()
    keep_study_record(study, anchors=[{"after_trial": 3, "anchor_trial": 1, "ratio": 1.5,
                                       "drifted": True, "requeued": [2, 3], "host": "h",
                                       "at": "now"}])
    assert StudyRecord.read(study).anchors == (AnchorCheck(3, 1, 1.5, True, (2, 3), "h",
                                                           "now"),)


@pytest.mark.slow
def test_a_machine_that_slows_mid_search_has_those_trials_measured_again(
        model_path: Path, tiny_workload, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        run_cli) -> None:
    from autotune.measure.hardware import detect
    from autotune.measure.model import inspect_model
    from autotune.search.space import build_space
    from autotune.search.study import Measurement, open_study, search

    model, machine = inspect_model(model_path), detect()
    space = build_space(model, machine, fixed={"n_threads": 2}, min_context=512)
    measurement = Measurement(tiny_workload, tokens_per_request=4)
    study = open_study("drift", open_storage(tmp_path / "studies"), model, machine,
                       measurement, space, 0, warm_start=False)
    study.pruner = optuna.pruners.NopPruner()
    monkeypatch.delenv(ENV, raising=False)  # restored after the test, whatever it sets
    events = []
    slow_s: list[float] = []

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, TrialEnded) and event.done == 2:
            # The machine gets busier once both baselines are measured: every request of
            # every worker started from now on (the anchor's) sleeps inside its measured
            # time, sized so that the check's requests sleep 2 x (1 + DRIFT_LIMIT) times
            # what they took in the anchor's own trial. The sleeps alone put the check's
            # ratio there, however fast or slow this machine is.
            anchor = drift.anchor_trial(study)
            assert anchor is not None
            first_s = sum(TrialRecord.read(anchor).latencies[:drift.ANCHOR_REQUESTS])
            slow_s.append(2 * (1 + drift.DRIFT_LIMIT) * first_s / drift.ANCHOR_REQUESTS)
            os.environ[ENV] = f"slow={slow_s[0]!r}@start"
        elif isinstance(event, AnchorChecked):
            os.environ.pop(ENV, None)  # and quiet again for what comes after

    search(study, model, space, measurement, machine.host, trials=2, timeout_s=None,
           on_event=on_event, anchor_every=2, busy_limit=0)
    first = next(e for e in events if isinstance(e, AnchorChecked))
    assert first.drifted and first.ratio > 1 + drift.DRIFT_LIMIT
    assert first.requeued == (0, 1)  # both trials since the start, taken again
    trials = study.trials
    assert len(trials) == 4 and measurement.costs.trials == 4
    for again, drifted in ((trials[2], trials[0]), (trials[3], trials[1])):
        kept = TrialRecord.read(again)
        assert kept.label == f"{DRIFT_LABEL}{drifted.number}"
        assert kept.settings == TrialRecord.read(drifted).settings
        assert again.state == optuna.trial.TrialState.COMPLETE
    assert superseded(study) == {0, 1}
    assert {t.number for t in ranked(study)} <= {2, 3}
    kept = StudyRecord.read(study).anchors
    assert kept[0].requeued == (0, 1) and kept[0].drifted and kept[0].after_trial == 1
    assert kept[0].ratio == pytest.approx(first.ratio)
    # the slow anchor slept slow_s in each request: its requests alone took that long
    assert measurement.costs.anchor_s > drift.ANCHOR_REQUESTS * slow_s[0]
    assert all(not k.requeued for k in kept[1:])  # a re-measurement is never queued again
    shown = run_cli("show", "drift", "--studies-dir", str(tmp_path / "studies"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert (f"Search: drift anchor (trial {first.anchor_trial}'s configuration) moved beyond "
            f"±35% in") in " ".join(shown.stdout.split())
