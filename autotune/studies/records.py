"""The records a study keeps, one definition each, and the `--json` outputs that show them.

A study keeps its records as Optuna user attributes (so optuna-dashboard shows them too):
the study's (`StudyRecord`: model, machine, versions, what was measured, the search space,
the confirmation and its winner) and each trial's (`TrialRecord`: who ran it, how it ended,
its statistics and latencies). Every reader goes through `StudyRecord.read` and
`TrialRecord.read`; a record that does not have its shape is one error naming the study.

Schema versions (`SCHEMA_VERSION`), checked whenever a study is read:
  1. the version kept only as `versions["schema"]` (a string); trial statistics without
     the per-pass means. Read as they are: every later field takes its default.
  2. the version is a study attribute of its own (`schema`, an int); trial statistics
     keep the per-pass means; confirmation runs keep their request latencies, and the
     improvement its bootstrap interval. A study written by a newer autotune is refused.
     Added later without a new version, since a reader that does not know them ignores
     them: the study's `machine_class` (a study without it belongs to its host alone) and
     each trial's `sampler_seed`, the host that confirmed the winner.
  3. the study's `goals` (measure/goals.py): its objective, targets and memory budgets. A trial's
     value is the objective's quantity, which need not be the score: an autotune that
     reads only 1 and 2 refuses the study rather than rank its values as scores. Studies
     of 1 and 2 read with the default goals (the score, no targets).
  4. a trial's links to other trials are fields of its record: `repeat_of` (the trial
     whose measurement it reused) and `remeasures` (the trial it measured again, after
     drift or on a busy machine). Labels are for people. A trial of a study of 1 to 3 has
     them in its label alone (`repeat of trial 3`, `re-measured after drift: trial 3`),
     which `TrialRecord.read` parses when the fields are absent.

Example:
    >>> schema_of({"model": {}, "versions": {"schema": "1"}}), schema_of({"model": {}, "schema": 2})
    (1, 2)
    >>> StudyRecord.from_attrs("s", {"model": {}, "schema": 9})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    autotune.studies.records.StudyFormatError: study 's' was written by a newer autotune ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from autotune.errors import AutotuneError
from autotune.measure.goals import Goals
from autotune.measure.hardware import Hardware, HardwareClass
from autotune.measure.mapping import RecordError, from_mapping
from autotune.measure.model import ModelInfo
from autotune.measure.records import OUTPUT_VERSION, Status, TrialStats
from autotune.measure.scoring import Score, Weights
from autotune.measure.settings import Settings
from autotune.safe_text import visible

if TYPE_CHECKING:
    import optuna

SCHEMA_VERSION = 4
OLDEST_SCHEMA = 1


class StudyFormatError(AutotuneError):
    """A study this autotune cannot read: too new, not autotune's, or a damaged record."""


# --- the study's records ---------------------------------------------------------------

@dataclass(frozen=True)
class Versions:
    autotune: str
    llama_cpp_python: str
    optuna: str
    schema: str = "1"


@dataclass(frozen=True)
class MeasurementIdentity:
    """What every trial of a study measured; a resumed study must measure the same."""

    workload: str
    workload_hash: str
    requests: int
    tokens_per_request: int
    clients: int


@dataclass(frozen=True)
class SpaceSummary:
    """The search space as the study ran it: its choices, the settings fixed, its notes."""

    n_threads: tuple[int, ...]
    context_window: tuple[int, ...]
    n_gpu_layers: tuple[int, ...] | None
    max_cache_size: tuple[int, ...]
    extended: bool = False
    fixed: dict[str, object] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    # the smallest window a candidate may have (None: a study made before the floor)
    min_context: int | None = None

    @classmethod
    def from_dict(cls, data: object) -> SpaceSummary:
        return from_mapping(cls, data, {
            "n_threads": tuple, "context_window": tuple, "n_gpu_layers": tuple,
            "max_cache_size": tuple, "notes": lambda n: (n,) if isinstance(n, str) else tuple(n)})


