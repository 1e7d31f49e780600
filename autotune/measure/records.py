"""The records of one measurement, one definition each: the worker's wire protocol, a
request's record, a trial's result and its statistics, and `autotune bench --json`.

Every reader goes through these classes; a dict appears only at the edge, where a record
is written as JSON (`to_dict`, `encode_event`) or read back (`from_dict`, `decode_event`).

The wire protocol: the worker writes one JSON object per line, `{"event": KIND, "t":
seconds since the worker started, ...the event's fields}`. The parent and the worker are
always the same code, so the protocol has no version of its own; what is kept or printed
(`TrialResult.to_dict`, `BenchReport`) carries `OUTPUT_VERSION`.

Example:
    >>> line = encode_event(Warmup(latency_s=0.25), t=1.5)
    >>> line
    '{"event": "warmup", "t": 1.5, "latency_s": 0.25}'
    >>> decode_event(line)
    Warmup(latency_s=0.25)
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

from autotune.measure.mapping import RecordError, from_mapping
from autotune.measure.settings import Settings

if TYPE_CHECKING:
    from autotune.measure.hardware import Hardware
    from autotune.measure.model import ModelInfo

# The version of every JSON document autotune prints or saves (`--json`, result files).
OUTPUT_VERSION = 1

class Status(StrEnum):
    """How a trial ended. A StrEnum: it is stored, printed and compared as its text."""

    OK = "ok"
    PRUNED = "pruned"
    CRASHED = "crashed"
    OUT_OF_MEMORY = "out_of_memory"
    GPU_OUT_OF_MEMORY = "gpu_out_of_memory"  # an offload device could not allocate
    DEVICE_FAILED = "device_failed"  # an offload device was lost, or never reachable
    TIMED_OUT = "timed_out"
    LOAD_FAILED = "load_failed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # its tuner was killed while the trial ran

    @property
    def failed(self) -> bool:
        """Ended without finishing its workload for a reason of its own (not pruned)."""
        return self not in (Status.OK, Status.PRUNED)


class EventKind(StrEnum):
    """The kinds of event on the worker's wire protocol, in the order a trial sends them."""

    LOADED = "loaded"
    WARMUP = "warmup"
    REQUEST = "request"
    PASS_END = "pass_end"
    PROBE_REQUEST = "probe_request"
    THREAD_PROBE = "thread_probe"
    LOAD_FAILED = "load_failed"
    DONE = "done"


# --- the worker's events ---------------------------------------------------------------

@dataclass(frozen=True)
class Loaded:
    kind: ClassVar[EventKind] = EventKind.LOADED
    load_s: float
    n_ctx: int | None = None
    rss_bytes: int | None = None
    # llama.cpp's buffers by name (`RPC0[...]`, `CUDA0`, `CPU_Mapped`): bytes per kind
    buffers: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Warmup:
    kind: ClassVar[EventKind] = EventKind.WARMUP
    latency_s: float


@dataclass(frozen=True)
class RequestRecord:
    """One request as the worker served it; the parent keeps every one.

    Latency runs from the moment the request was sent to the end of its reply, so with
    several clients it includes the wait for the backend (`queue_s`).
    """

    kind: ClassVar[EventKind] = EventKind.REQUEST
    id: str
    index: int
    latency_s: float
    rss_bytes: int
    conversation: str = ""
    turn: int = 0
    pass_no: int = 0
    client: int = 0
    queue_s: float = 0.0
    ttft_s: float = 0.0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated: int = 0
    cache_hit: bool | None = None  # None: a first turn, with no earlier context to reuse
    reuse_source: str = ""
    reload: bool = False  # the context overflowed and history was dropped
    dropped_turns: int = 0
    cache_s: float = 0.0  # time spent saving and restoring the context cache
    # tokens the cache restored beyond those the live context already held: what it saved
    restored_tokens: int = 0

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> RequestRecord:
        return from_mapping(cls, data)


@dataclass(frozen=True)
class PassEnd:
    kind: ClassVar[EventKind] = EventKind.PASS_END
    rss_bytes: int
    pass_no: int = 0


@dataclass(frozen=True)
class ProbeRequest:
    """Progress of the thread probe, so that a slow probe is not taken for a hung worker."""

    kind: ClassVar[EventKind] = EventKind.PROBE_REQUEST
    threads: int
    latency_s: float


@dataclass(frozen=True)
class ThreadProbe:
    """The same request timed with the configured threads and one per physical core."""

    kind: ClassVar[EventKind] = EventKind.THREAD_PROBE
    configured_threads: int
    configured_s: float
    physical_threads: int
    physical_s: float

    @classmethod
    def from_dict(cls, data: object) -> ThreadProbe:
        return from_mapping(cls, data)


