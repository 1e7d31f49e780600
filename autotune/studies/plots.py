"""Figures of studies: PNG through matplotlib, HTML through plotly, chosen by extension."""

from __future__ import annotations

import html
import os
from pathlib import Path

import optuna

from autotune.errors import AutotuneError, Option
from autotune.guide import DEFAULTS_LABEL
from autotune.measure.settings import BY_FIELD
from autotune.safe_text import visible
from autotune.studies import standing
from autotune.studies.records import StudyRecord, TrialRecord
from autotune.studies.tables import feasible_study

KINDS = ("png", "html")
STUDY_PLOTS = ("optimization_history", "slice", "parallel_coordinate")
NAME_LIMIT = 60  # characters of a study name on a figure


def kind_of(path: str | os.PathLike[str]) -> str:
    kind = Path(path).suffix.lower().lstrip(".")
    if kind not in KINDS:
        raise AutotuneError(Option("plot", visible(path)), ": expected a .png or .html file "
                            "name")
    return kind


def latency_groups(study: optuna.Study) -> list[tuple[str, list[float]]]:
    """One study's boxes: its confirmed winner, or plainly its best search trial; the defaults.

    A box holds the request latencies of one search run of that configuration.
    """
    groups = []
    name = visible(study.study_name, NAME_LIMIT)
    winner = StudyRecord.read(study).winner
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    kept = {number: TrialRecord.read(t, study.study_name) for number, t in trials.items()}
    number = winner.trial_number if winner else None
    chosen = kept.get(number) if number is not None else None
    if chosen is not None and chosen.latencies:
        groups.append((f"{name}\nconfirmed winner (trial {number})", list(chosen.latencies)))
    elif winner is None and (best := standing.best(study)) is not None:
        groups.append((f"{name}\nbest search trial {best.number} (unconfirmed)",
                       list(kept[best.number].latencies)))
    for record in kept.values():
        if record.label == DEFAULTS_LABEL and record.latencies:
            groups.append((f"{name}\nguide defaults", list(record.latencies)))
            break
    return groups


def best_settings_rows(studies: list[optuna.Study]) -> list[list[str]]:
    """Per study: its name, whose settings these are, and the settings."""
    rows = []
    for study in studies:
        record = StudyRecord.read(study)
        settings, source = (record.winner.settings if record.winner else None), "confirmed winner"
        if settings is None:
            best = standing.best(study)
            settings = TrialRecord.read(best, study.study_name).settings if best else None
            source = f"best search trial {best.number}, unconfirmed" if best else "no trial"
        rows.append([f"{visible(study.study_name, NAME_LIMIT)} ({source})"]
                    + [f"{BY_FIELD[f].name.removeprefix('JARVIS_')}="
                       f"{settings.value(f) if settings else '-'}"
                       for f in record.tuned_fields if f in BY_FIELD])
    return rows


def for_matplotlib(text: str) -> str:
    """Literal text: a `$` would start mathtext (and a stray one raises)."""
    return text.replace("$", r"\$")


