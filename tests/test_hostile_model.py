"""A model file crafted by someone else: its name and metadata never run, inject or recolour.

A copy of the real demo model gets a `general.name` and a file name full of shell syntax,
line breaks of every kind, escape sequences and rich markup. The real tuner runs on it, and
`autotune export` writes both formats; the results are sourced in sh and bash and parsed as
python-dotenv, systemd and docker would, and must set exactly the tuned JARVIS_* variables.
A storage written by someone else (a study renamed and its records rewritten) is the second
source of hostile text.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import unicodedata
from collections.abc import Callable
from pathlib import Path

import gguf
import optuna
import pytest
from conftest import QUICK_STUDY
from dotenv import dotenv_values

from autotune.measure.settings import CORE_FIELDS, Settings
from autotune.studies import export
from autotune.studies.storage import open_storage

pytestmark = pytest.mark.slow  # real tuning studies: `pytest -m "not slow"` skips them

Run = Callable[..., subprocess.CompletedProcess[str]]
QUICK = ("--trials", "2", *QUICK_STUDY)
# Everything that could end a line, start a statement or restyle a terminal, plus markup.
PAYLOAD = ("\n$(touch PWNED)`touch PWNED`;touch PWNED;'\"\rJARVIS_INJECTED=1\n"
           "JARVIS_N_THREADS=999\u2028\u2029\x85\x0b\x0c\x1b[31m\x1b]0;title\x07[red]"
           "[Q4_K_M][/x]\u202e")
HOSTILE_FILE = f"evil{PAYLOAD.replace('/', '_')}.gguf"  # the one character a name cannot hold
HOSTILE_NAME = f"Evil{PAYLOAD}\\"  # a trailing backslash continues a systemd comment
HOSTILE_STUDY = f"study{PAYLOAD}"
# Bookkeeping bash changes by itself while it sources a file.
SHELL_OWN = {"_", "BASH_ARGC", "BASH_ARGV", "PIPESTATUS"}
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def copy_with_name(source: Path, target: Path, name: str) -> Path:
    """The model at `source`, tensors and metadata unchanged but for `general.name`."""
    reader = gguf.GGUFReader(source)
    architecture = reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(target, architecture, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # the writer adds these itself
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = name if field.name == "general.name" else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype,
                               tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return target


@pytest.fixture(scope="module")
def tuned(model_path: Path, tiny_workload_file: Path, tmp_path_factory: pytest.TempPathFactory,
          run_cli: Run) -> dict:
    """One real tuning run on the crafted model, then a crafted copy of its study."""
    folder = tmp_path_factory.mktemp("hostile")
    model = copy_with_name(model_path, folder / HOSTILE_FILE, HOSTILE_NAME)
    done = run_cli(str(model), *QUICK, "--studies-dir", "studies", "--out", "jarvis.env",
                   "--workload", str(tiny_workload_file), cwd=folder, env={"COLUMNS": "400"})
    assert done.returncode == 0, done.stderr
    storage = open_storage(folder / "studies")
    (study_name,) = optuna.get_all_study_summaries(storage)
    study_name = study_name.study_name
    crafted = crafted_study(storage, study_name)
    return {"folder": folder, "model": model, "run": done, "study": study_name,
            "crafted": crafted.study_name,
            "winner": dict(crafted.user_attrs["winner"]["settings"])}


def crafted_study(storage: optuna.storages.BaseStorage, source: str) -> optuna.Study:
    """The tuned study under a hostile name, every text it keeps rewritten to the payload."""
    optuna.copy_study(from_study_name=source, from_storage=storage, to_storage=storage,
                      to_study_name=HOSTILE_STUDY)
    study = optuna.load_study(study_name=HOSTILE_STUDY, storage=storage)
    attrs = study.user_attrs
    study.set_user_attr("model", {**attrs["model"], "name": HOSTILE_NAME,
                                  "path": f"/models/{HOSTILE_FILE}",
                                  "quantization": PAYLOAD})
    study.set_user_attr("hardware", {**attrs["hardware"], "host": PAYLOAD,
                                     "gpus": [{"index": 0, "name": PAYLOAD, "total_bytes": 0,
                                               "free_bytes": 0}]})
    study.set_user_attr("space", {**attrs["space"], "notes": [PAYLOAD, HOSTILE_NAME]})
    study.set_user_attr("measurement", {**attrs["measurement"], "workload": PAYLOAD})
    study.set_user_attr("winner", {**attrs["winner"], "label": PAYLOAD})
    return study


def expected_env(tuned: dict) -> dict[str, str]:
    return Settings.from_dict(tuned["winner"]).to_env(CORE_FIELDS)


def export_cli(tuned: dict, run_cli: Run, study: str, *args: str
               ) -> subprocess.CompletedProcess[str]:
    return run_cli("export", study, "--studies-dir", str(tuned["folder"] / "studies"), *args,
                   cwd=tuned["folder"])


def sourced(shell: str, script: Path, cwd: Path) -> dict[str, str]:
    """The variables that sourcing `script` adds or changes, with its stderr checked empty."""
    before, after = cwd / "before.set", cwd / "after.set"
    done = subprocess.run([shell, "-c", 'set > "$1"; . "$2"; set > "$3"', shell, str(before),
                           str(script), str(after)], cwd=cwd, env={"PATH": os.environ["PATH"]},
                          capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")
    old = set(before.read_text().splitlines())
    changed = {}
    for line in after.read_text().splitlines():
        name, _, value = line.partition("=")
        if line not in old and name not in SHELL_OWN:
            changed[name] = value.strip("'")
    return changed


def no_pwned(*folders: Path) -> None:
    assert not [p for folder in folders for p in folder.rglob("PWNED*")]


def exports_of(text: str) -> list[str]:
    return [line for line in text.split("\n") if line and not line.startswith("#")]


def assert_plain_lines(text: str, fmt: str) -> None:
    """What systemd's EnvironmentFile= and docker --env-file see: comments and NAME=VALUE only.

    Both split at LF (systemd also at CR) and systemd continues a comment that ends in an odd
    backslash; python's splitlines breaks at every Unicode line break. All must agree.
    """
    lines = text.split("\n")[:-1]
    assert text.endswith("\n") and lines == text.splitlines()
    assert not any(c in LINE_BREAKS for c in "".join(lines))
    for line in lines:
        if line.startswith("#"):
            trailing = len(line) - len(line.rstrip("\\"))
            assert trailing % 2 == 0, line
        else:
            pattern = r"export [A-Z_]+='[0-9a-z.-]+'" if fmt == "shell" else r"[A-Z_]+=[0-9a-z.-]+"
            assert re.fullmatch(pattern, line), line


def assert_literal_on_terminal(output: str, literal: str = "[red][Q4_K_M][/x]") -> None:
    """No escape sequence or control character got through, and the markup shows as text."""
    assert "\x1b" not in output and "Traceback" not in output
    hidden = [c for c in output if c != "\n" and unicodedata.category(c) in
              ("Cc", "Cf", "Cs", "Zl", "Zp")]
    assert hidden == []
    assert literal in output


def test_tuner_prints_the_crafted_names_literally(tuned: dict) -> None:
    run = tuned["run"]
    assert_literal_on_terminal(run.stdout + run.stderr, "[red][Q4_K_M][_x]")
    assert "starting study evil\\n$(touch PWNED)" in run.stderr
    no_pwned(tuned["folder"])


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_tuner_export_sources_into_exactly_the_tuned_variables(tuned: dict, shell: str,
                                                               tmp_path: Path) -> None:
    script = tuned["folder"] / "jarvis.env"
    assert_plain_lines(script.read_text(encoding="utf-8"), "shell")
    assert sourced(shell, script, tmp_path) == expected_env(tuned)
    assert export.read(script).to_env(CORE_FIELDS) == expected_env(tuned)
    no_pwned(tuned["folder"], tmp_path)


def test_detector_sees_a_command_that_does_run(tmp_path: Path) -> None:
    """The checks above would notice: an unsafe line does create PWNED and a variable."""
    script = tmp_path / "unsafe.env"
    script.write_text("# header\ntouch PWNED\nexport JARVIS_INJECTED=1\n")
    assert sourced("sh", script, tmp_path) == {"JARVIS_INJECTED": "1"}
    assert (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("which", ["study", "crafted"])
@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_export_command_shell_format_sources_safely(tuned: dict, run_cli: Run, which: str,
                                                    shell: str, tmp_path: Path) -> None:
    done = export_cli(tuned, run_cli, tuned[which])
    assert done.returncode == 0, done.stderr
    assert_plain_lines(done.stdout, "shell")
    script = tmp_path / "jarvis.env"
    script.write_text(done.stdout, encoding="utf-8")
    assert sourced(shell, script, tmp_path) == expected_env(tuned)
    no_pwned(tuned["folder"], tmp_path)


@pytest.mark.parametrize("which", ["study", "crafted"])
def test_export_command_dotenv_format_parses_into_exactly_the_tuned_variables(
        tuned: dict, run_cli: Run, which: str, tmp_path: Path) -> None:
    out = tmp_path / "jarvis.env"
    done = export_cli(tuned, run_cli, tuned[which], "--format", "dotenv", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stderr and done.stderr.startswith("Wrote ")
    text = out.read_text(encoding="utf-8")
    assert_plain_lines(text, "dotenv")
    assert dotenv_values(out) == expected_env(tuned)
    no_pwned(tuned["folder"], tmp_path)


def test_crafted_header_keeps_the_payload_visible_on_comment_lines(tuned: dict,
                                                                    run_cli: Run) -> None:
    done = export_cli(tuned, run_cli, tuned["crafted"])
    header = [line for line in done.stdout.split("\n") if line.startswith("#")]
    assert header[0].startswith("# JARVIS_* settings for Evil\\n$(touch PWNED)")
    assert any("\\x1b[31m" in line for line in header)
    assert any(line.startswith("# study: study\\n$(touch PWNED)") for line in header)


@pytest.mark.parametrize("command", ["show", "compare"])
def test_show_and_compare_print_crafted_names_literally(tuned: dict, run_cli: Run,
                                                        command: str) -> None:
    done = run_cli(command, tuned["crafted"], "--studies-dir",
                   str(tuned["folder"] / "studies"), cwd=tuned["folder"],
                   env={"COLUMNS": "2000"})
    assert done.returncode == 0, done.stderr
    assert_literal_on_terminal(done.stdout + done.stderr)
    if command == "show":  # the trials table has no names; the winner line has the label
        assert "Confirmed winner: \\n$(touch PWNED)" in done.stdout


def test_bench_prints_the_crafted_model_name_literally(tuned: dict, run_cli: Run,
                                                       tiny_workload_file: Path) -> None:
    done = run_cli("bench", str(tuned["model"]), "--workload", str(tiny_workload_file),
                   "--tokens", "4", cwd=tuned["folder"], env={"COLUMNS": "2000"})
    assert done.returncode == 0, done.stderr
    assert_literal_on_terminal(done.stdout + done.stderr)
    assert done.stdout.startswith("Evil\\n$(touch PWNED)")
    no_pwned(tuned["folder"])


def test_errors_naming_a_crafted_file_are_one_literal_line(tuned: dict, run_cli: Run) -> None:
    done = run_cli("bench", str(tuned["folder"] / f"missing{PAYLOAD}.gguf"),
                   cwd=tuned["folder"])
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("autotune: error: model ")
    assert_literal_on_terminal(done.stderr, "[red][Q4_K_M]")


def test_unknown_crafted_study_name_is_one_literal_line(tuned: dict, run_cli: Run) -> None:
    done = export_cli(tuned, run_cli, f"nope{PAYLOAD}")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no study named" in done.stderr
    assert_literal_on_terminal(done.stderr)


def test_study_name_with_control_characters_is_refused(small_gguf: Path, run_cli: Run,
                                                       empty_cwd: Path) -> None:
    done = run_cli(str(small_gguf), "--study-name", "a\nb\x1b[31m", cwd=empty_cwd)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "--study-name" in done.stderr
    assert "\x1b" not in done.stderr
    assert list(empty_cwd.iterdir()) == []


def test_gpu_index_that_is_not_a_number_is_refused(tuned: dict, run_cli: Run) -> None:
    storage = open_storage(tuned["folder"] / "studies")
    name = "gpu-index-injection"
    optuna.copy_study(from_study_name=tuned["study"], from_storage=storage,
                      to_storage=storage, to_study_name=name)
    study = optuna.load_study(study_name=name, storage=storage)
    study.set_user_attr("hardware", {**study.user_attrs["hardware"], "gpu_offload": True,
                                     "gpus": [{"index": "0\nJARVIS_INJECTED=1", "name": "x",
                                               "total_bytes": 0, "free_bytes": 0}],
                                     "devices": [{"name": "CUDA0", "description": "x",
                                                  "kind": "gpu", "total_bytes": 1,
                                                  "free_bytes": 1}]})
    done = export_cli(tuned, run_cli, name, "--format", "dotenv")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "GPU index" in done.stderr


def test_json_summary_keeps_names_as_data(tuned: dict, run_cli: Run) -> None:
    """JSON output is not a terminal text: names stay exact, encoded by json."""
    done = run_cli("compare", tuned["crafted"], "--json", "--studies-dir",
                   str(tuned["folder"] / "studies"), cwd=tuned["folder"])
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert json.loads(done.stdout)["studies"][0]["study"] == HOSTILE_STUDY
