"""`autotune check FILE MODEL`: does a tuned export still beat the guide's defaults?

The file and the guide's defaults are re-measured against each other, interleaved in
rounds (the confirmation's own `confirm`), and the speedup (the median over rounds of the
defaults' mean latency over the file's) is held against what the study recorded: it holds
when its own interval reaches the low end of the recorded one (the lowest round's ratio,
for a study confirmed before intervals) and stays above 1x: two estimates, each with its
noise, that still agree. Without a study to compare with, or with one whose own
interval reaches down to 1x (it never showed the file faster, and the defaults themselves
would clear that bar), it holds when the file is measurably faster now: the re-measured
interval's low end above 1. What changed since the
study (llama-cpp-python, the model file, the kind of machine, the settings themselves, the
measurement's shape) is said in notes: each can explain a check that no longer holds.

Example:
    >>> recorded = Improvement(speedup=2.3, speedup_min=2.1, speedup_max=2.5, rounds=2,
    ...                        low=2.0, high=2.6)
    >>> fresh = Improvement(speedup=2.2, speedup_min=2.1, speedup_max=2.3, rounds=2,
    ...                     low=2.05, high=2.4)
    >>> verdict(fresh, recorded)
    (True, 2.0)
    >>> verdict(fresh, None)  # no study: measurably faster is enough
    (True, 1.0)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import ClassVar

from autotune.errors import AutotuneError
from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.hardware import HardwareClass, detect, llama_cpp_version, machine_class
from autotune.measure.machine_lock import MachineLock
from autotune.measure.model import ModelInfo, inspect_model
from autotune.measure.scoring import Weights
from autotune.measure.settings import BY_NAME, CORE_FIELDS, Settings
from autotune.measure.trial import DEFAULT_TOKENS
from autotune.measure.workload import Workload, builtin_workload
from autotune.safe_text import visible
from autotune.search.confirm import BASELINE, Candidate, confirm, improvement
from autotune.search.costs import Costs
from autotune.search.events import OnEvent, Waiting
from autotune.search.study import Measurement
from autotune.studies import export
from autotune.studies.records import (
    CandidateResult,
    ConfirmRun,
    CostBreakdown,
    Improvement,
    StudyFormatError,
    StudyRecord,
    output,
)
from autotune.studies.storage import load_study, location, open_storage

FILE_LABEL = "tuned file"


@dataclass
class CheckOptions:
    rounds: int = 2
    tokens_per_request: int | None = None  # None: the study's, else DEFAULT_TOKENS
    workload: Workload | None = None  # None: the built-in one
    trial_timeout_s: float | None = None  # None: follows the measured cost (search/costs.py)
    study_name: str | None = None  # None: the one the file's header names
    studies_dir: str | None = None
    storage: str | None = None
    wait: bool = True
    seed: int | None = None


@dataclass(frozen=True)
class CheckReport:
    """A tuned file re-measured against the guide's defaults, and what that says."""

    file: str
    model: str
    holds: bool
    verdict: str  # the one line a user reads
    study_name: str | None  # the study compared with; None when none was found
    storage: str
    settings: dict[str, str]  # the file's JARVIS_* variables
    improvement: Improvement | None  # re-measured now
    recorded: Improvement | None  # the study's, when it has one
    threshold: float | None  # what the re-measured speedup had to reach
    failed: str | None  # a run that did not finish, when one did not
    candidates: tuple[CandidateResult, ...]
    tokens_per_request: int
    workload: str
    notes: tuple[str, ...] = ()
    costs: CostBreakdown = field(default_factory=CostBreakdown)  # where the wall time went
    kind: ClassVar[str] = "check"

    def to_dict(self) -> dict[str, object]:
        return output(self.kind, **{f.name: getattr(self, f.name)
                                    for f in dataclasses.fields(self)})


def read_file(path: str | os.PathLike[str]) -> tuple[Settings, tuple[str, ...]]:
    """The settings an export file sets, and the fields it names; a file that sets no
    JARVIS_* variable is refused (it would measure the backend's defaults, which nobody
    tuned).
    """
    settings = export.read(path)  # every line parsed, every value checked
    from dotenv import dotenv_values

    fields = tuple(BY_NAME[k].field for k in dotenv_values(path) if k in BY_NAME)
    if not fields:
        raise AutotuneError(f"settings file {visible(path)}: not an export file (it sets no "
                            "JARVIS_* variable); pass a file that `autotune MODEL` or "
                            "`autotune export` wrote")
    return settings, fields


