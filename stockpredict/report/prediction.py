"""The scaling model in the report: a Markdown section and a plot of measured against predicted.

    render_markdown(analysis)  -> str    ("## Scaling model" section; fitted parameters, held-out check,
                                          speedup peaks, the prediction table at powers of two)
    plot_prediction(analysis)  -> bytes  (PNG: seconds per epoch and speedup against ranks, lines =
                                          model, markers = measured runs)
    write_prediction_csv(analysis) -> str (results/scaling_prediction.csv text, analysis.columns)

matplotlib's object API on the Agg canvas (no pyplot, no display), as in stockpredict/report/plots.py.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from stockpredict.report.scaling_model import ScalingAnalysis

# Doubling the ranks must gain at least this much speedup to count as "still paying".
WORTHWHILE_GAIN = 0.10


def _ms(seconds: float) -> str:
    seconds = float(f"{seconds:.3g}")  # round first: a fitted 0.99999 ms is "1 ms", not "1e+03 us"
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} us"


def _bandwidth(bytes_per_s: float) -> str:
    if math.isinf(bytes_per_s):
        return "not counted"
    return f"{bytes_per_s / 1e9:.3g} GB/s" if bytes_per_s >= 1e9 else f"{bytes_per_s / 1e6:.3g} MB/s"


def last_worthwhile_doubling(rows: list[dict], gain: float = WORTHWHILE_GAIN) -> int | None:
    """The largest power-of-two rank count reached while every doubling still raised the predicted
    speedup by at least `gain` (10 %): past it, more ranks stop paying. None without rows."""
    by_ranks = {r["ranks"]: r["predicted_speedup"] for r in rows}
    ranks = 1 if 1 in by_ranks else None
    while ranks is not None and 2 * ranks in by_ranks and by_ranks[2 * ranks] >= by_ranks[ranks] * (1 + gain):
        ranks *= 2
    return ranks


def _format(value: Any, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if key.startswith("cost") or key.startswith("hours"):
            return f"{value:.4g}"
        if key in ("predicted_speedup", "predicted_efficiency", "predicted_communication_share"):
            return f"{value:.2f}"
        return f"{value:.4g}"
    return str(value)


def render_markdown(analysis: ScalingAnalysis) -> str:
    """The report's "Scaling model" section (Markdown)."""
    fit, held = analysis.fit, analysis.held_out
    lines = ["## Scaling model", "",
             "Per-step time on p ranks with per-rank batch b: t(p, b) = overhead + per_sample x b "
             "+ 2(p-1) x latency + 2(p-1)/p x S / bandwidth (ring allreduce of S gradient bytes); "
             "docs/scaling.md explains it.", "",
             "| parameter | value | from |", "|---|---|---|",
             f"| overhead per step | {_ms(fit.overhead_s)} | {fit.compute_source} |",
             f"| compute per sample | {_ms(fit.per_sample_s)} | {fit.compute_source} |",
             f"| latency per ring step | {_ms(fit.latency_s)} | {fit.communication_source} |",
             f"| bandwidth | {_bandwidth(fit.bandwidth_bytes_per_s)} | {fit.communication_source} |",
             f"| gradient size S | {fit.gradient_bytes:,} bytes | the runs' logs |", ""]
    lines += [f"- Note: {note}" for note in fit.notes]
    if analysis.predict_network:
        lines.append(f"- Predictions below are for network `{analysis.predict_network}`: the fitted compute "
                     f"with that preset's latency and bandwidth (the held-out check uses the fitted "
                     f"network).")
    lines += ["", "**Held-out check.** "]
    if held.points:
        lines[-1] += (f"Refitted without the {held.ranks}-rank runs, the model predicts them as follows "
                      f"(largest error {held.max_abs_error:.1%}).")
        lines += ["", "| run | ranks | batch/rank | measured s/epoch | predicted s/epoch | error |",
                  "|---|---|---|---|---|---|"]
        for p in held.points:
            lines.append(f"| {p.point.label} | {p.point.ranks} | {p.point.batch_size_per_rank} | "
                         f"{p.point.seconds_per_epoch:.4g} | {p.predicted_seconds_per_epoch:.4g} | "
                         f"{p.error:+.1%} |")
    else:
        lines[-1] += f"Not possible: {held.reason}."
    lines += ["", "**Where speedup peaks** (ranks 1 to the largest predicted):", ""]
    for name, peak in analysis.peaks:
        rows = [r for r in analysis.rows if r["series"] == name]
        if peak is None:
            lines.append(f"- {name}: no rank count fits this series.")
            continue
        last = max(r["ranks"] for r in rows)
        where = "still rising at the largest rank count" if peak["ranks"] == last else "then falls"
        worthwhile = last_worthwhile_doubling(rows)
        lines.append(f"- {name}: highest predicted speedup {peak['predicted_speedup']:.2f} at "
                     f"{peak['ranks']} ranks ({where}); doublings gain >= {WORTHWHILE_GAIN:.0%} up to "
                     f"{worthwhile} ranks.")
    shown = [c for c in analysis.columns if c not in ("predicted_seconds_per_step", "steps_per_epoch")]
    lines += ["", "Predictions (results/scaling_prediction.csv has every rank count and column):", "",
              "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in analysis.rows:
        if row["ranks"] & (row["ranks"] - 1) == 0 or row["measured_seconds_per_epoch"] is not None:
            lines.append("| " + " | ".join(_format(row.get(c), c) for c in shown) + " |")
    return "\n".join(lines) + "\n"


def write_prediction_csv(analysis: ScalingAnalysis) -> str:
    """The prediction table as CSV text (full precision, empty cells for missing measurements)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(analysis.columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in analysis.rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in analysis.columns})
    return buffer.getvalue()


def plot_prediction(analysis: ScalingAnalysis) -> bytes:
    """PNG: per series, predicted seconds per epoch and speedup (lines) with the measured runs (markers).
    Measured speedup is against the series' measured 1-rank run, or the predicted one without it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(11, 4.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax_time, ax_speed = fig.subplots(1, 2)
    for index, (name, _peak) in enumerate(analysis.peaks):
        rows = [r for r in analysis.rows if r["series"] == name]
        if not rows:
            continue
        color = f"C{index % 10}"
        ranks = [r["ranks"] for r in rows]
        ax_time.plot(ranks, [r["predicted_seconds_per_epoch"] for r in rows], color=color,
                     label=f"{name} (model)")
        ax_speed.plot(ranks, [r["predicted_speedup"] for r in rows], color=color, label=f"{name} (model)")
        measured = [r for r in rows if r["measured_seconds_per_epoch"] is not None]
        base = next((r["measured_seconds_per_epoch"] for r in measured if r["ranks"] == 1),
                    rows[0]["predicted_seconds_per_epoch"] if rows[0]["ranks"] == 1 else None)
        if measured:
            ax_time.plot([r["ranks"] for r in measured], [r["measured_seconds_per_epoch"] for r in measured],
                         "o", color=color, label=f"{name} (measured)")
            if base:
                ax_speed.plot([r["ranks"] for r in measured],
                              [base / r["measured_seconds_per_epoch"] for r in measured], "o", color=color,
                              label=f"{name} (measured)")
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    for ax, ylabel, title in ((ax_time, "seconds per epoch", "Epoch time"),
                              (ax_speed, "speedup over 1 rank", "Speedup")):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(plain)
        ax.set_xlabel("ranks")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if analysis.rows:
            ax.legend(fontsize="x-small")
        else:
            ax.text(0.5, 0.5, "no series to predict", ha="center", va="center", transform=ax.transAxes)
    ax_time.set_yscale("log")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
