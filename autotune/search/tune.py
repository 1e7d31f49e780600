"""`autotune MODEL`: search, confirm, export, as one library call.

Example:
    >>> summary = tune(demo_model_path(), TuneOptions(trials=12))  # doctest: +SKIP
    >>> summary["best"]["JARVIS_N_THREADS"], round(summary["improvement"]["speedup"], 1)
    ('2', 2.3)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import optuna

from autotune.errors import MeasurementFailed
from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.hardware import detect
from autotune.measure.machine_lock import MachineLock
from autotune.measure.model import inspect_model
from autotune.measure.settings import Settings
from autotune.measure.trial import DEFAULT_TOKENS
from autotune.measure.workload import Workload, builtin_workload
from autotune.safe_text import visible
from autotune.search.confirm import BASELINE, Candidate, confirm
from autotune.search.scoring import Weights
from autotune.search.space import build_space
from autotune.search.study import Event, Measurement, open_study, ranked_feasible, search
from autotune.studies import export
from autotune.studies.storage import location, open_storage


@dataclass
class TuneOptions:
    trials: int = 12
    timeout_s: float | None = None
    seed: int | None = None
    workload: Workload | None = None
    tokens_per_request: int = DEFAULT_TOKENS
    clients: int = 1
    extended: bool = False
    fixed: dict[str, object] = field(default_factory=dict)
    finalists: int = 3
    rounds: int = 2
    weights: Weights = field(default_factory=Weights)
    trial_timeout_s: float = 300.0
    study_name: str | None = None
    studies_dir: str | None = None
    storage: str | None = None
    out: str | None = "jarvis.env"
    fmt: str = "shell"
    force: bool = False
    wait: bool = True


def default_study_name(model_path: str, host: str) -> str:
    """The model file's name and the host: `SmolLM2-135M-Instruct.Q4_1@laptop`.

    A downloaded file's name may hold control characters; the study is named with them
    escaped (safe_text.visible), so the name can be typed back and shown as it is kept.
    """
    stem = os.path.basename(model_path)
    return visible(f"{stem.removesuffix('.gguf')}@{host}")


def finalists(study: optuna.Study, count: int) -> list[Candidate]:
    """The best `count` feasible trials with distinct settings, then the guide's defaults."""
    chosen: list[Candidate] = []
    seen = set()
    for trial in ranked_feasible(study):
        key = tuple(sorted(trial.user_attrs["settings"].items()))
        if trial.user_attrs.get("label") == BASELINE:
            continue  # the guide's defaults are re-measured as the baseline anyway
        if key not in seen and len(chosen) < count:
            seen.add(key)
            label = f"trial {trial.number}"
            chosen.append(Candidate(label, Settings.from_dict(trial.user_attrs["settings"]),
                                    trial.number))
    return [*chosen, Candidate(BASELINE, Settings(**GUIDE_DEFAULTS))]


def representative(runs: list[dict], label: str) -> dict | None:
    """A candidate's run with the median score: the one its report columns show."""
    ok = sorted((r for r in runs if r["label"] == label and "score" in r),
                key=lambda r: r["score"]["total_s"])
    return ok[(len(ok) - 1) // 2] if ok else None


def tune(model_path: str | os.PathLike[str], options: TuneOptions,
         on_event: Event | None = None) -> dict[str, object]:
    """Search, confirm against the guide's defaults, and write the export script."""
    model = inspect_model(model_path)
    if options.out:
        export.check_writable(options.out, options.force)
    export.check_format(options.fmt)
    machine = detect()
    space = build_space(model, machine, options.extended, options.fixed)
    lock = MachineLock(wait=options.wait, on_wait=None if on_event is None else
                       lambda holder: on_event("waiting", {"holder": holder.describe()}))
    measurement = Measurement(options.workload or builtin_workload(), options.tokens_per_request,
                              options.clients, options.trial_timeout_s, options.weights, lock)
    storage = open_storage(options.studies_dir, options.storage)
    name = options.study_name or default_study_name(model.path, machine.host)
    study = open_study(name, storage, model, machine, measurement, space, options.seed)
    if on_event is not None:
        on_event("start", {"study": name, "storage": location(options.studies_dir,
                                                               options.storage),
                           "resumed": len(study.trials) > 2, "notes": space.notes,
                           "space": space.describe()})
    search(study, model, space, measurement, machine.host, options.trials, options.timeout_s,
           on_event)
    candidates = finalists(study, options.finalists)
    if len(candidates) == 1:
        raise MeasurementFailed(f"study {name!r}: no trial finished without failing or "
                            "overflowing the context, so there is nothing to confirm; see "
                            f"`autotune show {name}`")
    outcome = confirm(candidates, lambda s: measurement.run(model, s), options.rounds,
                      options.weights, options.seed, on_event)
    winner = outcome["winner"]
    if winner is None:
        raise MeasurementFailed(f"study {name!r}: no finalist finished every confirmation "
                                "round")
    study.set_user_attr("confirmation", {k: outcome[k] for k in ("runs", "candidates")})
    study.set_user_attr("winner", {
        "label": winner["label"], "trial_number": winner["trial_number"],
        "settings": winner["settings"], "score_s": winner["median_score_s"],
        "mean_s": winner["median_mean_s"], "improvement": outcome["improvement"],
        "confirmed": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    text = export.export_text(study, fmt=options.fmt)
    written = export.write(options.out, text, options.force) if options.out else None
    best = Settings.from_dict(winner["settings"])
    baseline_run = representative(outcome["runs"], BASELINE)
    winner_run = representative(outcome["runs"], winner["label"])
    return {
        "study_name": name,
        "storage": location(options.studies_dir, options.storage),
        "n_trials": len(study.trials),
        "best": best.to_env(space.tuned_fields),
        "winner": {"label": winner["label"], "trial_number": winner["trial_number"],
                   "score_s": winner["median_score_s"],
                   "stats": winner_run["stats"] if winner_run else None},
        "baseline": {"settings": Settings(**GUIDE_DEFAULTS).to_env(space.tuned_fields),
                     "score_s": next((c["median_score_s"] for c in outcome["candidates"]
                                      if c["label"] == BASELINE), None),
                     "stats": baseline_run["stats"] if baseline_run else None},
        "improvement": outcome["improvement"],
        "candidates": outcome["candidates"],
        "notes": space.notes,
        "out": str(written) if written else None,
        "export": text,
    }
