"""Warm start and resumed floors: which earlier studies a new study starts from, and how
their winners fit its space (logic on hand-made study records; nothing measured)."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from conftest import keep_study_record, make_hardware, make_model

from autotune.guide import DEFAULTS_LABEL
from autotune.measure.hardware import machine_class
from autotune.measure.settings import Settings
from autotune.measure.workload import Request, Workload
from autotune.search.space import build_space
from autotune.search.study import Measurement, fit_context, open_study
from autotune.search.warm import warm_starts
from autotune.studies.records import StudyRecord, TrialRecord, Winner, study_attrs

SETTINGS = {"context_window": 1024, "n_threads": 1, "n_gpu_layers": 0,
            "enable_context_cache": False, "max_cache_size": 100}


def earlier(storage, name: str, confirmed: str = "2026-11-25 10:00:00 UTC",
            settings: dict | None = None, **changes: object) -> None:
    """An earlier study with a confirmed winner on the made-up machine, as the tuner keeps it."""
    study = optuna.create_study(study_name=name, storage=storage)
    winner = Winner(label="trial 3", trial_number=3,
                    settings=Settings.from_dict(settings or SETTINGS),
                    score_s=0.7, mean_s=0.7, improvement=None, confirmed=confirmed)
    keep_study_record(study, **{**study_attrs(machine_class=machine_class(make_hardware()),
                                              winner=winner), **changes})


def space(**changes):
    return build_space(make_model(), make_hardware(), **changes)


def test_similar_studies_on_this_kind_of_machine_are_taken_most_recent_first() -> None:
    storage = optuna.storages.InMemoryStorage()
    earlier(storage, "old", "2026-11-20 10:00:00 UTC", dict(SETTINGS, n_threads=2))
    earlier(storage, "new", "2026-11-25 10:00:00 UTC", dict(SETTINGS, n_threads=3))
    earlier(storage, "other arch", model=dataclasses.replace(make_model(), architecture="qwen2"))
    earlier(storage, "too big", model=dataclasses.replace(make_model(), n_params=10**9))
    earlier(storage, "other machine",
            machine_class=machine_class(make_hardware(physical_cores=8, logical_cores=16)))
    optuna.create_study(study_name="foreign", storage=storage).set_user_attr("x", 1)
    damaged = optuna.create_study(study_name="damaged", storage=storage)
    keep_study_record(damaged, winner={"label": 3})
    found = warm_starts(storage, "mine", make_model(), make_hardware(), space())
    assert [w.study for w in found] == ["new", "old"]
    assert found[0].label == "warm start: new"
    # clipped into the space: the window up to the floor, the threads kept inside 1..4
    assert found[0].params == {"n_threads": 3, "context_window": 4096,
                               "enable_context_cache": False}


def test_at_most_three_and_never_a_baseline_again() -> None:
    storage = optuna.storages.InMemoryStorage()
    for n in range(1, 5):
        earlier(storage, f"s{n}", f"2026-11-2{n} 10:00:00 UTC", dict(SETTINGS, n_threads=n))
    found = warm_starts(storage, "mine", make_model(), make_hardware(), space())
    assert [w.study for w in found] == ["s4", "s3", "s2"]
    baseline = {"n_threads": 4, "context_window": 4096, "enable_context_cache": False}
    found = warm_starts(storage, "mine", make_model(), make_hardware(), space(), [baseline])
    assert [w.study for w in found] == ["s3", "s2", "s1"]


def test_a_cache_size_and_threads_out_of_range_are_clipped() -> None:
    storage = optuna.storages.InMemoryStorage()
    earlier(storage, "big", settings=dict(SETTINGS, n_threads=64, context_window=16384,
                                          enable_context_cache=True, max_cache_size=1000))
    (found,) = warm_starts(storage, "mine", make_model(), make_hardware(), space())
    assert found.params == {"n_threads": 4, "context_window": 8192,
                            "enable_context_cache": True, "max_cache_size": 128}


def tiny_measurement() -> Measurement:
    return Measurement(Workload("tiny", (Request(0, "0", "", 0, ()),)))


def test_a_new_study_queues_warm_starts_after_the_baselines_and_says_so() -> None:
    storage = optuna.storages.InMemoryStorage()
    earlier(storage, "before")
    model, machine = make_model(), make_hardware()
    ours = space()
    study = open_study("mine", storage, model, machine, tiny_measurement(), ours, 0)
    labels = [TrialRecord.read(t).label for t in study.get_trials()]
    assert labels == ["guide model-size advice", DEFAULTS_LABEL, "warm start: before"]
    assert any("1 winner(s) of earlier studies" in n and "before" in n for n in ours.notes)
    off = space()
    study = open_study("cold", storage, model, machine, tiny_measurement(), off, 0,
                       warm_start=False)
    assert len(study.get_trials()) == 2 and not any("warm start" in n for n in off.notes)


def test_a_resumed_study_keeps_its_choices_and_runs_nothing_below_the_new_floor() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"context_window": 1024})
    old = space(min_context=512)
    trial = study.ask()
    old.suggest(trial)
    new = space()
    fit_context(study, new)
    assert new.context_choices == (512, 1024, 2048, 4096, 8192) and new.min_context == 4096
    assert any("no longer measured" in note for note in new.notes)


@pytest.mark.parametrize("floor", [512, 8192])
def test_a_resumed_study_says_when_its_choices_cannot_follow_a_lower_floor(floor: int) -> None:
    study = optuna.create_study()
    study.enqueue_trial({"context_window": 4096})
    space(min_context=4096).suggest(study.ask())
    new = space(min_context=floor)
    fit_context(study, new)
    assert new.context_choices == (4096, 8192)
    assert any("start at 4096" in note for note in new.notes) == (floor == 512)


def test_study_record_reads_the_floor_and_tolerates_its_absence() -> None:
    study = optuna.create_study()
    keep_study_record(study, space={"n_threads": [1, 4], "context_window": [4096],
                                    "n_gpu_layers": None, "max_cache_size": [1, 128]})
    assert StudyRecord.read(study).space.min_context is None
