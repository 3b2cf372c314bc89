"""The report's PNG plots, drawn from the report's table rows (no log parsing here).

Uses matplotlib's object API with the Agg canvas, never pyplot: no display, no global figure state,
safe to call from tests and batch jobs. `figures(report)` builds every figure; `render_all(report)`
turns them into PNG bytes, which the caller writes atomically. A plot without data still renders,
saying so, so the set of output files is fixed.

Every series is computed within one comparability key (report/keys.py) and labelled with it. Test
losses of different datasets are never drawn on one axis: `test_loss` has one panel per dataset, and
only skill (a ratio to the same dataset's persistence forecast) shares an axis across datasets, one
series per dataset.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

PLAIN_NUMBERS = FuncFormatter(lambda value, _pos: f"{value:g}")  # "4", not "2^2", on log axes

if TYPE_CHECKING:
    from stockpredict.report import Report

FIGSIZE_INCHES = (6.4, 4.4)
DPI = 110
Rows = Sequence[Mapping[str, Any]]
Series = Sequence[tuple[str, Rows]]  # (label of one comparability key, that key's table rows)


def _figure(panels: int = 1) -> tuple[Figure, list]:
    """A figure with `panels` axes stacked vertically, each as tall as a one-panel figure."""
    panels = max(1, panels)
    width, height = FIGSIZE_INCHES
    fig = Figure(figsize=(width, height * panels), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(panels, 1, i + 1) for i in range(panels)]


def _finish(ax, *, xlabel: str, ylabel: str, title: str) -> None:
    """Label, legend and grid every plot the same way."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _series(rows: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any]) -> dict:
    out: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return out


def _prefix(label: str, several: bool) -> str:
    """Name the key in a legend entry only when the plot holds more than one key."""
    return f"{label}: " if several else ""


def _rank_axis(ax, ranks: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(ranks))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def speedup_figure(strong: Series) -> Figure:
    """Measured strong-scaling speedup per (key, global batch), against the ideal S = p/p0."""
    fig, (ax,) = _figure()
    strong = [(label, rows) for label, rows in strong if rows]
    if not strong:
        _no_data(ax, "no strong-scaling runs (make sweep MODE=strong)")
        return fig
    for label, key_rows in strong:
        for (global_batch, _), rows in _series(key_rows, lambda r: (r["global_batch_size"],
                                                                     r["gpus_per_node"])).items():
            ranks = [r["ranks"] for r in rows]
            ax.plot(ranks, [r["speedup"] for r in rows], "o-",
                    label=f"{_prefix(label, len(strong) > 1)}global batch {global_batch}")
            ax.plot(ranks, [p / ranks[0] for p in ranks], ":", color="0.5")
    ax.plot([], [], ":", color="0.5", label="ideal (p/p0)")
    _rank_axis(ax, [r["ranks"] for _, rows in strong for r in rows])
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(PLAIN_NUMBERS)
    _finish(ax, xlabel="ranks p", ylabel="speedup T(p0) / T(p)", title="Strong scaling: speedup vs ideal")
    return fig


def efficiency_figure(strong: Series, weak: Series) -> Figure:
    """Parallel efficiency by rank count: strong (S/(p/p0)) and weak (X_p/((p/p0) X_p0)) series."""
    fig, (ax,) = _figure()
    strong = [(label, rows) for label, rows in strong if rows]
    weak = [(label, rows) for label, rows in weak if rows]
    if not strong and not weak:
        _no_data(ax, "no strong- or weak-scaling runs (make sweep)")
        return fig
    several = len({label for label, _ in (*strong, *weak)}) > 1
    for label, key_rows in strong:
        for (global_batch, _), rows in _series(key_rows, lambda r: (r["global_batch_size"],
                                                                     r["gpus_per_node"])).items():
            ax.plot([r["ranks"] for r in rows], [r["efficiency"] for r in rows], "o-",
                    label=f"{_prefix(label, several)}strong, global batch {global_batch}")
    for label, key_rows in weak:
        for (per_rank, _), rows in _series(key_rows, lambda r: (r["batch_size_per_rank"],
                                                                 r["gpus_per_node"])).items():
            ax.plot([r["ranks"] for r in rows], [r["efficiency"] for r in rows], "s--",
                    label=f"{_prefix(label, several)}weak, batch/rank {per_rank}")
    ax.axhline(1.0, color="0.5", linestyle=":", label="ideal")
    every = [r for _, rows in (*strong, *weak) for r in rows]
    _rank_axis(ax, [r["ranks"] for r in every])
    ax.set_ylim(0, max(1.1, *(r["efficiency"] * 1.05 for r in every)))
    _finish(ax, xlabel="ranks p", ylabel="parallel efficiency", title="Parallel efficiency")
    return fig