@dataclass(frozen=True)
class Improvement:
    """Per confirmation round, the defaults' mean latency over the winner's; and an interval.

    `speedup` is the median of the per-round ratios, `speedup_min`/`speedup_max` their
    range. `low`/`high` bound, at `confidence`, the ratio a fresh A/B of the same two
    configurations should show: a paired bootstrap over the rounds and the requests both
    ran (`requests` of them). Studies confirmed before the interval existed have none.
    `at_least`: every run of the defaults was stopped at a time limit, after
    `stopped_after` of `of_requests` requests at the least, and `speedup` is the lowest
    round's lower bound (confirm.lower_bound).
    """

    speedup: float
    speedup_min: float
    speedup_max: float
    rounds: int
    ratios: tuple[float, ...] = ()
    low: float | None = None
    high: float | None = None
    confidence: float = 0.95
    requests: int = 0
    at_least: bool = False
    stopped_after: int = 0
    of_requests: int = 0

    def describe(self) -> str:
        """One line for the export header and the report."""
        if self.at_least:
            return (f"at least {self.speedup:.2f}x lower mean latency: the guide's defaults "
                    f"were stopped at the limit after {self.stopped_after} of "
                    f"{self.of_requests} requests ({self.rounds} interleaved round(s))")
        if self.low is None or self.high is None:
            return (f"{self.speedup:.2f}x lower mean latency (range {self.speedup_min:.2f}x-"
                    f"{self.speedup_max:.2f}x over {self.rounds} interleaved rounds)")
        return (f"{self.speedup:.2f}x lower mean latency ({self.confidence:.0%} of fresh A/Bs "
                f"within {self.low:.2f}x-{self.high:.2f}x: paired bootstrap over {self.rounds} "
                f"interleaved rounds x {self.requests} requests)")


@dataclass(frozen=True)
class ConfirmRun:
    """One confirmation run of one candidate."""

    round: int
    label: str
    status: Status
    reason: str
    trial_number: int | None
    settings: Settings
    stats: TrialStats
    score: Score | None = None
    # each finished request's latency by its index in the workload (schema 2 and later)
    latencies: dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: object) -> ConfirmRun:
        return from_mapping(cls, data, {
            "status": Status, "settings": Settings.from_record, "stats": TrialStats.from_dict,
            "score": lambda d: from_mapping(Score, d),
            "latencies": lambda d: {int(k): float(v) for k, v in d.items()}})


@dataclass(frozen=True)
class CandidateResult:
    """A finalist (or the guide's defaults) over all confirmation rounds."""

    label: str
    trial_number: int | None
    settings: Settings
    runs: int
    ok_runs: int
    median_score_s: float | None
    median_mean_s: float | None
    # the median over its rounds of the study's objective, and of each limit it missed
    # there (a candidate that missed one cannot win); absent before goals (schema 3)
    median_objective: float | None = None
    missed: tuple[str, ...] = ()
    dropped: str = ""  # why racing ran it in no further round (confirm.clearly_behind)

    @classmethod
    def from_dict(cls, data: object) -> CandidateResult:
        return from_mapping(cls, data, {"settings": Settings.from_record, "missed": tuple})

    @property
    def complete(self) -> bool:
        """Finished every round it ran."""
        return self.runs > 0 and self.ok_runs == self.runs


@dataclass(frozen=True)
class Confirmation:
    runs: tuple[ConfirmRun, ...]
    candidates: tuple[CandidateResult, ...]

    @classmethod
    def from_dict(cls, data: object) -> Confirmation:
        return from_mapping(cls, data, {
            "runs": lambda rows: tuple(ConfirmRun.from_dict(r) for r in rows),
            "candidates": lambda rows: tuple(CandidateResult.from_dict(r) for r in rows)})

    def candidate(self, label: str) -> CandidateResult | None:
        return next((c for c in self.candidates if c.label == label), None)


