"""One rule for which trials count: a trial a re-measurement took again counts nowhere.

Hand-made studies (the rule reads records; nothing is measured)."""

from __future__ import annotations

import optuna
import pytest
from conftest import keep_study_record

from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.records import Status, TrialStats
from autotune.measure.settings import CORE_FIELDS, Settings
from autotune.studies import explain, profiles, standing, tables
from autotune.studies.records import TrialRecord, Winner, keep, study_attrs, trial_attrs

DEFAULTS = dict(GUIDE_DEFAULTS)
SMALL = {"context_window": 1024}


def drifted_study(again_label: str = standing.DRIFT_LABEL, fields: bool = True
                  ) -> optuna.Study:
    """Trial 1 ran while the machine drifted (faster, here), trial 2 took it again; the
    winner, trial 3, differs from both in n_threads alone. Without `fields`, trial 2 says
    so in its label alone, as studies of schema 1 to 3 did."""
    study = optuna.create_study(study_name="drifted")
    keep_study_record(study, tuned_fields=list(CORE_FIELDS))
    rows = [({}, 3.0, "guide defaults"), (SMALL, 1.5, None), (SMALL, 2.5, f"{again_label}1"),
            ({**SMALL, "n_threads": 2}, 2.0, None)]
    for number, (changes, mean, label) in enumerate(rows):
        attrs = trial_attrs(status=Status.OK, settings={**DEFAULTS, **changes}, label=label,
                            stats=TrialStats(mean_s=mean, peak_rss_bytes=1000),
                            remeasures=1 if fields and number == 2 else None)
        study.add_trial(optuna.trial.create_trial(
            value=mean, user_attrs={k: v for k, v in attrs.items() if v is not None}))
    keep(study.set_user_attr, study_attrs(winner=Winner(
        label="trial 3", trial_number=3,
        settings=Settings.from_dict({**DEFAULTS, **SMALL, "n_threads": 2}),
        score_s=2.0, mean_s=2.0, improvement=None)))
    return study


@pytest.mark.parametrize("fields", [True, False], ids=["schema 4", "schema 3 labels"])
def test_a_drifted_trial_counts_nowhere(fields: bool) -> None:
    study = drifted_study(fields=fields)
    assert standing.superseded(study) == {1}
    assert [t.number for t in standing.standing(study)] == [0, 2, 3]
    assert [t.number for t in standing.ranked(study)] == [3, 2, 0]
    # what n_threads bought rests on the re-measurement, not on the drifted run
    assert explain.explanation(study)[1] == (
        "n_threads 2 instead of 8: 0.50 s less per request (trial 3 against trial 2, "
        "otherwise alike)")
    front = {p.trial_number for p in profiles.points_of(study)}
    assert 1 not in front and 2 in front
    assert [t.value for t in tables.feasible_study(study).trials] == [3.0, 2.5, 2.0]


def test_a_trial_measured_on_a_busy_machine_counts_nowhere_either() -> None:
    study = drifted_study(standing.BUSY_LABEL)
    assert [t.number for t in standing.standing(study)] == [0, 2, 3]
    assert "trial 3 against trial 2" in explain.explanation(study)[1]


def test_links_are_fields_and_an_old_label_still_says_them() -> None:
    def read(**attrs: object) -> TrialRecord:
        return TrialRecord.read(optuna.trial.create_trial(value=1.0, user_attrs=trial_attrs(
            status=Status.OK, **attrs)))

    assert read(label=f"{standing.DRIFT_LABEL}12").remeasures == 12
    assert read(label=f"{standing.BUSY_LABEL}3").remeasures == 3
    old_repeat = read(label=f"{standing.REPEAT_LABEL}3")
    assert (old_repeat.repeat_of, old_repeat.remeasures) == (3, None)
    # a label is for people: the field says which trial, whatever the label shows
    assert read(label=f"{standing.REPEAT_LABEL}7", repeat_of=2).repeat_of == 2
    assert read(label="re-measured after drift: trial x").remeasures is None
    assert read(label="guide defaults") == read(label="guide defaults")
    assert read(label="trial 3").remeasures is None and read().repeat_of is None