@dataclass(frozen=True)
class LoadFailed:
    kind: ClassVar[EventKind] = EventKind.LOAD_FAILED
    error: str


@dataclass(frozen=True)
class Done:
    kind: ClassVar[EventKind] = EventKind.DONE


Event = Loaded | Warmup | RequestRecord | PassEnd | ProbeRequest | ThreadProbe | LoadFailed | Done
EVENTS: dict[str, type] = {cls.kind.value: cls for cls in typing.get_args(Event)}


class BadEvent(RecordError):
    """An event of a known kind without the fields the parent reads."""


def encode_event(event: Event, t: float) -> str:
    """One line of the wire protocol."""
    return json.dumps({"event": event.kind.value, "t": t, **dataclasses.asdict(event)})


def decode_event(line: str) -> Event | None:
    """The event on one line; None for a line that is no event (stray output is progress).

    Raises BadEvent for an event of a known kind that lacks a field the parent reads.
    """
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("event") not in EVENTS:
        return None
    cls = EVENTS[data["event"]]
    try:
        return from_mapping(cls, data)
    except (RecordError, TypeError) as err:
        missing = ", ".join(getattr(err, "missing", ())) or "its fields"
        raise BadEvent(f"worker sent a {data['event']} event without {missing}") from None


# --- a trial's result ------------------------------------------------------------------

@dataclass
class TrialResult:
    """The plain record of one trial: every sample kept, JSON-serialisable (`to_dict`)."""

    status: Status
    reason: str = ""
    settings: Settings = field(default_factory=Settings)
    load_s: float | None = None
    warmup_s: float | None = None
    requests: list[RequestRecord] = field(default_factory=list)
    pass_rss_bytes: list[int] = field(default_factory=list)
    peak_rss_bytes: int = 0
    cpu_percent_mean: float | None = None
    other_cpu_percent_mean: float | None = None
    gpu_memory_peak_bytes: int | None = None
    gpu_free_min_bytes: int | None = None
    thread_probe: ThreadProbe | None = None
    returncode: int | None = None
    stderr_tail: str = ""
    wall_s: float = 0.0
    loaded_after_s: float | None = None  # the parent's clock: spawn until `loaded` arrived
    pid: int | None = None
    ended_at: float | None = None
    # When the worker started and ended, in seconds since the epoch: the caller holds the
    # machine lock throughout, so two of these never overlap on one machine.
    measured_from: float | None = None
    measured_until: float | None = None
    # What llama.cpp allocated, buffer by buffer (llama_log.LlamaLog), once it loaded.
    buffers: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def latencies(self) -> list[float]:
        return [r.latency_s for r in self.requests]

    @property
    def reloads(self) -> int:
        """Requests whose context overflowed and dropped history."""
        return sum(r.reload for r in self.requests)

    def to_dict(self) -> dict[str, object]:
        return {"version": OUTPUT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: object) -> TrialResult:
        return from_mapping(cls, data, {
            "status": Status, "settings": Settings.from_record,
            "thread_probe": ThreadProbe.from_dict,
            "requests": lambda rows: [RequestRecord.from_dict(r) for r in rows]})


# --- statistics of a trial -------------------------------------------------------------

@dataclass(frozen=True)
class TrialStats:
    """The statistics every report and score start from (`autotune.measure.stats`).

    Latency fields are None when no request finished.
    """

    requests_done: int = 0
    load_s: float | None = None
    warmup_s: float | None = None
    peak_rss_bytes: int = 0
    gpu_memory_peak_bytes: int | None = None
    gpu_free_min_bytes: int | None = None
    cpu_percent_mean: float | None = None
    other_cpu_percent_mean: float | None = None
    reloads: int = 0
    cache_hit_rate: float | None = None
    rss_growth_bytes_per_pass: float | None = None
    mean_s: float | None = None
    # the context cache: saving and restoring, summed; the prompt evaluation it saved
    cache_total_s: float | None = None
    cache_saved_s: float | None = None
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None
    std_s: float | None = None
    cv: float | None = None
    spikes: int | None = None
    ttft_mean_s: float | None = None
    ttft_p95_s: float | None = None
    measured_from: float | None = None  # seconds since the epoch (TrialResult)
    measured_until: float | None = None
    queue_mean_s: float | None = None
    cache_mean_s: float | None = None
    tokens_per_s: float | None = None
    first_s: float | None = None
    rest_median_s: float | None = None
    pass_mean_s: tuple[float, ...] = ()
    pass_drift: float | None = None
    # What the workload asks of the context window (the same under every configuration):
    # the most tokens one conversation filled (its last prompt and reply), and the tokens
    # its turns add on average. None in records made before they were kept.
    longest_conversation_tokens: int | None = None
    tokens_per_turn: float | None = None

    def to_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["pass_mean_s"] = list(self.pass_mean_s)
        return data

    @classmethod
    def from_dict(cls, data: object) -> TrialStats:
        return from_mapping(cls, data, {"pass_mean_s": tuple})