@dataclass(frozen=True)
class Winner:
    """The confirmed winner: the finalist with the lowest median score over the rounds."""

    label: str
    trial_number: int | None
    settings: Settings
    score_s: float
    mean_s: float
    improvement: Improvement | None
    confirmed: str = ""
    host: str = ""  # that ran the confirmation
    # why a larger context window was chosen over the best median score ("" when it was not)
    tie_break: str = ""
    objective_value: float | None = None  # median over the rounds (schema 3 and later)

    @classmethod
    def from_dict(cls, data: object) -> Winner:
        return from_mapping(cls, data, {"settings": Settings.from_record,
                                        "improvement": from_improvement})


@dataclass(frozen=True)
class Profile:
    """One of a study's profiles (`fast`, `balanced`, `lean`; see studies/profiles.py).

    `value_s` and `memory_bytes` are from its search trial; when it was re-measured in
    confirmation, `confirmed` is true and the confirmed medians are kept beside them.
    """

    name: str
    trial_number: int | None
    settings: Settings
    value_s: float
    memory_bytes: int
    confirmed: bool = False
    confirmed_value_s: float | None = None
    confirmed_memory_bytes: int | None = None
    rounds: int = 0
    label: str = ""  # the candidate it was confirmed as: `trial 7`, `guide defaults`
    # its search numbers' requests when its trial was pruned (an estimate); 0: a whole run
    estimated_from: int = 0

    @property
    def shown_value_s(self) -> float:
        return self.confirmed_value_s if self.confirmed_value_s is not None else self.value_s

    @property
    def shown_memory_bytes(self) -> int:
        memory = self.confirmed_memory_bytes
        return memory if memory is not None else self.memory_bytes

    @property
    def search_run(self) -> str:
        return (f"estimated from the {self.estimated_from} requests its pruned trial ran"
                if self.estimated_from else "measured once in the search")

    def describe(self) -> str:
        """One line: `lean: trial 4, 0.812 s, peak memory 212 MiB, confirmed over 2 rounds`."""
        where = self.label or (f"trial {self.trial_number}" if self.trial_number is not None
                               else "")
        how = (f"confirmed over {self.rounds} round{'s' if self.rounds != 1 else ''}"
               if self.confirmed else f"unconfirmed: {self.search_run}")
        return (f"{self.name}: {where}, {self.shown_value_s:.3f} s, peak memory "
                f"{self.shown_memory_bytes / 2**20:.0f} MiB, {how}")


def from_profiles(data: object) -> dict[str, Profile]:
    if not isinstance(data, Mapping):
        raise RecordError(f"profiles: expected an object, got {type(data).__name__}")
    return {str(name): from_mapping(Profile, value, {"settings": Settings.from_record})
            for name, value in data.items()}


def from_improvement(data: object) -> Improvement:
    return from_mapping(Improvement, data, {"ratios": tuple})


@dataclass(frozen=True)
class AnchorCheck:
    """One re-run of the drift anchor during a search (search/drift.py)."""

    after_trial: int  # the last trial measured before it
    anchor_trial: int  # the trial whose configuration and first requests it re-ran
    ratio: float  # its requests' total over the same requests of that trial
    drifted: bool
    requeued: tuple[int, ...] = ()  # trials queued again because of it
    host: str = ""
    at: str = ""

    @classmethod
    def from_dict(cls, data: object) -> AnchorCheck:
        return from_mapping(cls, data, {"requeued": tuple})


