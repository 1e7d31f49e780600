"""The fit estimate against what llama.cpp reports per device, on llama.cpp's RPC device.

Starts RPC servers on 127.0.0.1 (autotune.measure.rpc), loads each model with several
n_gpu_layers and windows in a real trial, and compares, device by device, the estimate
(autotune.measure.fit: the GGUF's tensor bytes and the K/V cache) with the model and KV
buffers llama.cpp logged after loading. The compute buffers are shown beside them: the
estimate leaves them to the margin. Writes benchmarks/results/offload-fit.{json,md}.

    python benchmarks/offload_fit.py                       # the demo model, 1 and 2 devices
    python benchmarks/offload_fit.py --model tinyllama.gguf --model other.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from rpc_servers import RpcServer, devices_seen, servers_env

from autotune.measure.fit import device_needs, layer_costs
from autotune.measure.model import demo_model_path
from autotune.measure.settings import Settings
from autotune.measure.trial import TrialSpec, run_trial
from autotune.measure.workload import Workload, builtin_workload

MIB = 2**20
RESULTS = Path(__file__).resolve().parent / "results"
LAYERS = (1, 4, 10, -1)
WINDOWS = (1024, 4096)


def measure(model: Path, servers: list[RpcServer], workload: Workload) -> list[dict]:
    os.environ.update(servers_env(*servers))
    devices = devices_seen(*servers)
    costs = layer_costs(model)
    rows = []
    for window in WINDOWS:
        for layers in LAYERS:
            settings = Settings(n_threads=2, context_window=window, n_gpu_layers=layers)
            result = run_trial(TrialSpec(str(model), settings, workload, tokens_per_request=2))
            estimates = device_needs(costs, settings, devices)
            for device, server, estimate in zip(devices, servers, estimates, strict=True):
                kinds = next((k for name, k in result.buffers.items()
                              if f"[{server.endpoint}]" in name), {})
                reported = kinds.get("model", 0) + kinds.get("KV", 0)
                rows.append({
                    "model": model.name, "devices": len(servers), "device": device.name,
                    "context_window": window, "n_gpu_layers": layers,
                    "status": str(result.status), "estimate_bytes": estimate,
                    "reported_bytes": reported, "compute_bytes": kinds.get("compute", 0),
                    "error": (estimate - reported) / reported if reported else None})
                print(f"{model.name} {len(servers)} dev {device.name} ctx {window} "
                      f"ngl {layers}: estimate {estimate / MIB:.2f} MiB, reported "
                      f"{reported / MIB:.2f} MiB, compute {kinds.get('compute', 0) / MIB:.1f}"
                      f" MiB ({result.status})", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    errors = [abs(r["error"]) for r in rows if r["error"] is not None]
    lines = [f"Fit estimate against llama.cpp's buffers, {time.strftime('%Y-%m-%d')}, "
             f"llama.cpp RPC device(s) on 127.0.0.1. Largest error "
             f"{max(errors):.2%} over {len(errors)} device loads.", "",
             "| model | devices | device | window | n_gpu_layers | estimate | reported "
             "(model + KV) | error | compute (not estimated) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        error = f"{r['error']:+.2%}" if r["error"] is not None else "-"
        lines.append(f"| {r['model']} | {r['devices']} | {r['device']} | "
                     f"{r['context_window']} | {r['n_gpu_layers']} | "
                     f"{r['estimate_bytes'] / MIB:.2f} MiB | {r['reported_bytes'] / MIB:.2f} MiB"
                     f" | {error} | {r['compute_bytes'] / MIB:.1f} MiB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", type=Path,
                        help="a GGUF file (repeatable; default: the demo model)")
    parser.add_argument("--out", type=Path, default=RESULTS / "offload-fit")
    args = parser.parse_args()
    base = builtin_workload()
    workload = Workload(base.name, base.requests[:2])
    rows = []
    for model in args.model or [demo_model_path()]:
        for count in (1, 2):
            servers = [RpcServer() for _ in range(count)]
            try:
                rows += measure(model, servers, workload)
            finally:
                for server in servers:
                    server.kill()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
