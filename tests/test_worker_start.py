"""The worker start-up benchmark: its options, and that it starts this worker as trials do."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from autotune.measure import trial
from autotune.measure.model import demo_model_path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "worker_start.py"


def load_script():
    spec = importlib.util.spec_from_file_location("worker_start", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_options_parse() -> None:
    script = load_script()
    defaults = script.parse_args([])
    assert (defaults.refs, defaults.rounds, defaults.json) == (["2b1c07e", "worktree"], 5, None)
    given = script.parse_args(["--refs", "HEAD~1", "worktree", "--rounds", "2", "--json", "x"])
    assert (given.refs, given.rounds, given.json) == (["HEAD~1", "worktree"], 2, "x")


def test_this_tree_is_started_as_its_trial_starts_it() -> None:
    script = load_script()
    found = script.layout(script.REPO, demo_model_path())
    assert found["module"] == "autotune.measure.worker"
    assert found["command"] == [*trial.worker_command()[:-1], str(script.REPO)]
    assert found["spec"]["model_path"] == str(demo_model_path())