@dataclass(frozen=True)
class StudyRecord:
    """What a study keeps about itself (its Optuna user attributes), typed."""

    model: ModelInfo
    hardware: Hardware
    versions: Versions
    measurement: MeasurementIdentity
    weights: Weights
    created: str = ""
    schema: int = SCHEMA_VERSION
    space: SpaceSummary | None = None
    tuned_fields: tuple[str, ...] = ()
    confirmation: Confirmation | None = None
    winner: Winner | None = None
    # The kind of machine any host may join the study from; None: the study belongs to
    # the host in `hardware` alone (studies made before machine classes).
    machine_class: HardwareClass | None = None
    # The front's fastest, knee and leanest, written with the winner (studies/profiles.py).
    profiles: dict[str, Profile] | None = None
    # What the study minimises and its limits; None: a study older than goals (the score).
    goals: Goals | None = None
    # Each check of the drift anchor (search/drift.py), in the order they ran.
    anchors: tuple[AnchorCheck, ...] = ()

    # The attributes written when a study is created, in this order (`schema` last: a tuner
    # joining a study being created waits for it); `space` and `tuned_fields` on every
    # run, `confirmation` and `winner` once a winner is confirmed.
    CREATED: ClassVar[tuple[str, ...]] = ("model", "hardware", "versions", "measurement",
                                          "weights", "created", "machine_class", "goals",
                                          "schema")

    @classmethod
    def read(cls, study: optuna.Study) -> StudyRecord:
        """The study's record, its schema checked; StudyFormatError when it cannot be read."""
        return cls.from_attrs(study.study_name, study.user_attrs)

    @classmethod
    def from_attrs(cls, name: str, attrs: Mapping[str, object]) -> StudyRecord:
        shown = visible(repr(name), 80)
        schema = schema_of(attrs)
        if schema is None:
            raise StudyFormatError(f"study {shown} is not an autotune study (it keeps no record "
                                   "of its model and machine)")
        if schema > SCHEMA_VERSION:
            raise StudyFormatError(f"study {shown} was written by a newer autotune (record "
                                   f"schema {schema}; this one reads {OLDEST_SCHEMA} to "
                                   f"{SCHEMA_VERSION}); upgrade autotune to read it")
        if schema < OLDEST_SCHEMA:
            raise StudyFormatError(f"study {shown} has record schema {schema}, older than any "
                                   "this autotune reads")
        try:
            return from_mapping(cls, {**attrs, "schema": schema}, {
                "model": ModelInfo.from_dict, "hardware": Hardware.from_dict,
                "versions": lambda d: from_mapping(Versions, d),
                "measurement": lambda d: from_mapping(MeasurementIdentity, d),
                "weights": lambda d: from_mapping(Weights, d),
                "space": SpaceSummary.from_dict, "tuned_fields": tuple,
                "confirmation": Confirmation.from_dict, "winner": Winner.from_dict,
                "machine_class": HardwareClass.from_dict, "profiles": from_profiles,
                "goals": Goals.from_dict, "anchors": lambda rows: tuple(
                    AnchorCheck.from_dict(r) for r in rows)})
        except (RecordError, TypeError, ValueError) as err:
            raise StudyFormatError(f"study {shown}: its record cannot be read "
                                   f"({visible(err, 120)})") from None

    def attrs(self) -> dict[str, object]:
        """The user attributes written when the study is created."""
        return study_attrs(**{key: getattr(self, key) for key in self.CREATED
                              if getattr(self, key) is not None})


def schema_of(attrs: Mapping[str, object]) -> int | None:
    """The record schema a study was written with; None when it is no autotune study."""
    schema = attrs.get("schema")
    if schema is None:
        versions = attrs.get("versions")
        schema = versions.get("schema") if isinstance(versions, Mapping) else None
    if not isinstance(schema, (int, float, str)) or "model" not in attrs:
        return None
    try:
        return int(schema)
    except (TypeError, ValueError):
        return None


# --- a trial's records -----------------------------------------------------------------

