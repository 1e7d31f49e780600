"""What `autotune MODEL` is asked to do: every setting of a tuning run, with the tuner's
defaults. The set-up (tune.py) and the tuner's sequence (orchestrate.py) read them, and
so does every benchmark that runs the tuner: the defaults live here alone."""

from __future__ import annotations

from dataclasses import dataclass, field

from autotune.measure.fit import DEFAULT_MARGIN
from autotune.measure.goals import Goals
from autotune.measure.scoring import Weights
from autotune.measure.trial import DEFAULT_TOKENS
from autotune.measure.workload import Workload
from autotune.search import drift
from autotune.search.space import DEFAULT_MIN_CONTEXT


@dataclass
class TuneOptions:
    trials: int = 5  # the study module's docstring says why
    timeout_s: float | None = None  # the search's own limit, seconds
    budget_s: float | None = None  # the whole run's, search and confirmation (budget.py)
    seed: int | None = None
    workload: Workload | None = None
    tokens_per_request: int = DEFAULT_TOKENS
    clients: int = 1
    extended: bool = False
    fixed: dict[str, object] = field(default_factory=dict)
    finalists: int = 3
    rounds: int = 2
    weights: Weights = field(default_factory=Weights)
    goals: Goals = field(default_factory=Goals)
    trial_timeout_s: float | None = None  # None: follows the measured cost (search/costs.py)
    study_name: str | None = None
    studies_dir: str | None = None
    storage: str | None = None
    out: str | None = "jarvis.env"
    fmt: str = "shell"
    force: bool = False
    wait: bool = True
    min_context: int = DEFAULT_MIN_CONTEXT  # no smaller window is a candidate
    warm_start: bool = True  # a new study starts from earlier similar studies' winners
    anchor_every: int = drift.ANCHOR_EVERY  # trials between drift checks; 0: none
    busy_limit: float = drift.BUSY_LIMIT  # others' CPU (% of a core) to re-measure at; 0: never
    racing: bool = True  # a finalist clearly behind runs no further confirmation round
    gpu_margin: int = DEFAULT_MARGIN  # left free on each offload device (measure/fit.py)
