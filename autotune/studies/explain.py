"""What each tuned setting bought, measured: the study's own trials, paired.

For a setting where the winner differs from the guide's defaults, the evidence is the
winner's trial against the trial that ran the defaults' value of that setting and is
otherwise most alike (fewest other settings differing; none, at best): the difference in
mean latency per request, with both trial numbers and what else differed. The same pairing
gives a diagnosis what the study measured of the changes it would advise
(`evidence_for`), as plain data the measure layer reads without a study.

Example:
    >>> for line in explanation(study):
    ...     print(line)
    context_window 1024 instead of 4096: not measured (no finished trial ran 4096)
    n_threads 2 instead of 8: 0.91 s less per request (trial 2 against trial 0, otherwise alike)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.records import Alternative, StudyEvidence
from autotune.measure.settings import Settings, format_value
from autotune.studies import standing
from autotune.studies.records import StudyRecord, TrialRecord

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Measured:
    """A finished trial: its number, the settings it ran, its mean latency per request."""

    number: int
    settings: Settings
    mean_s: float


@dataclass(frozen=True)
class Bought:
    """What one tuned setting bought: the winner's value against the defaults' value."""

    field: str
    value: object
    default: object
    comparison: Alternative | None  # the defaults' value measured against the winner's

    def describe(self) -> str:
        head = f"{self.field} {format_value(self.value)} instead of {format_value(self.default)}"
        found = self.comparison
        if found is None:
            return f"{head}: not measured (no finished trial ran {format_value(self.default)})"
        gain = found.delta_s  # the defaults' value minus the winner's: positive, it bought time
        way = "less" if gain >= 0 else "more"
        alike = ("otherwise alike" if not found.others
                 else "also differing in " + ", ".join(found.others))
        return (f"{head}: {abs(gain):.2f} s {way} per request (trial {found.against} against "
                f"trial {found.trial}, {alike})")


def finished(study: optuna.Study) -> list[Measured]:
    """The trials that count (studies.standing), with the settings they ran."""
    found = []
    for trial in standing.standing(study):
        kept = TrialRecord.read(trial, study.study_name)
        if (kept.settings is not None and kept.stats is not None
                and kept.stats.mean_s is not None):
            found.append(Measured(trial.number, kept.settings, kept.stats.mean_s))
    return found


def differing(a: Settings, b: Settings, fields: Sequence[str], but: str = ""
              ) -> tuple[str, ...]:
    """The fields other than `but` in which two settings differ (the cache's size not, when
    either ran without the cache: it did not matter there)."""
    cache_off = not a.enable_context_cache or not b.enable_context_cache
    return tuple(f for f in fields if f != but and a.value(f) != b.value(f)
                 and not (f == "max_cache_size" and cache_off))


def nearest(trials: Sequence[Measured], settings: Settings, fields: Sequence[str],
            field: str, value: object) -> Measured | None:
    """The trial with `field` == `value` and the fewest other `fields` unlike `settings`
    (ties: the earliest); None when no trial ran that value."""
    ran = [t for t in trials if t.settings.value(field) == value]
    return min(ran, key=lambda t: (len(differing(t.settings, settings, fields, field)),
                                   t.number), default=None)


def against(trials: Sequence[Measured], reference: Measured, fields: Sequence[str],
            field: str, value: object) -> Alternative | None:
    """`value` of `field` as the study measured it against the `reference` trial."""
    other = nearest(trials, reference.settings, fields, field, value)
    if other is None:
        return None
    return Alternative(field=field, value=value, delta_s=other.mean_s - reference.mean_s,
                       trial=other.number, against=reference.number,
                       others=differing(other.settings, reference.settings, fields, field))


def bought(study: optuna.Study, record: StudyRecord | None = None) -> list[Bought]:
    """For each tuned setting where the confirmed winner differs from the guide's defaults,
    what the study measured of it (a setting the space fixed is no choice of the winner's);
    empty without a winner that is one of its trials."""
    record = record or StudyRecord.read(study)
    winner = record.winner
    if winner is None or winner.trial_number is None:
        return []
    trials = finished(study)
    reference = next((t for t in trials if t.number == winner.trial_number), None)
    fields = list(record.tuned_fields)
    fixed = record.space.fixed if record.space else {}
    found = []
    for name in fields:
        default, value = GUIDE_DEFAULTS.get(name), winner.settings.value(name)
        if default is None or value is None or value == default or name in fixed:
            continue
        comparison = (None if reference is None
                      else against(trials, reference, fields, name, default))
        found.append(Bought(name, value, default, comparison))
    return found


def explanation(study: optuna.Study, record: StudyRecord | None = None) -> tuple[str, ...]:
    """One line per tuned setting the winner changed: what it bought, measured."""
    return tuple(b.describe() for b in bought(study, record))


def evidence_for(study: optuna.Study, settings: Settings,
                 record: StudyRecord | None = None) -> StudyEvidence:
    """What the study measured of every other value of each tuned setting, against the
    finished trial most like `settings` that ran the same value of it.

    A setting whose current value no finished trial ran has no alternatives: there is
    nothing in the study to compare with.
    """
    record = record or StudyRecord.read(study)
    fields = list(record.tuned_fields)
    trials = finished(study)
    alternatives = []
    for name in fields:
        reference = nearest(trials, settings, fields, name, settings.value(name))
        if reference is None:
            continue
        values = dict.fromkeys(t.settings.value(name) for t in trials)
        for value in values:
            if value is None or value == settings.value(name):
                continue
            found = against(trials, reference, fields, name, value)
            if found is not None:
                alternatives.append(found)
    return StudyEvidence(study=study.study_name, alternatives=tuple(alternatives))