@dataclass(frozen=True)
class TrialRecord:
    """What a trial keeps (its Optuna user attributes), typed.

    `host`, `pid` and `pid_started` are written first, before anything is measured, so
    another tuner can tell whether the trial's owner is alive; with them the seed of the
    owner's sampler (each tuner process of a study samples with its own). A trial whose tuner was
    killed has no status of its own: it reads as INTERRUPTED once it is FAIL.
    """

    host: str | None = None
    pid: int | None = None
    pid_started: float | None = None
    sampler_seed: int | None = None  # of the tuner process that ran it
    label: str | None = None
    pinned: dict[str, object] = field(default_factory=dict)
    status: Status | None = None
    reason: str = ""
    stats: TrialStats | None = None
    latencies: tuple[float, ...] = ()
    settings: Settings | None = None
    stderr_tail: str = ""
    score: Score | None = None
    infeasible: str | None = None
    # llama.cpp's buffers by name and kind, bytes: where the layers went (RPC0[...], CUDA0)
    buffers: dict[str, dict[str, int]] = field(default_factory=dict)
    repeat_of: int | None = None  # the trial whose measurement this one reused
    remeasures: int | None = None  # the trial this one measured again (drift, a busy machine)

    @classmethod
    def read(cls, trial: optuna.trial.FrozenTrial | optuna.Trial, study_name: str = ""
             ) -> TrialRecord:
        """The trial's record; StudyFormatError naming the study and trial when malformed."""
        from optuna.trial import TrialState

        try:
            record = from_mapping(cls, trial.user_attrs, {
                "status": Status, "stats": TrialStats.from_dict, "latencies": tuple,
                "settings": Settings.from_record, "score": lambda d: from_mapping(Score, d)})
        except (RecordError, TypeError, ValueError) as err:
            raise StudyFormatError(f"study {visible(repr(study_name), 80)}, trial "
                                   f"{trial.number}: its record cannot be read "
                                   f"({visible(err, 120)})") from None
        if record.status is None and getattr(trial, "state", None) == TrialState.FAIL:
            record = dataclasses.replace(record, status=Status.INTERRUPTED)
        if record.repeat_of is None and record.remeasures is None and record.label:
            record = dataclasses.replace(record, **links_in_label(record.label))
        return record


REPEAT_LABEL = "repeat of trial "  # a trial that reused an earlier one's measurement
DRIFT_LABEL = "re-measured after drift: trial "
BUSY_LABEL = "re-measured on a busy machine: trial "


def links_in_label(label: str) -> dict[str, Any]:
    """`repeat_of` or `remeasures` as a label of schema 1 to 3 said them; {} for others."""
    for prefix, name in ((REPEAT_LABEL, "repeat_of"), (DRIFT_LABEL, "remeasures"),
                         (BUSY_LABEL, "remeasures")):
        number = label.removeprefix(prefix)
        if label.startswith(prefix) and number.isdigit():
            return {name: int(number)}
    return {}


def trial_attrs(**fields: object) -> dict[str, object]:
    """User attributes for the given TrialRecord fields, as JSON-ready values."""
    return attrs_of(TrialRecord, fields)


def study_attrs(**fields: object) -> dict[str, object]:
    """User attributes for the given StudyRecord fields, as JSON-ready values."""
    return attrs_of(StudyRecord, fields)


def attrs_of(record: type, fields: dict[str, object]) -> dict[str, object]:
    unknown = set(fields) - {f.name for f in dataclasses.fields(record)}
    if unknown:
        raise TypeError(f"not {record.__name__} fields: {', '.join(sorted(unknown))}")
    return {name: as_json(value) for name, value in fields.items()}


def keep(set_user_attr: Callable[[str, object], object], attrs: dict[str, object]) -> None:
    """Write `attrs` with a study's, a trial's or a storage's `set_*_user_attr`."""
    for key, value in attrs.items():
        set_user_attr(key, value)


# --- the --json outputs of the study commands ------------------------------------------

