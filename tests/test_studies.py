"""Kept studies: the pandas API, `compare`, `show`, `export`, plots and the notebook."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbclient
import nbformat
import optuna
import pytest
from conftest import QUICK_STUDY

import autotune
from autotune.studies.tables import importances

REPO = Path(__file__).resolve().parent.parent
QUICK = QUICK_STUDY
ONE_CONVERSATION = {"id": "only", "system": "You are brief.", "turns": [
    {"user": "Name a city.", "assistant": "Paris."}, {"user": "Another one?"}]}


@pytest.fixture(scope="module")
def two_studies(model_path: Path, tiny_workload_file: Path,
                tmp_path_factory: pytest.TempPathFactory, run_cli) -> Path:
    """Two studies of two workloads in one studies folder, each with its export file."""
    folder = tmp_path_factory.mktemp("studies-home")
    other = folder / "one.jsonl"
    other.write_text(json.dumps(ONE_CONVERSATION) + "\n")
    for name, workload in (("tiny-study", tiny_workload_file), ("one-study", other)):
        done = run_cli(str(model_path), "--trials", "3", "--studies-dir", str(folder / "studies"),
                       "--study-name", name, "--workload", str(workload),
                       "--out", str(folder / f"{name}.env"), *QUICK, cwd=folder)
        assert done.returncode == 0, done.stderr
    return folder


@pytest.mark.slow
def test_load_studies_gives_one_row_per_trial_with_metadata(two_studies: Path) -> None:
    trials = autotune.load_studies(two_studies / "studies")
    assert sorted(trials["study"].unique()) == ["one-study", "tiny-study"]
    assert len(trials) == 6
    for column in ("model", "host", "cpu", "llama_cpp_python", "workload", "n_threads",
                   "context_window", "enable_context_cache", "score_s", "score_total_s",
                   "score_spike_penalty_s", "mean_s", "p95_s", "state", "status", "reason"):
        assert column in trials.columns
    assert set(trials["workload"]) == {"tiny", "one"}
    ok = trials[trials["status"] == "ok"]
    assert (ok["score_s"] == ok["score_total_s"]).all()


@pytest.mark.slow
def test_load_studies_prints_from_a_plain_python_command(two_studies: Path) -> None:
    code = f"import autotune; print(autotune.load_studies({str(two_studies / 'studies')!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "tiny-study" in done.stdout and "one-study" in done.stdout


@pytest.mark.slow
def test_study_summaries_give_winner_settings_and_improvement(two_studies: Path) -> None:
    summaries = autotune.study_summaries(two_studies / "studies").set_index("study")
    assert list(summaries.index) == ["one-study", "tiny-study"]
    for study in summaries.index:
        row = summaries.loc[study]
        assert row["trials"] == 3 and row["ok"] + row["pruned"] + row["failed"] == 3
        # one confirmation round: the improvement is that round's ratio of means
        assert row["speedup"] == pytest.approx(row["defaults_mean_s"] / row["winner_mean_s"])
        assert row["JARVIS_N_THREADS"].isdigit()


@pytest.mark.slow
def test_load_studies_accepts_the_journal_path_and_rejects_an_empty_folder(
        two_studies: Path, tmp_path: Path) -> None:
    assert len(autotune.load_studies(two_studies / "studies" / "autotune.journal")) == 6
    with pytest.raises(autotune.AutotuneError, match="no studies"):
        autotune.load_studies(tmp_path)


@pytest.mark.slow
def test_compare_lists_both_studies_with_best_settings_and_improvement(
        two_studies: Path, run_cli) -> None:
    done = run_cli("compare", "--studies-dir", str(two_studies / "studies"), cwd=two_studies)
    assert done.returncode == 0, done.stderr
    for text in ("tiny-study", "one-study", "JARVIS_N_THREADS", "improvement", "x ("):
        assert text in done.stdout
    as_json = run_cli("compare", "tiny-study", "--studies-dir", str(two_studies / "studies"),
                      "--json", cwd=two_studies)
    document = json.loads(as_json.stdout)
    assert (document["version"], document["kind"]) == (1, "compare")
    (row,) = document["studies"]
    assert row["study"] == "tiny-study"
    assert row["speedup"] == pytest.approx(row["defaults_mean_s"] / row["winner_mean_s"])


@pytest.mark.slow
def test_compare_plot_writes_a_real_png_and_html(two_studies: Path, run_cli) -> None:
    png, html = two_studies / "out.png", two_studies / "out.html"
    for path in (png, html):
        done = run_cli("compare", "--studies-dir", str(two_studies / "studies"),
                       "--plot", str(path), cwd=two_studies)
        assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "plotly" in html.read_text() and "tiny-study" in html.read_text()


@pytest.mark.slow
def test_compare_rejects_an_unknown_study_and_a_bad_plot_name(two_studies: Path,
                                                               run_cli) -> None:
    unknown = run_cli("compare", "nope", "--studies-dir", str(two_studies / "studies"),
                      cwd=two_studies)
    assert unknown.returncode == 2 and "tiny-study" in unknown.stderr
    bad = run_cli("compare", "--studies-dir", str(two_studies / "studies"), "--plot", "x.txt",
                  cwd=two_studies)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


@pytest.mark.slow
def test_show_lists_trials_and_writes_its_plots(two_studies: Path, tmp_path: Path,
                                                run_cli) -> None:
    done = run_cli("show", "tiny-study", "--studies-dir", str(two_studies / "studies"),
                   "--plots", str(tmp_path / "plots"), cwd=two_studies)
    assert done.returncode == 0, done.stderr
    assert "guide defaults" in done.stdout and "Confirmed winner" in done.stdout
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == [f"tiny-study-{k}.html" for k in
                       ("front", "optimization_history", "parallel_coordinate", "slice")]
    png = run_cli("show", "tiny-study", "--studies-dir", str(two_studies / "studies"),
                  "--plots", str(tmp_path / "png"), "--plot-format", "png", "--json",
                  cwd=two_studies)
    report = json.loads(png.stdout)
    assert len(report["trials"]) == 3 and len(report["plots"]) == 4
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in report["plots"])


def test_importances_rank_the_setting_that_drives_the_score() -> None:
    # Logic only: PED-ANOVA on hand-made finished trials where n_threads alone matters.
    study = optuna.create_study()
    for threads in range(1, 9):
        for ctx in (512, 1024):
            study.add_trial(optuna.trial.create_trial(
                params={"n_threads": threads, "context_window": ctx},
                distributions={"n_threads": optuna.distributions.IntDistribution(1, 8),
                               "context_window": optuna.distributions.CategoricalDistribution(
                                   (512, 1024))},
                value=float(threads), user_attrs={"status": "ok"}))
    scores = importances(study)
    assert max(scores, key=scores.get) == "n_threads"


@pytest.mark.slow
def test_export_reproduces_the_tuner_file_apart_from_the_date(two_studies: Path,
                                                              run_cli) -> None:
    done = run_cli("export", "tiny-study", "--studies-dir", str(two_studies / "studies"),
                   cwd=two_studies)
    assert done.returncode == 0, done.stderr
    tuner = (two_studies / "tiny-study.env").read_text().splitlines()
    again = done.stdout.splitlines()
    assert len(tuner) == len(again)
    differing = [(a, b) for a, b in zip(tuner, again, strict=True) if a != b]
    assert all(a.startswith("# date: ") and b.startswith("# date: ") for a, b in differing)


@pytest.mark.slow
def test_export_of_one_trial_writes_a_file_and_refuses_to_overwrite(
        two_studies: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "trial1.env"
    args = ("export", "tiny-study", "--trial", "1", "--studies-dir",
            str(two_studies / "studies"), "--format", "dotenv", "--out", str(out))
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    text = out.read_text()
    assert "trial 1" in text and "JARVIS_N_THREADS=8" in text  # trial 1: the guide's defaults
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr and out.read_text() == text
    missing = run_cli("export", "tiny-study", "--trial", "99", "--studies-dir",
                      str(two_studies / "studies"), cwd=tmp_path)
    assert missing.returncode == 2 and "trial 99" in missing.stderr


@pytest.mark.slow
def test_notebook_executes_headless_against_the_studies(two_studies: Path) -> None:
    folder = two_studies / "studies"
    shutil.copy(REPO / "studies" / "compare.ipynb", folder / "compare.ipynb")
    notebook = nbformat.read(folder / "compare.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = json.dumps([o.get("data", {}).get("text/plain", o.get("text", "")) for o in outputs])
    assert "2 studies, 6 trials" in text and "tiny-study" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.slow
def test_any_optuna_storage_url_works(model_path: Path, tiny_workload_file: Path,
                                      tmp_path: Path, run_cli) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    done = run_cli(str(model_path), "--trials", "2", "--storage", url, "--study-name", "rdb",
                   "--workload", str(tiny_workload_file), "--out", str(tmp_path / "j.env"),
                   *QUICK, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert list(autotune.load_studies(url)["study"].unique()) == ["rdb"]
    shown = run_cli("compare", "--storage", url, cwd=tmp_path)
    assert shown.returncode == 0 and "rdb" in shown.stdout
