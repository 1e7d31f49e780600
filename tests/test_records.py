"""The typed records: the worker's wire protocol, results read back, study schemas checked."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import keep_study_record

from autotune.cli import cli
from autotune.measure.records import (
    EVENTS,
    OUTPUT_VERSION,
    BadEvent,
    Done,
    EventKind,
    Loaded,
    LoadFailed,
    PassEnd,
    ProbeRequest,
    RequestRecord,
    Status,
    ThreadProbe,
    TrialResult,
    Warmup,
    decode_event,
    encode_event,
)
from autotune.measure.settings import Settings
from autotune.studies.records import (
    SCHEMA_VERSION,
    StudyRecord,
    TrialRecord,
    schema_of,
    trial_attrs,
)
from autotune.studies.storage import open_storage

EXAMPLES = [Loaded(load_s=0.2, n_ctx=1024, rss_bytes=10), Warmup(latency_s=0.1),
            RequestRecord(id="a/1", index=0, latency_s=0.5, rss_bytes=10, cache_hit=True),
            PassEnd(rss_bytes=11, pass_no=1), ProbeRequest(threads=2, latency_s=0.3),
            ThreadProbe(configured_threads=4, configured_s=0.9, physical_threads=2,
                        physical_s=0.4),
            LoadFailed(error="ValueError: no"), Done()]


def test_every_event_kind_has_one_record() -> None:
    assert set(EVENTS) == {kind.value for kind in EventKind}
    assert {type(e).kind for e in EXAMPLES} == set(EventKind)


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_an_event_goes_over_the_wire_and_back(event: object) -> None:
    line = encode_event(event, t=1.25)  # type: ignore[arg-type]
    assert "\n" not in line
    assert json.loads(line)["event"] == type(event).kind.value
    assert decode_event(line) == event


@pytest.mark.parametrize("line", ["not json", "[1, 2]", '"loaded"', '{"load_s": 1}',
                                  '{"event": "unheard-of", "x": 1}', ""])
def test_a_line_that_is_no_event_is_none(line: str) -> None:
    assert decode_event(line) is None


def test_an_event_without_the_fields_the_parent_reads_is_bad() -> None:
    with pytest.raises(BadEvent, match="worker sent a loaded event without load_s"):
        decode_event('{"event": "loaded", "t": 0.1}')
    with pytest.raises(BadEvent, match="request event without index, latency_s, rss_bytes"):
        decode_event('{"event": "request", "id": "a/1"}')


def test_a_status_is_its_text() -> None:
    assert Status.OK == "ok" and json.dumps([Status.TIMED_OUT]) == '["timed_out"]'
    assert Status("out_of_memory") is Status.OUT_OF_MEMORY
    assert [s for s in Status if s.failed] == [
        Status.CRASHED, Status.OUT_OF_MEMORY, Status.GPU_OUT_OF_MEMORY, Status.DEVICE_FAILED,
        Status.TIMED_OUT, Status.LOAD_FAILED, Status.FAILED, Status.INTERRUPTED]


def test_a_trial_result_reads_back_from_its_json() -> None:
    result = TrialResult(status=Status.OK, load_s=0.2, requests=[EXAMPLES[2]],
                         thread_probe=EXAMPLES[5], pass_rss_bytes=[1, 2])  # type: ignore[list-item, arg-type]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["version"] == OUTPUT_VERSION
    back = TrialResult.from_dict(data)
    assert back == result and back.status is Status.OK


# --- study records and their schema ----------------------------------------------------

def journal_study(folder: Path, name: str = "s") -> optuna.Study:
    storage = open_storage(str(folder), None)
    study = optuna.create_study(study_name=name, storage=storage)
    study.add_trial(optuna.trial.create_trial(
        value=0.5, user_attrs={"status": "ok", "latencies": [0.5] * 4,
                               "settings": {"n_threads": 2},
                               "stats": {"mean_s": 0.5, "requests_done": 4}}))
    return study


def as_schema_one(study: optuna.Study) -> None:
    """What autotune wrote before the schema had an attribute of its own."""
    keep_study_record(study, versions={"autotune": "0.1.0", "llama_cpp_python": "0.3.36",
                                       "optuna": "4.5.0", "schema": "1"},
                      tuned_fields=["n_threads"], drop=("schema",))


def test_a_study_of_schema_one_is_read(tmp_path: Path) -> None:
    study = journal_study(tmp_path)
    as_schema_one(study)
    assert "schema" not in study.user_attrs and schema_of(study.user_attrs) == 1
    record = StudyRecord.read(study)
    assert (record.schema, record.model.name, record.winner) == (1, "m", None)
    (trial,) = study.get_trials()
    kept = TrialRecord.read(trial)
    assert kept.stats is not None and kept.stats.pass_mean_s == ()  # not kept then
    done = CliRunner().invoke(cli, ["show", "s", "--studies-dir", str(tmp_path), "--json"])
    assert done.exit_code == 0, done.output
    shown = json.loads(done.output)
    assert (shown["version"], shown["kind"], shown["schema"]) == (OUTPUT_VERSION, "show", 1)


@pytest.mark.parametrize("command", [["show", "s"], ["export", "s"], ["compare"]])
def test_a_study_from_a_newer_autotune_is_refused_in_one_line(tmp_path: Path,
                                                              command: list[str]) -> None:
    study = journal_study(tmp_path)
    keep_study_record(study, schema=SCHEMA_VERSION + 1)
    done = CliRunner().invoke(cli, [*command, "--studies-dir", str(tmp_path)])
    assert done.exit_code == 2
    assert done.output == (f"autotune: error: study 's' was written by a newer autotune "
                           f"(record schema {SCHEMA_VERSION + 1}; this one reads 1 to "
                           f"{SCHEMA_VERSION}); upgrade autotune to read it\n")


def test_a_study_autotune_did_not_write_is_refused(tmp_path: Path) -> None:
    journal_study(tmp_path, name="plain optuna")
    done = CliRunner().invoke(cli, ["show", "plain optuna", "--studies-dir", str(tmp_path)])
    assert done.exit_code == 2
    assert "is not an autotune study" in done.output and done.output.count("\n") == 1


def test_a_damaged_trial_record_is_one_line_naming_the_trial(tmp_path: Path) -> None:
    study = journal_study(tmp_path)
    keep_study_record(study, tuned_fields=["n_threads"])
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"stats": "garbage"}))
    done = CliRunner().invoke(cli, ["show", "s", "--studies-dir", str(tmp_path)])
    assert done.exit_code == 2
    assert done.output.startswith("autotune: error: study 's', trial 1: its record cannot be "
                                  "read (TrialStats: expected an object")


def test_kept_settings_read_back_as_settings_the_fields_they_lack_at_their_defaults() -> None:
    trial = optuna.trial.create_trial(value=0.5, user_attrs={
        "settings": {"n_threads": 2, "a_newer_setting": 1}})
    kept = TrialRecord.read(trial)
    assert kept.settings == Settings(n_threads=2)
    assert trial_attrs(settings=kept.settings)["settings"] == Settings(n_threads=2).to_dict()


def test_damaged_settings_are_one_line_naming_the_trial(tmp_path: Path) -> None:
    study = journal_study(tmp_path)
    keep_study_record(study, tuned_fields=["n_threads"])
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={
        "settings": {"n_threads": "two"}}))
    done = CliRunner().invoke(cli, ["show", "s", "--studies-dir", str(tmp_path)])
    assert done.exit_code == 2
    assert done.output.startswith("autotune: error: study 's', trial 1: its record cannot be "
                                  "read (settings: JARVIS_N_THREADS='two'")


def test_a_killed_tuners_trial_reads_as_interrupted() -> None:
    trial = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                      user_attrs={"host": "box", "pid": 1})
    assert TrialRecord.read(trial).status is Status.INTERRUPTED


def test_the_compare_json_carries_its_version(tmp_path: Path) -> None:
    study = journal_study(tmp_path)
    keep_study_record(study, tuned_fields=["n_threads"])
    done = CliRunner().invoke(cli, ["compare", "--studies-dir", str(tmp_path), "--json"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.output)
    assert (data["version"], data["kind"]) == (OUTPUT_VERSION, "compare")
    (row,) = data["studies"]
    assert (row["study"], row["schema"], row["ok"], row["best_mean_s"]) == ("s", SCHEMA_VERSION, 1,
                                                                              0.5)


def test_a_new_study_record_round_trips(tmp_path: Path) -> None:
    study = journal_study(tmp_path)
    keep_study_record(study)
    record = StudyRecord.read(study)
    assert record.schema == SCHEMA_VERSION
    assert dataclasses.replace(record) == StudyRecord.from_attrs("s", record.attrs())
