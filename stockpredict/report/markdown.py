"""Rendering: table rows as CSV text and scaling.md as Markdown text (no file I/O here)."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Mapping, Sequence

from stockpredict.common import rundir
from stockpredict.report import prediction as scaling_render
from stockpredict.report.keys import dataset_labels
from stockpredict.report.parse import MODES, SCHEMA_VERSION
from stockpredict.report.registry import COST, PLOTS, SCALING, SCALING_PLOT, STEP_BREAKDOWN, TABLES
from stockpredict.report.restarts import restart_summary
from stockpredict.report.tables import Report, Section


def _csv_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text with a header row; blanks for missing values; floats at full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(c)) for c in columns])
    return buffer.getvalue()


_FORMATS = {
    "seconds_per_epoch": "{:.3f}", "seconds_per_step": "{:.4f}", "samples_per_second": "{:,.0f}",
    "speedup": "{:.2f}", "throughput_ratio": "{:.2f}", "efficiency": "{:.0%}", "karp_flatt": "{:.3f}",
    "steps_per_epoch": "{:g}", "learning_rate": "{:.3g}", "test_mse": "{:.3e}", "persistence_mse": "{:.3e}",
    "rmse_price": "{:.4f}", "mae_price": "{:.4f}", "persistence_rmse_price": "{:.4f}", "skill": "{:.3f}",
    "direction_accuracy": "{:.1%}", "compute_share": "{:.1%}", "negotiate_share": "{:.1%}",
    "allreduce_share": "{:.1%}", "model_communication_share": "{:.1%}",
    "kalman_skill": "{:.3f}", "window_skill": "{:.3f}", "skill_of_optimum": "{:.3f}",
    **{f"{part}_seconds": "{:.1f}" for part in ("queue_wait", "elapsed", "startup", "train", "val", "test",
                                               "checkpoint", "rest", "predicted")},
    "node_hours": "{:.4f}", "gpu_hours": "{:.4f}", "cost": "{:.4f}", "predicted_cost": "{:.4f}",
    "named_share": "{:.1%}", "unexplained_share": "{:.1%}", "cpu_efficiency": "{:.0%}",
    "memory_use": "{:.0%}",
}
# The cost table's Markdown columns (cost.csv has them all).
_COST_MARKDOWN = ("run_id", "job_id", "source", "queue_wait_seconds", "elapsed_seconds", "node_hours",
                  "gpu_hours", "startup_seconds", "train_seconds", "val_seconds", "test_seconds",
                  "checkpoint_seconds", "rest_seconds", "named_share", "cost", "predicted_seconds",
                  "predicted_cost", "unexplained_share", "cpu_efficiency", "memory_use")
# Blank means "unknown" here, and the table says so (real data has no known optimum).
_UNKNOWN_WHEN_BLANK = ("kalman_skill", "window_skill")
_HEADINGS = {
    "global_batch_size": "global batch", "batch_size_per_rank": "batch/rank", "gpus_per_node": "GPUs/node",
    "seconds_per_epoch": "s/epoch", "seconds_per_step": "s/step", "samples_per_second": "samples/s",
    "karp_flatt": "Karp-Flatt e", "throughput_ratio": "X_p/X_p0", "steps_per_epoch": "steps/epoch",
    "learning_rate": "LR", "test_mse": "test MSE (norm.)", "rmse_price": "RMSE (price)",
    "mae_price": "MAE (price)",
    "persistence_mse": "persist. MSE (norm.)", "persistence_rmse_price": "persist. RMSE (price)",
    "direction_accuracy": "direction acc.", "first_start": "first run", "last_start": "last run",
    "kalman_skill": "optimum (Kalman)", "window_skill": "optimum (window)",
    "skill_of_optimum": "skill / optimum",
    **{f"{part}_seconds": f"{part.replace('_', ' ')} s" for part in (
        "queue_wait", "elapsed", "startup", "train", "val", "test", "checkpoint", "rest", "predicted")},
    "named_share": "named parts", "predicted_cost": "predicted cost", "cpu_efficiency": "CPU eff.",
}


def _cost_section(report: Report, section: Section) -> list[str]:
    """The key's cost table (runs and a total row), the runs whose split is unknown and seff's flags."""
    rows = section.cost
    price = report.config.pricing
    priced = (f"Price: {price.price_per_hour:g} per {price.unit}-hour." if price is not None
              else "No price given (PRICE=/--price-per-hour): the cost columns are blank.")
    out = ["", f"### {COST.title}", "", COST.text, "", f"{report.accounting}. {priced}", "",
           render_markdown_table(rows, _COST_MARKDOWN).rstrip("\n")]
    unknown = [r["run_id"] for r in rows if r["run_id"] != "total" and r["split"] != "recorded"]
    if unknown:
        out.extend(["", f"Split unknown (logs from before the trainer recorded start-up, checkpoint and "
                        f"test times): {', '.join(unknown)}."])
    out.extend(f"- {r['run_id']}: {r['flags']}" for r in rows if r.get("flags"))
    out.extend(["", f"CSV: [{COST.csv_file}]({COST.csv_file})"])
    return out


def _md_cell(column: str, value: Any) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "unknown" if column in _UNKNOWN_WHEN_BLANK else ""
    fmt = _FORMATS.get(column)
    text = fmt.format(value) if fmt and isinstance(value, (int, float)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "_No rows._\n"
    lines = ["| " + " | ".join(_HEADINGS.get(c, c.replace("_", " ")) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_md_cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _keys_table(report: Report) -> list[str]:
    """The header's list of every key in the logs, with run counts and whether this report shows it."""
    shown = {s.key for s in report.sections}
    lines = ["| dataset | windows (train/val/test) | fingerprint | model | engine | runs | shown |",
             "|---|---|---|---|---|---|---|"]
    for key, count in report.keys:
        fingerprint = key.dataset.prefix if key.dataset.fingerprint else "none recorded: keyed by path"
        cells = (key.dataset.name, key.dataset.windows_text, fingerprint, key.model_text or "not recorded",
                 key.engine, str(count), "yes" if key in shown else "no (--dataset)")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _number(value: Any, fmt: str) -> str:
    return "?" if value is None else fmt.format(value)