def compare_figure(studies: list[optuna.Study], path: str | os.PathLike[str]) -> Path:
    """Latency distributions (best trial vs guide defaults) and best settings, per study."""
    kind = kind_of(path)
    groups = [g for study in studies for g in latency_groups(study)]
    if not groups:
        raise AutotuneError("no finished trials to plot")
    rows = best_settings_rows(studies)
    out = Path(path)
    if kind == "png":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5),
                                          gridspec_kw={"width_ratios": [3, 2]})
        left.boxplot([values for _, values in groups], showmeans=True)
        left.set_xticks(range(1, len(groups) + 1), [for_matplotlib(name) for name, _ in groups],
                        fontsize=7)
        left.set_ylabel("request latency (s)")
        left.set_title("Latency distributions")
        right.axis("off")
        right.set_title("Winners")
        right.text(0, 1, for_matplotlib("\n\n".join("\n".join(row) for row in rows)), va="top",
                   fontsize=8, family="monospace")
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
    else:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                            specs=[[{"type": "xy"}, {"type": "table"}]],
                            subplot_titles=("Latency distributions", "Winners"))
        for name, values in groups:  # plotly renders some HTML in names: escape it all
            fig.add_trace(go.Box(y=values, name=html.escape(name.replace("\n", " ")),
                                 boxmean=True), 1, 1)
        fig.add_trace(go.Table(header={"values": ["study", "settings"]},
                               cells={"values": [[html.escape(r[0]) for r in rows],
                                                 ["<br>".join(html.escape(c) for c in r[1:])
                                                  for r in rows]]}), 1, 2)
        fig.update_yaxes(title_text="request latency (s)", row=1, col=1)
        fig.write_html(out, include_plotlyjs="cdn")
    return out


def study_plots(study: optuna.Study, folder: str | os.PathLike[str], kind: str = "html"
                ) -> list[Path]:
    """Optimisation history, slice and parallel coordinates of the finished trials, and the
    latency-memory front."""
    if kind not in KINDS:
        raise AutotuneError(Option("plot_format", visible(kind, 40)), ": expected png or html")
    finished = feasible_study(study)
    if not finished.trials:
        raise AutotuneError(f"study {study.study_name!r} has no finished trials to plot")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in STUDY_PLOTS:
        path = out / f"{safe(study.study_name)}-{name}.{kind}"
        if kind == "html":
            figure = getattr(optuna.visualization, f"plot_{name}")(finished)
            figure.write_html(path, include_plotlyjs="cdn")
        else:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            axes = getattr(optuna.visualization.matplotlib, f"plot_{name}")(finished)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
        written.append(path)
    written.append(front_figure(study, out / f"{safe(study.study_name)}-front.{kind}"))
    return written


def front_figure(study: optuna.Study, path: Path) -> Path:
    """Every feasible configuration's value against its peak memory, the front joined up,
    and the three profiles named."""
    from autotune.studies.profiles import front, points_of, unconfirmed_profiles

    points = points_of(study)
    line = front(points)
    profiles = StudyRecord.read(study).profiles or unconfirmed_profiles(study)
    title = f"{visible(study.study_name, NAME_LIMIT)}: latency against peak memory"
    labels = [(", ".join(n for n, p in profiles.items() if p.trial_number == q.trial_number),
               q) for q in line]
    if path.suffix == ".png":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(figsize=(7, 5))
        axes.scatter([p.memory_bytes / 2**20 for p in points], [p.value_s for p in points],
                     color="lightgray", label="feasible trials")
        axes.plot([p.memory_bytes / 2**20 for p in line], [p.value_s for p in line], "o-",
                  label="front")
        for text, point in labels:
            if text:
                axes.annotate(text, (point.memory_bytes / 2**20, point.value_s),
                              textcoords="offset points", xytext=(6, 6), fontsize=8)
        axes.set_xlabel("peak memory (MiB)")
        axes.set_ylabel("value (s)")
        axes.set_title(for_matplotlib(title), fontsize=9)
        axes.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    else:
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_trace(go.Scatter(x=[p.memory_bytes / 2**20 for p in points],
                                 y=[p.value_s for p in points], mode="markers",
                                 name="feasible trials", marker={"color": "lightgray"},
                                 text=[f"trial {p.trial_number}" for p in points]))
        fig.add_trace(go.Scatter(x=[p.memory_bytes / 2**20 for p in line],
                                 y=[p.value_s for p in line], mode="lines+markers+text",
                                 name="front", text=[text for text, _ in labels],
                                 textposition="top right"))
        fig.update_layout(title=html.escape(title), xaxis_title="peak memory (MiB)",
                          yaxis_title="value (s)")
        fig.write_html(path, include_plotlyjs="cdn")
    return path


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