STAT_NAMES = tuple(f.name for f in dataclasses.fields(TrialStats))


# --- autotune bench --json -------------------------------------------------------------

@dataclass(frozen=True)
class WorkloadSummary:
    """What a report says of the workload it replayed."""

    name: str
    requests: int
    conversations: int


@dataclass(frozen=True)
class Target:
    """One of the guide's targets: its wording, the measured value, pass (None: n/a)."""

    target: str
    value: float | None
    passed: bool | None


@dataclass(frozen=True)
class Finding:
    """A spike cause the measurements show, its evidence, and the fix.

    `fix` is empty when a study measured the change slower (`measured` says what it
    measured); `tentative` marks a fix nobody measured yet: something to try with
    `autotune bench`, not a recommendation.
    """

    cause: str
    evidence: str
    fix: str
    measured: str = ""
    tentative: bool = False


@dataclass(frozen=True)
class CacheCost:
    """What the context cache cost a trial against the prompt evaluation it saved.

    `per_token_s` is the median of ttft_s / prompt_tokens over the requests that reused
    nothing; `saved_s` is that times the tokens the cache restored beyond those the live
    context already held (a request's `restored_tokens`).
    """

    cache_s: float  # saving and restoring, summed over the trial's requests
    restored_tokens: int
    per_token_s: float
    saved_s: float

    @property
    def costs_more(self) -> bool:
        """Cost more than it saved, by at least the 0.01 s that a report can show."""
        return self.cache_s - self.saved_s >= 0.01


@dataclass(frozen=True)
class Alternative:
    """One other value of one setting, as a study measured it against a trial.

    `delta_s` is the trial with `value` (`trial`) minus the trial compared with
    (`against`), in mean latency per request: positive, the value was slower. `others`
    names the other settings in which the two trials differed (empty: otherwise alike).
    """

    field: str
    value: object
    delta_s: float
    trial: int
    against: int
    others: tuple[str, ...] = ()

    def describe(self) -> str:
        """`n_threads=2 0.91 s faster per request (trial 3 against trial 0, otherwise alike)`"""
        from autotune.measure.settings import format_value

        way = "slower" if self.delta_s > 0 else "faster"
        alike = ("otherwise alike" if not self.others
                 else "also differing in " + ", ".join(self.others))
        return (f"{self.field}={format_value(self.value)} {abs(self.delta_s):.2f} s {way} per "
                f"request (trial {self.trial} against trial {self.against}, {alike})")


@dataclass(frozen=True)
class StudyEvidence:
    """What a kept study measured of the settings a diagnosis might change: plain data,
    built in `autotune.studies.explain`, so that the measure layer never reads a study."""

    study: str
    alternatives: tuple[Alternative, ...] = ()

    def best(self, field: str, accept: Callable[[object], bool]) -> Alternative | None:
        """The fastest measured alternative of `field` whose value `accept`s; None if none."""
        found = [a for a in self.alternatives if a.field == field and accept(a.value)]
        return min(found, key=lambda a: a.delta_s, default=None)


@dataclass(frozen=True)
class BenchReport:
    """`autotune bench`: one configuration's statistics, targets and diagnosis."""

    status: Status
    reason: str
    stats: TrialStats
    targets: dict[str, Target]
    findings: tuple[Finding, ...]
    settings: dict[str, str]
    model: ModelInfo
    hardware: Hardware
    workload: WorkloadSummary
    iterations: int
    clients: int
    tokens_per_request: int
    thread_probe: ThreadProbe | None
    stderr_tail: str
    requests: tuple[RequestRecord, ...]
    cache_cost: CacheCost | None = None
    evidence_study: str = ""  # the study the diagnosis checked its fixes against
    buffers: dict[str, dict[str, int]] = field(default_factory=dict)  # llama.cpp's, by name
    waited_s: float = 0.0  # for the machine, while other measurements held it
    kind: ClassVar[str] = "bench"

    @property
    def measured_on(self) -> str:
        """The backend and devices measured: `llama.cpp with 10 layers offloaded: ...`."""
        from autotune.measure.llama_log import describe_offload

        n_gpu_layers = int(self.settings.get("JARVIS_N_GPU_LAYERS", "0") or 0)
        return describe_offload(self.hardware.devices, n_gpu_layers, self.buffers)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def diagnosis(self) -> list[str]:
        return [f.cause for f in self.findings]

    def to_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data.update(stats=self.stats.to_dict(), model=self.model.to_dict())
        return {"version": OUTPUT_VERSION, "kind": self.kind, **data,
                "diagnosis": self.diagnosis, "measured_on": self.measured_on}
