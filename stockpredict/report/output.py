"""Writing the report: every CSV, PNG and scaling.md, each atomically, scaling.md last."""

from __future__ import annotations

from pathlib import Path

from stockpredict.common import rundir
from stockpredict.common.errors import UserError
from stockpredict.common.files import write_atomic
from stockpredict.common.logs import get_logger
from stockpredict.report.cost import run_sacct
from stockpredict.report.markdown import render_csv, render_markdown
from stockpredict.report.parse import load_runs
from stockpredict.report.registry import COST, PLOTS, SCALING, STEP_BREAKDOWN, TABLES, scaling_plot_file
from stockpredict.report.report_config import ReportConfig
from stockpredict.report.tables import Report, build_report

log = get_logger("stockpredict.report")


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write scaling.md, the CSVs and (if enabled) the PNGs; return the paths written, scaling.md first."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {out_dir}: {err.strerror or err}") from None
    outputs: list[tuple[Path, bytes | str]] = [
        (out_dir / table.csv_file, render_csv(getattr(report, table.name), table.csv_columns))
        for table in TABLES]
    outputs.append((out_dir / SCALING.csv_file,
                    render_csv(report.scaling_prediction, report.scaling_columns)))
    outputs.append((out_dir / STEP_BREAKDOWN.csv_file,
                    render_csv(report.step_breakdown, STEP_BREAKDOWN.csv_columns)))
    outputs.append((out_dir / COST.csv_file, render_csv(report.cost, COST.csv_columns)))
    plot_files: dict[str, str] = {}
    scaling_plots: dict[int, str] = {}
    if report.config.plots:
        from stockpredict.report import plots  # matplotlib is imported only when plots are wanted

        pngs = plots.render_all(report)
        for plot in PLOTS:
            outputs.append((out_dir / plot.file, pngs[plot.name]))
            plot_files[plot.name] = plot.file
        from stockpredict.report.prediction import plot_prediction

        fitted = [(i, s.scaling.analysis) for i, s in enumerate(report.sections)
                  if s.scaling is not None and s.scaling.analysis is not None]
        for number, (index, analysis) in enumerate(fitted, start=1):
            scaling_plots[index] = scaling_plot_file(number)
            outputs.append((out_dir / scaling_plots[index], plot_prediction(analysis)))
    # scaling.md last: once it is there, every file it links to is too.
    outputs.append((out_dir / rundir.REPORT_MARKDOWN, render_markdown(report, plot_files, scaling_plots)))
    for path, data in outputs:
        try:
            write_atomic(path, data)
        except OSError as err:
            raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    return [outputs[-1][0]] + [path for path, _ in outputs[:-1]]


def make_report(config: ReportConfig) -> tuple[Report, list[Path]]:
    """Load the logs, warn about each skipped one, build the tables and write every output file."""
    loaded = load_runs(config.runs_dir)
    for skipped in loaded.skipped:
        log.warning("skipping %s: %s", skipped.path, skipped.reason)
    for note in loaded.notes:
        log.warning("%s", note)
    sacct_text = run_sacct(r.job_id for r in loaded.runs if r.kind != "allreduce" and r.job_id)
    report = build_report(loaded, config, sacct_text)
    return report, write_report(report, config.out_dir)