def find_study(file: str | os.PathLike[str], options: CheckOptions
               ) -> tuple[str | None, StudyRecord | None, list[str]]:
    """The study to compare with: its name, its record, and notes on how it was (not) found.

    A study named on the command line must be there (AutotuneError otherwise); one named by
    the file's header that cannot be read is a note (the file may have travelled without
    its study).
    """
    named = options.study_name
    name = named or export.named_study(file)
    if name is None:
        return None, None, ["the file names no study: checked against the guide's defaults "
                            "alone (it holds when measurably faster)"]
    try:
        storage = open_storage(options.studies_dir, options.storage, create=False)
        return name, StudyRecord.read(load_study(name, storage)), []
    except StudyFormatError as err:
        if named:
            raise
        why = str(err)
    except AutotuneError:
        if named:
            raise
        why = (f"study {visible(repr(name), 120)}, named in the file's header, is not in "
               f"{location(options.studies_dir, options.storage)}")
    return None, None, [f"{why}: no recorded spread to hold the file against; checked "
                        "against the guide's defaults alone (it holds when measurably "
                        "faster)"]


def changes(record: StudyRecord, model: ModelInfo, machine: HardwareClass,
            settings: Settings, library: str) -> list[str]:
    """What differs now from when the study measured: each a note."""
    notes = []
    then = record.versions.llama_cpp_python
    if then != library:
        notes.append(f"llama-cpp-python is {library} now, {then} when the study measured")
    if record.model.fingerprint != model.fingerprint:
        notes.append(f"the model file differs from the study's (fingerprint "
                     f"{model.fingerprint}, the study's {record.model.fingerprint}; "
                     f"{model.size_bytes:,} bytes, the study's {record.model.size_bytes:,})")
    theirs = record.machine_class or machine_class(record.hardware)
    # llama-cpp-python's version is part of the class; it has its own note above
    differences = machine.differences(dataclasses.replace(
        theirs, llama_cpp_version=machine.llama_cpp_version))
    if differences:
        notes.append(f"this machine is of another kind than the study's ({'; '.join(differences)})")
    winner = record.winner
    if winner is None:
        notes.append("the study has no confirmed winner: no recorded spread to hold the file "
                      "against")
    else:
        fields = record.tuned_fields or CORE_FIELDS
        ours = settings.to_env(fields)
        best = winner.settings.to_env(fields)
        differ = [f"{k}={ours[k]} (winner: {best[k]})" for k in ours if ours[k] != best[k]]
        if differ:
            notes.append(f"the file's settings differ from the study's confirmed winner: "
                         f"{', '.join(differ)}")
    return notes


def measurement_notes(record: StudyRecord, measurement: Measurement,
                      tokens_given: bool) -> list[str]:
    """Where this check measures otherwise than the study did."""
    notes = []
    theirs, ours = record.measurement, measurement.identity()
    if theirs.workload_hash != ours.workload_hash:
        notes.append(f"the workload differs from the study's ({ours.workload!r}, "
                     f"{ours.requests} requests; the study measured {theirs.workload!r}, "
                     f"{theirs.requests} requests): pass the study's workload file")
    if tokens_given and theirs.tokens_per_request != ours.tokens_per_request:
        notes.append(f"{ours.tokens_per_request} tokens per request; the study measured "
                     f"{theirs.tokens_per_request}")
    return notes


def recorded_low(recorded: Improvement | None) -> float | None:
    """The low end of a recorded improvement's spread: its interval's, else its lowest
    round's (a study confirmed before intervals); None without one."""
    if recorded is None:
        return None
    return recorded.low if recorded.low is not None else recorded.speedup_min


def verdict(fresh: Improvement | None, recorded: Improvement | None
            ) -> tuple[bool, float | None]:
    """Whether it holds, and the speedup the re-measurement had to reach.

    With a recorded improvement: the re-measured interval (its highest round, without one)
    reaches the low end of the recorded spread, and its own low end is above 1. Both are
    estimates with their noise; the file no longer holds when the two disagree, not when a
    fresh median lands a little under the recorded interval, as one in twenty would.
    Without a recorded improvement, or with one whose low end is not above 1 (the study
    itself never showed the file measurably faster, and the defaults would hold against
    it): the re-measured interval's low end above 1 (its lowest round, without an
    interval).
    """
    if fresh is None:
        return False, None
    low = fresh.low if fresh.low is not None else fresh.speedup_min
    need = recorded_low(recorded)
    if need is not None and need > 1.0:
        reach = fresh.high if fresh.high is not None else fresh.speedup_max
        return reach >= need and low > 1.0, need
    return low > 1.0, 1.0


