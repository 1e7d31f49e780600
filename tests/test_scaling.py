"""benchmarks/scaling.py: its table from a saved run (the measuring is the benchmark's)."""

from __future__ import annotations

from conftest import load_benchmark


def row(shape: str, size_mib: float, wall: float, request: float, **changes: object) -> dict:
    found = {"shape": shape, "status": "ok", "model_bytes": size_mib * 2**20, "wall_s": wall,
             "search_s": wall * 0.6, "confirmation_s": wall * 0.4, "baselines_share": 0.25,
             "trials": 8, "pruned": 3, "trial_s": wall * 0.6 / 8, "request_s": request,
             "peak_rss_bytes": 2 * 2**30, "speedup": 2.0, "speedup_low": 1.8,
             "speedup_high": 2.2, "at_least": False}
    return {**found, **changes}


def test_the_table_says_how_the_study_grows_with_the_request_cost() -> None:
    scaling = load_benchmark("scaling")
    doc = {"budget": None, "machine": "2 logical cores, 24 GiB", "quant": "Q4_K_M", "rows": [
        row("demo", 98, 100.0, 0.4),
        row("TinyLlama-1.1B", 684, 250.0, 1.3, speedup=3.1, at_least=True),
        {"shape": "Llama-2-7B", "status": "estimate", "estimated_from": "TinyLlama-1.1B",
         "model_bytes": 3900 * 2**20, "request_s": 7.4, "trial_s": 140.0}]}
    text = scaling.table(doc)
    assert "| demo | 98 MiB | 100 s | 60 s | 40 s | 25% | 8 (3) |" in text
    assert "| 2.00x (1.80-2.20) |" in text and "| at least 3.10x |" in text
    assert "| Llama-2-7B (estimate from TinyLlama-1.1B) | 3,900 MiB | - |" in text
    assert text.rstrip().endswith("a request costs 3.2x as much, the whole study 2.5x as long.")
