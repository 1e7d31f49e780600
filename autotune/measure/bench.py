"""`autotune bench`: the backend's latency test, as one library call.

Example:
    >>> report = bench(demo_model_path(), Settings(n_threads=2), workload, iterations=2)
    >>> report.status, report.stats.requests_done == 2 * len(workload.requests)
    (<Status.OK: 'ok'>, True)
    >>> sorted(report.targets)[:2]  # each of the guide's targets, passed or not
    ['cache_hit_rate', 'consistency']
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from autotune.measure import hardware as hw
from autotune.measure.diagnosis import cache_cost, diagnose, targets
from autotune.measure.machine_lock import MachineLock
from autotune.measure.model import inspect_model
from autotune.measure.records import BenchReport, RequestRecord, StudyEvidence
from autotune.measure.settings import Settings
from autotune.measure.stats import summarize
from autotune.measure.trial import DEFAULT_TOKENS, TrialSpec, run_trial
from autotune.measure.workload import Workload, builtin_workload

DEFAULT_CLIENTS = 3


def bench(model_path: str | os.PathLike[str], settings: Settings,
          workload: Workload | None = None, iterations: int = 1, clients: int = 1,
          tokens_per_request: int = DEFAULT_TOKENS, timeout_s: float = 1800.0,
          on_request: Callable[[RequestRecord], bool] | None = None,
          machine: hw.Hardware | None = None, lock: MachineLock | None = None,
          evidence: StudyEvidence | None = None) -> BenchReport:
    """Measure one configuration and return the report: statistics, targets, diagnosis.

    `iterations` passes over the workload (memory growth per pass is the leak check);
    `clients` > 1 sends requests from that many threads at once to one backend. The trial
    waits for any other measurement on the machine first (`lock`, by default waiting).
    `evidence`, what a kept study measured (`autotune.studies.explain.evidence_for`), keeps
    the diagnosis from advising a change that the study measured slower.
    """
    model = inspect_model(model_path)
    machine = machine or hw.detect()
    workload = workload or builtin_workload()
    probe = machine.physical_cores if settings.n_threads > machine.physical_cores else None
    spec = TrialSpec(model.path, settings, workload, tokens_per_request=tokens_per_request,
                     passes=iterations, clients=clients, probe_threads=probe,
                     timeout_s=timeout_s)
    asked = time.monotonic()
    with (lock or MachineLock()).held("bench"):
        waited_s = time.monotonic() - asked
        result = run_trial(spec, on_request=on_request)
    summary = summarize(result)
    return BenchReport(
        status=result.status, reason=result.reason, stats=summary, targets=targets(summary),
        findings=tuple(diagnose(summary, result.status, result.thread_probe, settings,
                                machine, result.requests, evidence)),
        settings=settings.to_env(), model=model, hardware=machine,
        workload=workload.describe(), iterations=iterations, clients=clients,
        tokens_per_request=tokens_per_request, thread_probe=result.thread_probe,
        stderr_tail=result.stderr_tail if not result.ok else "",
        requests=tuple(result.requests),
        cache_cost=cache_cost(result.requests) if settings.enable_context_cache else None,
        evidence_study=evidence.study if evidence else "", buffers=result.buffers,
        waited_s=waited_s)
