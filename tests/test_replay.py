"""The replay benchmark's logic on a small synthetic grid: nothing is measured."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import optuna
import pytest

from autotune.measure.records import RequestRecord, Status
from autotune.measure.scoring import score
from autotune.measure.settings import Settings
from tests.conftest import load_benchmark as load
from tests.conftest import make_hardware, make_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
REQUESTS = 8
OVERHEAD_S = 2.0


def speed(settings: dict) -> float:
    """A made-up truth: 2 threads fast, cache helps when it holds 4, big windows cost."""
    base = 1.0 if settings["n_threads"] == 2 else 1.6
    if settings["n_threads"] == 8:
        base = 3.0
    if settings["enable_context_cache"]:
        base *= 0.7 if settings["max_cache_size"] >= 4 else 1.2
    return base * (1 + settings["context_window"] / 16384)


def synthetic_grid(repeats: int = 3, seed: int = 0) -> dict:
    grid_truth = load("grid_truth")
    from autotune.search.space import MIN_CONTEXT, build_space

    machine = make_hardware(logical_cores=2, physical_cores=2)
    model = make_model()  # trained on 8192: the advice's 8192 window lies beside the grid
    space = build_space(model, machine, min_context=MIN_CONTEXT)  # the whole range
    cells = grid_truth.grid_cells(space, space.baselines(model, machine), (1024, 4096),
                                  (1, 100))
    rng = random.Random(seed)
    runs = []
    for index, cell in enumerate(cells):
        for repeat in range(repeats):
            mean = speed(cell["settings"])
            latencies = [mean * rng.uniform(0.9, 1.1) for _ in range(REQUESTS)]
            overflow = cell["settings"]["context_window"] == 1024 and \
                cell["settings"]["n_threads"] == 1 and not cell["settings"]["enable_context_cache"]
            requests = [RequestRecord(id=str(i), index=i, latency_s=x, rss_bytes=1,
                                      reload=overflow and i == REQUESTS - 1).to_dict()
                        for i, x in enumerate(latencies)]
            runs.append({"cell": index, "repeat": repeat, "phase": "grid", "status": "ok",
                         "reason": "", "wall_s": sum(latencies) + OVERHEAD_S, "load_s": 0.5,
                         "warmup_s": 0.1, "peak_rss_bytes": 1, "cpu_percent_mean": 100.0,
                         "other_cpu_percent_mean": 0.0, "reloads": int(overflow),
                         "latencies": latencies, "score_s": score(latencies).total_s,
                         "requests": requests})
    return {"format": "autotune-grid", "format_version": 1, "created": "today",
            "machine": machine.to_dict(), "model": model.to_dict(),
            "versions": {"autotune": "0", "llama_cpp_python": "0", "optuna": "0"},
            "workload": {"name": "builtin", "hash": "h", "requests": REQUESTS},
            "tokens_per_request": 8, "repeats": repeats, "weights": {
                "spike_weight": 2.0, "spike_factor": 3.0, "spike_limit_s": 5.0,
                "cv_weight": 1.0, "cv_limit": 0.5},
            "space": {"n_threads": [1, 2], "context_choices": [1024, 4096], "gpu_layers": None,
                      "cache_sizes": [1, 100], "fixed": {"n_gpu_layers": 0}, "notes": []},
            "cells": cells, "runs": runs, "other_cpu_percent_median": 0.0}


@pytest.fixture(scope="module")
def grid():
    return load("replay").Grid.from_doc(synthetic_grid())


def test_true_scores_optimum_and_infeasible_cells(grid) -> None:
    best = min(grid.true, key=grid.true.get)
    assert grid.keys[best] == "t2 c1024 cache100"
    overflowing = grid.keys.index("t1 c1024 nocache")
    assert overflowing not in grid.true and grid.regret(overflowing) == math.inf
    assert grid.regret(best) == 0.0
    assert grid.regret(None) == math.inf
    assert grid.keys[-2:] == ["t2 c8192 cache100", "t8 c4096 cache100"]  # the baselines


def test_the_replayed_space_is_the_measured_product(grid) -> None:
    replay = load("replay")
    assert grid.values("context_window") == [1024, 4096] and grid.cache_sizes() == [1, 100]
    assert grid.space().context_choices == (1024, 4096)
    # the advice's window is outside the product: a replayed study never reaches it...
    advice = grid.keys.index("t2 c8192 cache100")
    assert advice not in grid.reachable()
    assert grid.keys.index("t8 c4096 cache100") in grid.reachable()
    # ...and files written before cells said whether they belong to it read the same
    doc = synthetic_grid()
    for cell in doc["cells"]:
        del cell["core"]
    assert replay.Grid.from_doc(doc).core() == grid.core()


def test_settings_fall_in_the_nearest_recorded_cell(grid) -> None:
    cell = grid.cell_for(Settings(n_threads=2, context_window=4096, max_cache_size=8))
    assert grid.keys[cell] == "t2 c4096 cache1"  # 8 is nearer 1 than 100 in log
    cell = grid.cell_for(Settings(n_threads=2, context_window=4096, max_cache_size=64,
                                  n_gpu_layers=-1))  # no offload: layers do not matter
    assert grid.keys[cell] == "t2 c4096 cache100"
    assert grid.keys[grid.cell_for(Settings(n_threads=1, enable_context_cache=False,
                                            context_window=1024))] == "t1 c1024 nocache"
    with pytest.raises(KeyError):
        grid.cell_for(Settings(n_threads=3, context_window=4096))


def test_a_grid_of_one_window_takes_configurations_at_another_to_it(grid) -> None:
    doc = synthetic_grid()
    keep = [i for i, c in enumerate(doc["cells"]) if c["settings"]["context_window"] == 4096]
    renumber = {old: new for new, old in enumerate(keep)}
    doc["cells"] = [doc["cells"][i] for i in keep]
    doc["runs"] = [{**r, "cell": renumber[r["cell"]]} for r in doc["runs"] if r["cell"] in renumber]
    one = load("replay").Grid.from_doc(doc)
    advice = Settings(n_threads=2, context_window=8192, max_cache_size=100)
    assert one.keys[one.cell_for(advice)] == "t2 c4096 cache100"
    with pytest.raises(KeyError):  # a grid of several windows maps none to another
        grid.cell_for(Settings(n_threads=2, context_window=2048, max_cache_size=100))


def test_a_replayed_trial_streams_requests_and_stops_when_told(grid) -> None:
    replay = load("replay")
    seen: list[int] = []

    def stop_after_three(record: RequestRecord) -> bool:
        seen.append(record.index)
        return len(seen) == 3

    result, took = replay.replay(grid, 0, random.Random(1), 1, stop_after_three)
    assert result.status == Status.PRUNED and seen == [0, 1, 2]
    assert len(result.requests) == 3
    assert took == pytest.approx(OVERHEAD_S + sum(result.latencies))
    full, took_full = replay.replay(grid, 0, random.Random(1), 1, None)
    assert full.ok and len(full.requests) == REQUESTS and took_full > took
    three, _ = replay.replay(grid, 0, random.Random(1), 3, lambda r: False)
    assert [r.index for r in three.requests] == list(range(3 * REQUESTS))


def test_a_replayed_study_runs_the_real_study_code(grid) -> None:
    replay = load("replay")
    run = replay.run_study(grid, replay.STRATEGIES["default"], seed=0, trials=8, budget=6)
    assert len(run["regrets"]) == len(run["times"]) == len(run["cells"]) == 8
    assert run["times"] == sorted(run["times"])
    finite = [r for r in run["regrets"] if r < math.inf]
    assert finite == sorted(finite, reverse=True)  # the incumbent only gets better
    # the guide's baselines go first: the advice, then the defaults (8 threads, pinned)
    assert grid.keys[run["cells"][1]] == "t8 c4096 cache100"
    assert run["confirmed"]["trials"] == 6 and run["confirmed"]["confirm_s"] > 0
    assert run["confirmed"]["regret"] < 0.5


def test_strategies_differ_where_they_should(grid) -> None:
    replay = load("replay")
    optimus = replay.run_study(grid, replay.STRATEGIES["optimus"], seed=1, trials=8, budget=6)
    assert len(optimus["regrets"]) == 45 and optimus["confirmed"] is None
    assert grid.keys[optimus["cells"][0]] != "t8 c4096 cache100"  # no baselines
    # three repeats per trial: about three times a single repeat's time
    assert optimus["times"][0] > 3 * OVERHEAD_S
    nop = replay.run_study(grid, replay.STRATEGIES["no-pruning"], seed=1, trials=8, budget=6)
    assert nop["pruned"] == 0
    whole = replay.run_grid(grid, seed=0)
    assert len(whole["regrets"]) == 12 and whole["regrets"][-1] < 0.1  # the product only


def test_a_repeated_configuration_costs_no_replayed_time(grid) -> None:
    replay = load("replay")
    # without pruning every trial runs whole, so a configuration sampled again is a repeat
    whole = replay.Strategy("reuse", pruner=optuna.pruners.NopPruner)
    again = replay.Strategy("again", pruner=optuna.pruners.NopPruner, reuse_repeats=False)
    reused = replay.run_study(grid, whole, seed=2, trials=30, budget=6)
    measured = replay.run_study(grid, again, seed=2, trials=30, budget=6)
    assert len(reused["regrets"]) == len(measured["regrets"]) == 30
    assert reused["repeats"] > 0 and measured["repeats"] == 0
    assert reused["times"][-1] < measured["times"][-1]
    steps = [b - a for a, b in zip(reused["times"], reused["times"][1:], strict=False)]
    assert steps.count(0.0) >= reused["repeats"] - 1  # a repeat (after the first) is free


def test_main_writes_json_markdown_and_png(tmp_path) -> None:
    replay = load("replay")
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(synthetic_grid()))
    out = tmp_path / "replay"
    replay.main([str(path), "--seeds", "2", "--trials", "6", "--budget", "4",
                 "--strategies", "default,random,grid,gp", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data["summary"]["rows"]) >= {"default", "random", "grid"}
    table = out.with_suffix(".md").read_text()
    assert "| default |" in table and "| grid |" in table
    assert out.with_suffix(".png").stat().st_size > 1000


def test_the_grid_table_ranks_feasible_cells_first(tmp_path, capsys) -> None:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(synthetic_grid()))
    load("grid_truth").main(["--table", str(path)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| t")]
    assert len(rows) == 14
    assert rows[0].startswith("| t2 c1024 cache100 |")
    assert rows[-1].startswith("| t1 c1024 nocache |")  # overflowed: ranked last
    assert any(r.startswith("| t8 c4096 cache100 | guide defaults |") for r in rows)


def test_the_drift_anchor_and_the_baseline_order_are_replayed(grid) -> None:
    replay = load("replay")
    run = replay.run_study(grid, replay.STRATEGIES["default"], seed=3, trials=8, budget=8)
    assert run["anchor_checks"] == 2 and run["anchor_s"] > 0  # after trials 4 and 8
    # the last check runs after the last trial, before confirmation: search time holds it
    assert run["confirmed"]["search_s"] > run["times"][-1]
    off = replay.run_study(grid, replay.STRATEGIES["no-anchor"], seed=3, trials=8, budget=8)
    assert off["anchor_checks"] == 0 and off["anchor_s"] == 0
    before = replay.run_study(grid, replay.STRATEGIES["defaults-first"], seed=3, trials=4,
                              budget=4)
    assert grid.keys[before["cells"][0]] == "t8 c4096 cache100"


def test_the_replay_confirms_with_the_tuner_s_own_sequence_and_defaults(grid) -> None:
    from autotune.search.orchestrate import finalists
    from autotune.search.tune import TuneOptions
    from autotune.studies.records import StudyRecord

    replay = load("replay")
    storage = optuna.storages.InMemoryStorage()
    run = replay.run_study(grid, replay.STRATEGIES["default"], seed=4, trials=6, budget=6,
                           storage=storage)
    study = optuna.load_study(study_name="replay-default-4", storage=storage)
    record = StudyRecord.read(study)
    defaults = TuneOptions()
    # the winner is what the tuner kept in the study, as `autotune MODEL` keeps it
    assert record.winner is not None and record.winner.host == "box"
    assert run["confirmed"]["cell"] == grid.cell_for(record.winner.settings)
    # in the tuner's rounds, with its finalists (and the profiles' trials) before the defaults
    assert run["confirmed"]["rounds"] == defaults.rounds
    assert {r.round for r in record.confirmation.runs} == set(range(defaults.rounds))
    *best, baseline = [c.label for c in finalists(study, defaults.finalists)]
    labels = [c.label for c in record.confirmation.candidates]
    assert labels[:len(best)] == best and labels[-1] == baseline
    assert run["confirmed"]["candidates"] == labels
    # a strategy's options are the tuner's options
    fewer = replay.run_study(grid, replay.Strategy("one-round", options={"rounds": 1}), seed=4,
                             trials=6, budget=6)
    assert fewer["confirmed"]["rounds"] == 1
