"""The examples in the package's docstrings run, against the real demo model where they
measure (those are slow: a real trial, bench and study each)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

from autotune.measure.model import demo_model_path
from autotune.measure.settings import Settings
from autotune.measure.trial import TrialSpec, run_trial
from autotune.measure.workload import Workload

FAST = ["autotune.safe_text", "autotune.measure.mapping", "autotune.measure.records",
        "autotune.measure.settings",
        "autotune.measure.model", "autotune.measure.gguf_header", "autotune.measure.scoring",
        "autotune.studies.records", "autotune.measure.hardware",
        "autotune.studies.export", "autotune.studies.profiles", "autotune.search.warm",
        "autotune.studies.window", "autotune.search.rounds", "autotune.search.budget"]
MEASURING = ["autotune.measure.trial", "autotune.measure.machine_lock",
             "autotune.measure.bench"]


def run_examples(module_name: str, **names: object) -> None:
    module = importlib.import_module(module_name)
    globs = {**vars(module), "demo_model_path": demo_model_path, "Settings": Settings,
             "TrialSpec": TrialSpec, "run_trial": run_trial, **names}
    result = doctest.testmod(module, globs=globs, optionflags=doctest.ELLIPSIS,
                             raise_on_error=False, report=True)
    assert result.attempted > 0, f"{module_name} has no example"
    assert result.failed == 0, f"{module_name}: {result.failed} example(s) failed"


@pytest.mark.parametrize("module_name", FAST)
def test_examples(module_name: str) -> None:
    run_examples(module_name)


@pytest.mark.slow
@pytest.mark.parametrize("module_name", MEASURING)
def test_measuring_examples(module_name: str, tiny_workload: Workload) -> None:
    run_examples(module_name, workload=tiny_workload)


@pytest.mark.slow
def test_tune_and_tables_examples(tiny_workload: Workload, tmp_path: Path) -> None:
    folder = str(tmp_path / "studies")
    run_examples("autotune.search.tune", workload=tiny_workload, folder=folder)
    from autotune.studies.storage import open_storage, study_names

    (study,) = study_names(open_storage(folder, create=False))
    run_examples("autotune.studies.tables", folder=folder, study=study)
