"""`autotune bench` as a user runs it: real subprocesses, the real model, JSON and tables."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from autotune.measure.diagnosis import targets
from autotune.measure.records import OUTPUT_VERSION, TrialStats

RunCli = Callable[..., subprocess.CompletedProcess]
THREADS = {"JARVIS_N_THREADS": "2"}
REPORT_KEYS = {"version", "kind", "status", "reason", "stats", "targets", "findings",
               "diagnosis", "settings", "model", "hardware", "workload", "iterations",
               "clients", "tokens_per_request", "thread_probe", "stderr_tail", "requests",
               "cache_cost", "evidence_study", "buffers", "measured_on", "waited_s"}
PHYSICAL_CORES = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def bench_json(run_cli: RunCli, cwd: Path, *args: str, env: dict[str, str]) -> dict:
    done = run_cli("bench", *args, "--json", cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout)


def one_line_error(done: subprocess.CompletedProcess, cwd: Path) -> str:
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("autotune: error: ")
    assert list(cwd.iterdir()) == []
    return lines[0]


@pytest.fixture(scope="module")
def bench_cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench_cwd")


@pytest.fixture(scope="module")
def basic(run_cli: RunCli, bench_cwd: Path, model_path: Path, tiny_workload_file: Path
          ) -> dict:
    """One sequential run, two passes over the tiny workload, reused by many checks."""
    return bench_json(run_cli, bench_cwd, str(model_path), "--iterations", "2", "--workload",
                      str(tiny_workload_file), "--tokens", "4", env=THREADS)


@pytest.fixture(scope="module")
def concurrent(run_cli: RunCli, bench_cwd: Path, model_path: Path, tiny_workload_file: Path
               ) -> dict:
    return bench_json(run_cli, bench_cwd, str(model_path), "--iterations", "2", "--workload",
                      str(tiny_workload_file), "--tokens", "4", "--concurrent", env=THREADS)


def test_json_report_keys(basic: dict) -> None:
    assert set(basic) == REPORT_KEYS
    assert (basic["version"], basic["kind"], basic["status"]) == (OUTPUT_VERSION, "bench", "ok")
    assert set(basic["stats"]) == set(TrialStats().to_dict())
    assert basic["iterations"] == 2
    assert basic["clients"] == 1
    assert basic["tokens_per_request"] == 4


def test_json_report_has_two_passes_of_requests(basic: dict) -> None:
    requests = basic["requests"]
    assert len(requests) == 2 * 4
    assert [r["pass_no"] for r in requests] == [0] * 4 + [1] * 4
    assert [r["id"] for r in requests[:4]] == [r["id"] for r in requests[4:]]
    assert all(r["latency_s"] > 0 for r in requests)
    assert all(r["generated"] == 4 for r in requests)
    assert basic["workload"] == {"name": "tiny", "requests": 4, "conversations": 2}


def test_json_statistics_agree_with_the_requests(basic: dict) -> None:
    latencies = sorted(r["latency_s"] for r in basic["requests"])
    assert basic["stats"]["max_s"] == latencies[-1]
    stats = basic["stats"]
    assert latencies[0] <= stats["p50_s"] <= stats["p95_s"] <= stats["p99_s"] <= stats["max_s"]
    assert basic["stats"]["mean_s"] == pytest.approx(sum(latencies) / len(latencies))
    assert basic["stats"]["spikes"] == sum(x > 5.0 for x in latencies)
    assert basic["stats"]["load_s"] > 0
    assert basic["stats"]["reloads"] == 0
    assert basic["stats"]["cache_hit_rate"] == 1.0
    assert len(basic["stats"]["pass_mean_s"]) == 2
    assert basic["stats"]["rss_growth_bytes_per_pass"] is not None


def test_json_targets_and_diagnosis(basic: dict) -> None:
    assert set(basic["targets"]) == set(targets(TrialStats()))
    own = targets(TrialStats.from_dict(basic["stats"]))  # the verdicts, from its own numbers
    assert basic["targets"] == {k: dataclasses.asdict(v) for k, v in own.items()}
    assert basic["targets"]["cache_hit_rate"]["passed"] is True
    assert isinstance(basic["diagnosis"], list)
    assert "context_overflow" not in basic["diagnosis"]
    assert "thread_contention" not in basic["diagnosis"]


def test_json_records_settings_model_and_machine(basic: dict) -> None:
    assert basic["settings"]["JARVIS_N_THREADS"] == "2"
    assert basic["settings"]["JARVIS_MODEL_CONTEXT_WINDOW"] == "4096"
    assert basic["model"]["architecture"] == "llama"
    assert basic["model"]["quantization"] == "Q4_1"
    assert basic["hardware"]["physical_cores"] == PHYSICAL_CORES
    assert basic["thread_probe"] is None


def test_bench_writes_nothing_into_the_cwd(basic: dict, bench_cwd: Path) -> None:
    assert list(bench_cwd.iterdir()) == []


def test_concurrent_is_slower_per_request(basic: dict, concurrent: dict) -> None:
    assert concurrent["status"] == "ok"
    assert concurrent["clients"] == 3
    assert len(concurrent["requests"]) == 8
    assert {r["client"] for r in concurrent["requests"]} > {0}
    assert concurrent["stats"]["queue_mean_s"] > basic["stats"]["queue_mean_s"]
    # slower per request within its own run, whatever else the machine does meanwhile: each
    # request's latency holds the time it queued behind the other clients' requests
    assert all(r["latency_s"] >= r["queue_s"] for r in concurrent["requests"])
    assert sum(r["queue_s"] > 0 for r in concurrent["requests"]) > 0


@pytest.mark.skipif(PHYSICAL_CORES >= 8, reason="8 threads only contend on < 8 physical cores")
def test_eight_threads_diagnose_thread_contention(run_cli: RunCli, bench_cwd: Path,
                                                  model_path: Path,
                                                  tiny_workload_file: Path) -> None:
    env = {"JARVIS_N_THREADS": "8", "JARVIS_MODEL_CONTEXT_WINDOW": "4096",
           "JARVIS_ENABLE_CONTEXT_CACHE": "true", "JARVIS_MAX_CACHE_SIZE": "100"}
    report = bench_json(run_cli, bench_cwd, str(model_path), "--workload",
                        str(tiny_workload_file), "--tokens", "4", env=env)
    assert "thread_contention" in report["diagnosis"]
    probe = report["thread_probe"]
    assert probe["configured_threads"] == 8
    assert probe["physical_threads"] == PHYSICAL_CORES
    assert probe["configured_s"] > probe["physical_s"]
    finding = next(f for f in report["findings"] if f["cause"] == "thread_contention")
    assert finding["fix"] == f"export JARVIS_N_THREADS={PHYSICAL_CORES}"


def test_small_context_diagnoses_context_overflow(run_cli: RunCli, bench_cwd: Path,
                                                  model_path: Path) -> None:
    env = {**THREADS, "JARVIS_MODEL_CONTEXT_WINDOW": "512"}
    report = bench_json(run_cli, bench_cwd, str(model_path), "--tokens", "4", env=env)
    assert report["status"] == "ok"
    assert report["workload"]["name"] == "builtin"
    assert len(report["requests"]) == 16
    assert report["stats"]["reloads"] > 0
    assert "context_overflow" in report["diagnosis"]
    assert any(r["reload"] for r in report["requests"])
    finding = next(f for f in report["findings"] if f["cause"] == "context_overflow")
    assert "JARVIS_MODEL_CONTEXT_WINDOW=1024" in finding["fix"]


def test_table_output(run_cli: RunCli, bench_cwd: Path, model_path: Path,
                      tiny_workload_file: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "jarvis.sh"
    env_file.write_text("export JARVIS_N_THREADS='2'\nexport JARVIS_MAX_CACHE_SIZE='10'\n",
                        encoding="utf-8")
    done = run_cli("bench", str(model_path), "--env", str(env_file), "--workload",
                   str(tiny_workload_file), "--tokens", "4", cwd=bench_cwd,
                   env={"COLUMNS": "200", "JARVIS_N_THREADS": "abc"})  # --env wins
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "mean latency" in out
    assert "The guide's targets" in out
    for check in targets(TrialStats()).values():
        assert check.target in out
    assert "\nDiagnosis" in out
    assert "4 requests x 1 pass(es), sequential, 4 tokens each" in out
    assert list(bench_cwd.iterdir()) == []


def test_env_file_with_a_bad_value(run_cli: RunCli, empty_cwd: Path, small_gguf: Path,
                                   tmp_path: Path) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text("JARVIS_N_THREADS=2\nJARVIS_MODEL_CONTEXT_WINDOW=-5\n",
                        encoding="utf-8")
    line = one_line_error(run_cli("bench", str(small_gguf), "--env", str(env_file),
                                  cwd=empty_cwd), empty_cwd)
    assert "JARVIS_MODEL_CONTEXT_WINDOW" in line
    assert str(env_file) in line


@pytest.mark.parametrize(("text", "words"), [
    ("JARVIS_N_THREADS=2\nthis line is not a setting\n", ("line 2", "cannot parse")),
    ("export JARVIS_N_THREADS='2\n", ("line 1", "cannot parse")),
    ("JARVIS_N_THREAD=2\n", ("line 1", "unknown variable 'JARVIS_N_THREAD'")),
])
def test_env_file_that_does_not_parse_is_refused(run_cli: RunCli, empty_cwd: Path,
                                                 small_gguf: Path, tmp_path: Path, text: str,
                                                 words: tuple[str, ...]) -> None:
    # Skipping such a line would measure the defaults instead of the file the user meant.
    env_file = tmp_path / "typo.env"
    env_file.write_text(text, encoding="utf-8")
    line = one_line_error(run_cli("bench", str(small_gguf), "--env", str(env_file),
                                  cwd=empty_cwd), empty_cwd)
    assert str(env_file) in line
    for word in words:
        assert word in line


def test_env_file_missing(run_cli: RunCli, empty_cwd: Path, small_gguf: Path,
                          tmp_path: Path) -> None:
    line = one_line_error(run_cli("bench", str(small_gguf), "--env",
                                  str(tmp_path / "nope.env"), cwd=empty_cwd), empty_cwd)
    assert "nope.env" in line


def test_bad_environment_variable(run_cli: RunCli, empty_cwd: Path, small_gguf: Path) -> None:
    line = one_line_error(run_cli("bench", str(small_gguf), cwd=empty_cwd,
                                  env={"JARVIS_N_THREADS": "abc"}), empty_cwd)
    assert "JARVIS_N_THREADS='abc'" in line


def test_workload_with_a_malformed_line(run_cli: RunCli, empty_cwd: Path, small_gguf: Path,
                                        tiny_workload_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = tiny_workload_file.read_text(encoding="utf-8").splitlines()
    bad.write_text(f"{lines[0]}\n{{\"turns\": [\n{lines[1]}\n", encoding="utf-8")
    line = one_line_error(run_cli("bench", str(small_gguf), "--workload", str(bad),
                                  cwd=empty_cwd, env=THREADS), empty_cwd)
    assert "line 2" in line
    assert "not valid JSON" in line


def test_workload_nested_past_the_parser_stack(run_cli: RunCli, empty_cwd: Path,
                                               small_gguf: Path, tmp_path: Path) -> None:
    bad = tmp_path / "deep.jsonl"
    bad.write_text("[" * 200_000 + "]" * 200_000 + "\n", encoding="utf-8")
    line = one_line_error(run_cli("bench", str(small_gguf), "--workload", str(bad),
                                  cwd=empty_cwd, env=THREADS), empty_cwd)
    assert "line 1" in line and "nested too deeply" in line


def test_workload_missing(run_cli: RunCli, empty_cwd: Path, small_gguf: Path,
                          tmp_path: Path) -> None:
    line = one_line_error(run_cli("bench", str(small_gguf), "--workload",
                                  str(tmp_path / "nope.jsonl"), cwd=empty_cwd, env=THREADS),
                          empty_cwd)
    assert "nope.jsonl" in line


def test_bench_help(run_cli: RunCli, empty_cwd: Path) -> None:
    done = run_cli("bench", "--help", cwd=empty_cwd)
    assert done.returncode == 0
    for option in ("--iterations", "--concurrent", "--clients", "--workload", "--tokens",
                   "--env", "--json", "--timeout"):
        assert option in done.stdout
    assert done.stderr == ""
    assert list(empty_cwd.iterdir()) == []


def test_version(run_cli: RunCli, empty_cwd: Path) -> None:
    done = run_cli("--version", cwd=empty_cwd)
    assert done.returncode == 0
    assert "0.1.0" in done.stdout


def test_bad_option_value_exits_2(run_cli: RunCli, empty_cwd: Path, small_gguf: Path) -> None:
    done = run_cli("bench", str(small_gguf), "--iterations", "0", cwd=empty_cwd)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--iterations" in done.stderr
    assert list(empty_cwd.iterdir()) == []