def _optimum_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Below a key's accuracy table: each configuration's skill against the best achievable ("skill
    0.263 of a possible 0.290"), or that the optimum is unknown (real data)."""
    if not rows:
        return []
    if all(r.get("kalman_skill") is None for r in rows):
        return ["", "**Optimum: unknown.** These runs recorded no optimum (real data, or logs written "
                "before `run_start` carried `optimum`), so skill is measured against persistence only; how "
                "much more is learnable cannot be said."]
    out = ["", "**Against the optimum** (the best achievable skill on this test split, from the synthetic "
           "data's generating parameters):", ""]
    for r in rows:
        config = (f"{r['ranks']} rank(s), global batch {r['global_batch_size']}, LR "
                  f"{_number(r.get('learning_rate'), '{:.3g}')}, {r['epochs']} epochs")
        if r.get("kalman_skill") is None:
            out.append(f"- {config}: skill {_number(r.get('skill'), '{:.3f}')}; optimum not recorded.")
            continue
        ratio = r.get("skill_of_optimum")
        window = r.get("window_skill")
        if r["kalman_skill"] == 0:
            out.append(f"- {config}: skill {_number(r.get('skill'), '{:.4f}')}; the optimum is 0 (nothing is "
                       "learnable, e.g. a random walk: 0 is the best a model can do).")
            continue
        out.append(f"- {config}: skill {_number(r.get('skill'), '{:.3f}')} of a possible "
                   f"{r['kalman_skill']:.3f}" + (f" ({ratio:.3f} x)" if ratio is not None else "")
                   + (f"; window-limited optimum {window:.3f}" if window is not None else "") + ".")
    return out


def _warning_lines(report: Report) -> list[str]:
    """The header's list of each shown dataset's preprocessing warnings (run_start `dataset_warnings`)."""
    per_dataset: dict[Any, tuple[list[bool], list[str]]] = {}
    for section in report.sections:
        recorded, warnings = per_dataset.setdefault(section.key.dataset, ([], []))
        for run in section.runs:
            recorded.append(run.dataset_warnings is not None)
            warnings.extend(w for w in run.dataset_warnings or () if w not in warnings)
    if not per_dataset:
        return []
    labels = dataset_labels(per_dataset)
    out = ["- **Dataset warnings** (from preprocessing, as the runs recorded them):"]
    for dataset, (recorded, warnings) in per_dataset.items():
        if warnings:
            out.append(f"  - {labels[dataset]}:")
            out += [f"    - {w}" for w in warnings]
        elif any(recorded):
            out.append(f"  - {labels[dataset]}: none.")
        else:
            out.append(f"  - {labels[dataset]}: not recorded (logs from before `run_start` carried "
                       "`dataset_warnings`).")
    return out


def _section_heading(section) -> list[str]:
    key = section.key
    dataset = key.dataset
    if dataset.fingerprint:
        title = f"{dataset.name}: {dataset.windows_text} windows, fingerprint {dataset.prefix}"
    else:
        title = f"{dataset.name}: {dataset.windows_text} windows, keyed by path (no fingerprint recorded)"
    modes = {m: sum(1 for r in section.runs if r.mode == m) for m in (*MODES, None)}
    return [
        "", f"## {title}", "",
        f"- **Model:** {key.model_text or 'not recorded'}; **engine:** {key.engine}; **runs:** "
        f"{len(section.runs)} ({modes['strong']} strong, {modes['weak']} weak, {modes[None]} without a "
        "mode)." + (f" Plot label: {section.label}." if section.label != dataset.name else ""),
    ] + ([f"- **No timed epochs** (too few epochs after warm-up; accuracy only): "
          f"{', '.join(section.untimed_runs)}."] if section.untimed_runs else [])


def _model_sections(section: Section, scaling_plot: str | None) -> list[str]:
    """The key's scaling model (fitted parameters, held-out check, peaks, predictions, its plot) and,
    when some run recorded a timeline, the step-time breakdown."""
    out = ["", f"### {SCALING.title}", ""]
    scaling = section.scaling
    if scaling is None or scaling.analysis is None:
        out.append(f"_{scaling.note if scaling is not None else 'no scaling model'}._")
    else:
        text = scaling_render.render_markdown(scaling.analysis)
        # Its own "## Scaling model" heading: this section already has one, one level down.
        out.extend(text.split("\n", 1)[1].strip("\n").splitlines())
        if scaling.benchmarks:
            out.extend(["", f"Allreduce benchmarks in the fit: {', '.join(scaling.benchmarks)}."])
        out.extend(["", f"CSV: [{SCALING.csv_file}]({SCALING.csv_file})"])
        if scaling_plot:
            out.extend(["", f"![{SCALING_PLOT.alt_text}]({scaling_plot})"])
    if scaling is not None and scaling.left_out:
        out.extend(["", f"Left out of the fit (they recorded a Horovod timeline, which costs time and "
                        f"usually caps the steps): {', '.join(scaling.left_out)}."])
    if any(r.timeline_recorded for r in section.runs):
        out.extend(["", f"### {STEP_BREAKDOWN.title}", "", STEP_BREAKDOWN.text, "",
                    render_markdown_table(section.step_breakdown, STEP_BREAKDOWN.columns).rstrip("\n"), "",
                    f"CSV: [{STEP_BREAKDOWN.csv_file}]({STEP_BREAKDOWN.csv_file})"])
    return out


def render_markdown(report: Report, plot_files: Mapping[str, str],
                    scaling_plots: Mapping[int, str] | None = None) -> str:
    """scaling.md: header (what, where, when, which keys, what was skipped), one section of tables per
    comparability key (with its scaling model), the plots, the settings. `scaling_plots` maps a
    section's index to its scaling-model PNG."""
    scaling_plots = scaling_plots or {}
    runs = report.runs
    hosts = sorted({h for r in runs for h in r.hosts})
    starts = sorted(r.started for r in runs if r.started)
    modes = {m: sum(1 for r in runs if r.mode == m) for m in (*MODES, None)}
    resumed = [r.run_id for r in runs if r.attempts > 1]
    by_path = sum(count for key, count in report.keys if key.dataset.by_path)
    w = report.config.warmup_epochs
    out = [
        "# Scaling report",
        "",
        "Generated by `python -m stockpredict.report` from the trainer's timing logs "
        f"(`{report.config.runs_dir}/*/{rundir.TIMING_LOG}`, schema {SCHEMA_VERSION}); docs/report.md "
        "explains "
        "every column.",
        "",
        "- **Measured:** wall time of each epoch's training steps on rank 0 (validation excluded) and "
        "global training samples/s, per epoch; test-split metrics at the end of each run.",
        f"- **Where:** {', '.join(hosts) if hosts else 'hosts not recorded'}.",
        (f"- **When:** {starts[0]} to {starts[-1]} (UTC, run starts)." if starts
         else "- **When:** not recorded."),
        f"- **Runs used:** {len(runs)} ({modes['strong']} strong, {modes['weak']} weak, {modes[None]} "
        f"without a mode: those appear only in the batch-size and accuracy tables); {len(resumed)} "
        "resumed after preemption" + (f" ({', '.join(resumed)})" if resumed else "") + ".",
        restart_summary(runs),
        f"- **Statistic:** the first {w} epoch(s) logged after every run start (graph building; again "
        "after a restart) and epochs flagged `resumed` are excluded; each run contributes the median over "
        "its remaining epochs, and each row is the median over its runs. `runs` and `epochs` give how "
        "many runs and timed epochs a row rests on.",
        f"- **Comparability keys ({len(report.keys)}):** runs are compared only within one key: the same "
        "dataset (content fingerprint), model configuration and engine. Every median, ratio and table "
        "below is computed within one key, and each key has its own section.",
        "",
        *_keys_table(report),
        "",
    ]
    if report.selected is not None:
        out.append(f"- **Filter:** `--dataset {report.config.dataset}` selects {report.selected.label()}; "
                   f"{len(report.sections)} of {len(report.keys)} key(s) shown.")
    if by_path:
        out.append(f"- **Keyed by path:** {by_path} run(s) have logs without a dataset fingerprint (written "
                   "before run_start recorded `dataset_id`); they are keyed by the recorded dataset path and "
                   "window counts, which cannot tell a regenerated file from the old one at the same path.")
    out += _warning_lines(report)
    if report.skipped:
        out.append(f"- **Skipped logs ({len(report.skipped)}):**")
        out += [f"  - `{s.path}`: {s.reason}" for s in report.skipped]
    else:
        out.append("- **Skipped logs:** none.")
    if report.benchmarks:
        out.append(f"- **Allreduce benchmarks ({len(report.benchmarks)}):** "
                   f"{', '.join(b.run_id for b in report.benchmarks)}; each joins the scaling model of "
                   "every key with the same engine and gradient size.")
    if report.notes:
        out.append("- **Notes:** " + "; ".join(report.notes) + ".")

    for index, section in enumerate(report.sections):
        out.extend(_section_heading(section))
        for table in TABLES:
            out.extend(["", f"### {table.title}", "", table.text, "",
                        render_markdown_table(getattr(section, table.name),
                                              table.markdown_columns).rstrip("\n"),
                        *(_optimum_lines(section.accuracy) if table.name == "accuracy" else ()), "",
                        f"CSV: [{table.csv_file}]({table.csv_file})"])
        out.extend(_model_sections(section, scaling_plots.get(index)))
        out.extend(_cost_section(report, section))
    if plot_files:
        out.extend(["", "## Plots", "", "Every series is computed within one comparability key and labelled "
                    "with it; test losses of different datasets never share an axis."])
        for plot in PLOTS:
            if plot.name in plot_files:
                out.extend(["", f"### {plot.title}", "", f"![{plot.alt_text}]({plot_files[plot.name]})"])
    out.extend(["", "## Report settings", "", "```json", json.dumps(report.config.to_dict(), indent=2,
                                                                       sort_keys=True), "```", ""])
    return "\n".join(out)