def say(file: str, holds: bool, fresh: Improvement | None, recorded: Improvement | None,
        need: float | None, study: str | None, failed: str | None) -> str:
    """The one line: holds or not, the re-measured speedup, and what it was held against."""
    shown = visible(file, 120)
    if failed:
        return f"{shown}: not checked, a run failed ({failed})"
    assert fresh is not None and need is not None
    measured = (f"speedup {fresh.speedup:.2f}x over the guide's defaults (their mean "
                f"latency / the file's, median of {fresh.rounds} interleaved "
                f"round{'s' * (fresh.rounds != 1)}")
    if fresh.low is not None and fresh.high is not None:
        measured += f", {fresh.confidence:.0%} within {fresh.low:.2f}x-{fresh.high:.2f}x"
    measured += ")"
    head = f"holds: {shown}: {measured}; " if holds else f"does not hold: {shown}: {measured}; "
    if recorded is None:
        return head + ("measurably faster" if holds else "not measurably faster")
    spread = (f"{recorded.confidence:.0%} within {recorded.low:.2f}x-{recorded.high:.2f}x"
              if recorded.low is not None and recorded.high is not None
              else f"{recorded.speedup_min:.2f}x-{recorded.speedup_max:.2f}x over rounds")
    what = f"study {visible(study, 120)} recorded {recorded.speedup:.2f}x ({spread})"
    if need <= (recorded_low(recorded) or 0.0):
        reach = fresh.high if fresh.high is not None else fresh.speedup_max
        where = ("reaching" if reach >= need else "entirely below") + f" {need:.2f}x"
        if not holds and reach >= need:
            where = "not measurably faster than the defaults"
        return head + f"{where}, the low end of what {what}"
    return head + ("measurably faster" if holds else "not measurably faster") + (
        f"; {what}, never measurably faster itself")


def first_failure(runs: tuple[ConfirmRun, ...]) -> str | None:
    """The first run that did not finish, said in a few words; None when all did."""
    for run in runs:
        if run.score is None:
            reason = f": {run.reason}" if run.reason else ""
            return visible(f"{run.label}, round {run.round + 1}: {run.status}{reason}", 200)
    return None


def check(file: str | os.PathLike[str], model_path: str | os.PathLike[str],
          options: CheckOptions, on_event: OnEvent | None = None) -> CheckReport:
    """Re-measure `file` against the guide's defaults and say whether it still holds."""
    costs = Costs()
    settings, fields = read_file(file)
    with costs.timing("inspection_s"):
        model = inspect_model(model_path)
    name, record, notes = find_study(file, options)
    tokens = options.tokens_per_request
    if tokens is None:
        tokens = record.measurement.tokens_per_request if record else DEFAULT_TOKENS
    lock = MachineLock(wait=options.wait, on_wait=None if on_event is None else
                       lambda holder: on_event(Waiting(holder.describe())))
    weights = record.weights if record else Weights()
    measurement = Measurement(options.workload or builtin_workload(), tokens,
                              record.measurement.clients if record else 1,
                              options.trial_timeout_s, weights, lock=lock, costs=costs)
    if record is not None:
        notes += changes(record, model, machine_class(detect()), settings, llama_cpp_version())
        notes += measurement_notes(record, measurement, options.tokens_per_request is not None)
    # FILE runs every round whatever it measures: it is checked, not raced
    candidates = [Candidate(FILE_LABEL, settings, race=False),
                  Candidate(BASELINE, Settings(**GUIDE_DEFAULTS))]
    with costs.timing("confirmation_s"):
        outcome = confirm(candidates, lambda c: measurement.run(model, c.settings), options.rounds,
                          weights, options.seed, on_event)
    runs = outcome.confirmation.runs
    failed = first_failure(runs)
    fresh = None if failed else improvement(list(runs), FILE_LABEL, options.seed)
    recorded = record.winner.improvement if record and record.winner else None
    holds, need = verdict(fresh, recorded)
    if fresh is None and not failed:
        failed = "no round finished both runs"
    return CheckReport(
        file=str(file), model=model.path, holds=holds and not failed,
        verdict=say(str(file), holds, fresh, recorded, need, name, failed),
        study_name=name if record else None,
        storage=location(options.studies_dir, options.storage),
        settings=settings.to_env(fields),
        improvement=fresh, recorded=recorded, threshold=need, failed=failed,
        candidates=outcome.confirmation.candidates, tokens_per_request=tokens,
        workload=measurement.workload.name, notes=tuple(notes), costs=costs.parts())