@dataclass(frozen=True)
class CostBreakdown:
    """Where a run's wall time went, in seconds (search/costs.py adds it up); the parts
    add up to `total_s`. `--json` keeps it under its labels (`LABELS`), as reports print
    them."""

    requests_s: float = 0.0  # the measured requests (what the study is for)
    worker_start_s: float = 0.0  # spawn until each worker starts loading the model
    inspection_s: float = 0.0  # reading the model's GGUF header
    load_s: float = 0.0  # the model's load in each worker
    warmup_s: float = 0.0  # the warm-up request in each worker
    trial_rest_s: float = 0.0  # the rest of each trial: reading events, exit, reaping
    lock_wait_s: float = 0.0  # waiting for another measurement on the machine
    setup_s: float = 0.0  # opening the storage and the study, enqueuing baselines
    anchor_s: float = 0.0  # the drift anchor's checks, waiting included
    outside_s: float = 0.0  # the sampler, storage and records around the trials

    LABELS: ClassVar[dict[str, str]] = {
        "requests_s": "measured requests", "worker_start_s": "worker start",
        "inspection_s": "model inspection", "load_s": "model load", "warmup_s": "warm-up",
        "trial_rest_s": "rest of each trial", "lock_wait_s": "waiting for the machine",
        "setup_s": "storage and study set-up", "anchor_s": "drift anchor",
        "outside_s": "sampler, storage and records"}
    # Parts every trial needs whatever measures it, or that are another measurement's time.
    INHERENT: ClassVar[tuple[str, ...]] = ("requests_s", "load_s", "warmup_s", "lock_wait_s")

    def to_dict(self) -> dict[str, float]:
        """Each part under its label, in the order reports print them."""
        return {label: getattr(self, name) for name, label in self.LABELS.items()}

    @property
    def total_s(self) -> float:
        return sum(getattr(self, name) for name in self.LABELS)

    @property
    def harness_share(self) -> float:
        """The share of the wall time that measured nothing and is the harness's own: all
        but the requests, the model loads and warm-ups every trial needs, and the waiting
        for the machine."""
        total = self.total_s
        own = sum(getattr(self, name) for name in self.LABELS if name not in self.INHERENT)
        return own / total if total else 0.0


@dataclass(frozen=True)
class Contender:
    """One column of the tuner's report: the winner, or the guide's defaults."""

    label: str
    settings: dict[str, str]  # the JARVIS_* variables
    score_s: float | None
    stats: TrialStats | None  # of its confirmation run with the median score
    trial_number: int | None = None
    objective_value: float | None = None  # median over its confirmation rounds
    missed: tuple[str, ...] = ()  # the study's limits it missed there


@dataclass(frozen=True)
class TuneReport:
    """`autotune MODEL`: the study, its confirmed winner against the defaults, the export."""

    study_name: str
    storage: str
    n_trials: int
    best: dict[str, str]  # the winner's JARVIS_* variables, as exported
    winner: Contender
    baseline: Contender
    improvement: Improvement | None
    candidates: tuple[CandidateResult, ...]
    notes: tuple[str, ...]
    out: str | None
    export: str
    costs: CostBreakdown = field(default_factory=CostBreakdown)  # where the wall time went
    # the wall time of the search (its drift checks included) and of the confirmation, s
    phases: dict[str, float] = field(default_factory=dict)
    profiles: tuple[Profile, ...] = ()
    # what the winner's context window holds, a warning when it is below the guide's, and
    # why a larger window was chosen in a tie (see studies.window, search.confirm)
    context: str = ""
    context_warning: str = ""
    tie_break: str = ""
    # what each tuned setting bought, measured (studies.explain), one line each
    explanation: tuple[str, ...] = ()
    objective: str = "score"  # what the study minimised and the winner was chosen by
    targets: tuple[str, ...] = ()  # its targets and memory budgets, as `p95<=1.5s`
    # when each of this run's measurements held the machine: (from, until), epoch seconds
    held: tuple[tuple[float, float], ...] = ()
    # --budget, s (None: a fixed count of trials), and the run's wall time from its start
    budget_s: float | None = None
    wall_s: float = 0.0
    kind: ClassVar[str] = "tune"

    def to_dict(self) -> dict[str, object]:
        return output(self.kind, **{f.name: getattr(self, f.name)
                                    for f in dataclasses.fields(self)})


def output(kind: str, **body: object) -> dict[str, object]:
    """The JSON document a command prints: `{"version", "kind", ...}`, records made plain."""
    return {"version": OUTPUT_VERSION, "kind": kind,
            **{key: as_json(value) for key, value in body.items()}}


def as_json(value: object) -> object:
    """A record as the JSON a storage keeps or a command prints (enums are their text)."""
    if isinstance(value, (ModelInfo, HardwareClass, CostBreakdown)):
        # never the model's chat template; the class with its name; the costs by label
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    return value