def seconds_per_epoch_figure(batch: Series) -> Figure:
    """Seconds per epoch against effective (global) batch size, one line per (key, ranks, nodes)."""
    fig, (ax,) = _figure()
    batch = [(label, rows) for label, rows in batch if rows]
    if not batch:
        _no_data(ax, "no runs with timed epochs")
        return fig
    for label, key_rows in batch:
        for (ranks, nodes), rows in _series(key_rows, lambda r: (r["ranks"], r["nodes"])).items():
            rows = sorted(rows, key=lambda r: r["global_batch_size"])
            ax.plot([r["global_batch_size"] for r in rows], [r["seconds_per_epoch"] for r in rows], "o-",
                    label=f"{_prefix(label, len(batch) > 1)}{ranks} rank(s), {nodes} node(s)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(PLAIN_NUMBERS)
    _finish(ax, xlabel="effective batch size (samples per step, all ranks)",
            ylabel="seconds per epoch (training steps)", title="Seconds per epoch vs batch size")
    return fig


def test_loss_figure(per_dataset: Sequence[tuple[str, Series]]) -> Figure:
    """Test MSE (normalised) against effective batch size with the persistence MSE: one panel per
    dataset (normalised MSEs of different datasets are not comparable), one colour per (key, ranks)."""
    with_mse = [(name, [(label, [r for r in rows if r.get("test_mse") is not None]) for label, rows in keys])
                for name, keys in per_dataset]
    per_dataset = [(name, [(label, rows) for label, rows in keys if rows]) for name, keys in with_mse]
    per_dataset = [(name, keys) for name, keys in per_dataset if keys]
    fig, axes = _figure(len(per_dataset))
    if not per_dataset:
        _no_data(axes[0], "no runs with test metrics")
        return fig
    for ax, (name, keys) in zip(axes, per_dataset):
        for label, key_rows in keys:
            for ranks, rows in _series(key_rows, lambda r: r["ranks"]).items():
                ax.plot([r["global_batch_size"] for r in rows], [r["test_mse"] for r in rows], "o",
                        label=f"{_prefix(label, len(keys) > 1)}{ranks} rank(s)")
        persistence = [r for _, rows in keys for r in rows if r.get("persistence_mse") is not None]
        if persistence:
            ax.plot([r["global_batch_size"] for r in persistence],
                    [r["persistence_mse"] for r in persistence], "x", color="0.4",
                    label="persistence forecast")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(PLAIN_NUMBERS)
        _finish(ax, xlabel="effective batch size", ylabel="test MSE (normalised)",
                title=f"Test loss vs effective batch size: {name}")
    return fig


def skill_figure(per_dataset: Sequence[tuple[str, Rows]]) -> Figure:
    """Skill (1 - MSE / persistence MSE, on the same dataset's test split) against effective batch
    size: the one accuracy measure that may share an axis across datasets; one series per dataset."""
    fig, (ax,) = _figure()
    per_dataset = [(name, [r for r in rows if r.get("skill") is not None]) for name, rows in per_dataset]
    per_dataset = [(name, rows) for name, rows in per_dataset if rows]
    if not per_dataset:
        _no_data(ax, "no runs with test metrics")
        return fig
    for name, rows in per_dataset:
        rows = sorted(rows, key=lambda r: r["global_batch_size"])
        ax.plot([r["global_batch_size"] for r in rows], [r["skill"] for r in rows], "o", label=name)
    ax.axhline(0.0, color="0.5", linestyle=":", label="persistence (skill 0)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(PLAIN_NUMBERS)
    _finish(ax, xlabel="effective batch size", ylabel="skill vs persistence",
            title="Skill vs effective batch size, by dataset")
    return fig


# The accuracy-at-scale figure: rows of panels (measure) x columns (x axis).
# (row column, y label, title); (x column, x label, the series' column, its name in a legend, title)
ACCURACY_MEASURES = (("skill", "skill vs persistence", "Skill"),
                     ("skill_of_optimum", "skill / Kalman optimum (1 = best achievable)", "Skill / optimum"))
ACCURACY_AXES = (("ranks", "ranks p", "global_batch_size", "global batch", "ranks"),
                 ("global_batch_size", "effective (global) batch size", "ranks", "rank(s)", "global batch"))


def accuracy_scale_series(per_key: Series, measure: str, x: str) -> dict[str, list[tuple[Any, Any]]]:
    """The points of one accuracy-at-scale panel: legend label -> [(x, value), ...] sorted by x.

    One series per (key, the other axis's value): against ranks, one line per global batch (the
    data-parallel question at a fixed global batch); against global batch, one line per rank count.
    Each label starts with the key's label (the dataset's name, plus what tells keys apart): only skill
    and skill / optimum, both relative to the same dataset's persistence forecast, share an axis across
    datasets. Rows without the measure (no optimum known: real data) are left out.
    """
    [(_, _, other, other_name, _)] = [a for a in ACCURACY_AXES if a[0] == x]
    out: dict[str, list[tuple[Any, Any]]] = {}
    for label, rows in per_key:
        for value, members in _series([r for r in rows if r.get(measure) is not None],
                                      lambda r: r[other]).items():
            text = f"{label}: {value} {other_name}" if other == "ranks" else f"{label}: {other_name} {value}"
            out[text] = sorted((r[x], r[measure]) for r in members)
    return out


def accuracy_scale_figure(per_key: Series) -> Figure:
    """Does data-parallel training at a larger global batch cost accuracy? Skill (top) and skill /
    Kalman optimum (bottom, only where the optimum is known) against ranks (left) and global batch
    (right), from the accuracy table's rows of each key."""
    width, height = FIGSIZE_INCHES
    fig = Figure(figsize=(2 * width, 2 * height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (measure, ylabel, measure_title) in enumerate(ACCURACY_MEASURES):
        for j, (x, xlabel, _, _, x_title) in enumerate(ACCURACY_AXES):
            ax = fig.add_subplot(2, 2, 2 * i + j + 1)
            series = accuracy_scale_series(per_key, measure, x)
            if not series:
                _no_data(ax, "no runs with test metrics" if measure == "skill"
                         else "optimum unknown for every dataset (real data): no skill / optimum")
                continue
            for label, points in series.items():
                ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
            if measure == "skill":
                ax.axhline(0.0, color="0.5", linestyle=":", label="persistence (skill 0)")
            else:
                ax.axhline(1.0, color="0.5", linestyle=":", label="the optimum")
            if x == "ranks":
                _rank_axis(ax, [p[0] for points in series.values() for p in points])
            else:
                ax.set_xscale("log", base=2)
                ax.xaxis.set_major_formatter(PLAIN_NUMBERS)
            _finish(ax, xlabel=xlabel, ylabel=ylabel, title=f"{measure_title} vs {x_title}")
    return fig


def engines_figure(per_key: Series) -> Figure:
    """Global samples/s (left) and efficiency (right) against ranks, one line per key (its label names
    the engine when two keys differ only in it) and per-rank batch."""
    fig, (left, right) = _figure(panels=2)
    ranks: set[int] = set()
    several = len(per_key) > 1
    for label, rows in per_key:
        for (mode, batch), members in _series(rows, lambda r: (r["mode"], r["batch_size_per_rank"])).items():
            x = [r["ranks"] for r in members]
            ranks.update(x)
            name = f"{_prefix(label, several)}{mode + ', ' if mode else ''}batch {batch}/rank"
            left.plot(x, [r["samples_per_second"] for r in members], marker="o", label=name)
            right.plot(x, [r["efficiency"] for r in members], marker="o", label=name)
    if not ranks:
        _no_data(left, "no timed runs")
        _no_data(right, "no timed runs")
    else:
        for ax in (left, right):
            _rank_axis(ax, sorted(ranks))
        right.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    _finish(left, xlabel="ranks", ylabel="global samples/s", title="Throughput per engine")
    _finish(right, xlabel="ranks", ylabel="efficiency X_p / ((p/p0) X_p0)", title="Efficiency per engine")
    return fig


def figures(report: "Report") -> dict[str, Figure]:
    """Every plot of the report, keyed like the registry's PLOTS (report/registry.py)."""
    from stockpredict.report.keys import dataset_labels

    sections = report.sections
    names = dataset_labels(s.key.dataset for s in sections)
    datasets = list(dict.fromkeys(s.key.dataset for s in sections))  # in section order
    per_dataset = [(names[d], [(s.label, s.accuracy) for s in sections if s.key.dataset == d])
                   for d in datasets]
    return {
        "speedup": speedup_figure([(s.label, s.strong) for s in sections]),
        "efficiency": efficiency_figure([(s.label, s.strong) for s in sections],
                                        [(s.label, s.weak) for s in sections]),
        "seconds_per_epoch": seconds_per_epoch_figure([(s.label, s.batch_size) for s in sections]),
        "test_loss": test_loss_figure(per_dataset),
        "engines": engines_figure([(s.label, s.engines) for s in sections]),
        "skill": skill_figure([(name, [r for _, rows in keys for r in rows]) for name, keys in per_dataset]),
        "accuracy_scale": accuracy_scale_figure([(s.label, s.accuracy) for s in sections]),
    }


def render_all(report: "Report") -> dict[str, bytes]:
    """Every plot of the report as PNG bytes, keyed like the registry's PLOTS."""
    return {name: png(fig) for name, fig in figures(report).items()}
