"""The report's four PNG plots, drawn from the report's table rows (no log parsing here).

Uses matplotlib's object API with the Agg canvas, never pyplot: no display, no global figure state,
safe to call from tests and batch jobs. Each function returns PNG bytes; the caller writes them
atomically. A plot without data still renders, saying so, so the set of output files is fixed.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

PLAIN_NUMBERS = FuncFormatter(lambda value, _pos: f"{value:g}")  # "4", not "2^2", on log axes

if TYPE_CHECKING:
    from .report import Report

FIGSIZE_INCHES = (6.4, 4.4)
DPI = 110


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGSIZE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _finish(fig, ax, *, xlabel: str, ylabel: str, title: str) -> bytes:
    """Label, legend and grid every plot the same way; return the PNG bytes."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    return _png(fig)


def _png(fig: Figure) -> bytes:
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


def _rank_axis(ax, ranks: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(ranks))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def speedup_plot(strong_rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Measured strong-scaling speedup per global batch, against the ideal S = p/p0."""
    fig, ax = _figure()
    if not strong_rows:
        _no_data(ax, "no strong-scaling runs (make sweep MODE=strong)")
        return _png(fig)
    for (global_batch, gpn), rows in _series(strong_rows, lambda r: (r["global_batch_size"], r["gpus_per_node"])).items():
        ranks = [r["ranks"] for r in rows]
        ax.plot(ranks, [r["speedup"] for r in rows], "o-", label=f"global batch {global_batch}")
        ax.plot(ranks, [p / ranks[0] for p in ranks], ":", color="0.5")
    ax.plot([], [], ":", color="0.5", label="ideal (p/p0)")
    _rank_axis(ax, [r["ranks"] for r in strong_rows])
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(PLAIN_NUMBERS)
    return _finish(fig, ax, xlabel="ranks p", ylabel="speedup T(p0) / T(p)", title="Strong scaling: speedup vs ideal")


def efficiency_plot(strong_rows: Sequence[Mapping[str, Any]], weak_rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Parallel efficiency by rank count: strong (S/(p/p0)) and weak (X_p/((p/p0) X_p0)) series."""
    fig, ax = _figure()
    if not strong_rows and not weak_rows:
        _no_data(ax, "no strong- or weak-scaling runs (make sweep)")
        return _png(fig)
    for (global_batch, _), rows in _series(strong_rows, lambda r: (r["global_batch_size"], r["gpus_per_node"])).items():
        ax.plot([r["ranks"] for r in rows], [r["efficiency"] for r in rows], "o-",
                label=f"strong, global batch {global_batch}")
    for (per_rank, _), rows in _series(weak_rows, lambda r: (r["batch_size_per_rank"], r["gpus_per_node"])).items():
        ax.plot([r["ranks"] for r in rows], [r["efficiency"] for r in rows], "s--",
                label=f"weak, batch/rank {per_rank}")
    ax.axhline(1.0, color="0.5", linestyle=":", label="ideal")
    _rank_axis(ax, [r["ranks"] for r in (*strong_rows, *weak_rows)])
    top = max(1.1, *(r["efficiency"] * 1.05 for r in (*strong_rows, *weak_rows)))
    ax.set_ylim(0, top)
    return _finish(fig, ax, xlabel="ranks p", ylabel="parallel efficiency", title="Parallel efficiency")


def seconds_per_epoch_plot(batch_rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Seconds per epoch against effective (global) batch size, one line per (ranks, nodes)."""
    fig, ax = _figure()
    if not batch_rows:
        _no_data(ax, "no runs with timed epochs")
        return _png(fig)
    for (ranks, nodes), rows in _series(batch_rows, lambda r: (r["ranks"], r["nodes"])).items():
        rows = sorted(rows, key=lambda r: r["global_batch_size"])
        ax.plot([r["global_batch_size"] for r in rows], [r["seconds_per_epoch"] for r in rows], "o-",
                label=f"{ranks} rank(s), {nodes} node(s)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(PLAIN_NUMBERS)
    return _finish(fig, ax, xlabel="effective batch size (samples per step, all ranks)", ylabel="seconds per epoch (training steps)", title="Seconds per epoch vs batch size")


def test_loss_plot(accuracy_rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Test MSE (normalised) against effective batch size, per rank count, with the persistence MSE."""
    fig, ax = _figure()
    rows = [r for r in accuracy_rows if r.get("test_mse") is not None]
    if not rows:
        _no_data(ax, "no runs with test metrics")
        return _png(fig)
    for ranks, members in _series(rows, lambda r: r["ranks"]).items():
        ax.plot([r["global_batch_size"] for r in members], [r["test_mse"] for r in members], "o",
                label=f"{ranks} rank(s)")
    persistence = [r for r in rows if r.get("persistence_mse") is not None]
    if persistence:
        ax.plot([r["global_batch_size"] for r in persistence], [r["persistence_mse"] for r in persistence],
                "x", color="0.4", label="persistence forecast")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(PLAIN_NUMBERS)
    return _finish(fig, ax, xlabel="effective batch size", ylabel="test MSE (normalised)", title="Test loss vs effective batch size")


def render_all(report: "Report") -> dict[str, bytes]:
    """Every plot of the report as PNG bytes, keyed like report.PLOT_NAMES."""
    return {
        "speedup": speedup_plot(report.strong),
        "efficiency": efficiency_plot(report.strong, report.weak),
        "seconds_per_epoch": seconds_per_epoch_plot(report.batch_size),
        "test_loss": test_loss_plot(report.accuracy),
    }
