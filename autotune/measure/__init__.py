"""Measuring: one latency trial, with no Optuna, pandas or plotting in sight.

The JARVIS_* settings, GGUF inspection, the machine, the workload, the backend the
variables configure, the worker process and the trial that drives it, the statistics and
the diagnosis of a trial, and the lock that keeps measurements apart. The worker side
imports only from here (and the package's light top-level modules).
"""
