"""The command line: `python -m stockpredict.report` and the `stockpredict-report` entry point."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..cli import run_cli
from .config import ReportConfig
from .output import make_report


def _parse_args(argv: Sequence[str] | None) -> ReportConfig:
    defaults = ReportConfig()
    parser = argparse.ArgumentParser(
        prog="stockpredict-report",
        description="Scaling tables (Markdown + CSV) and plots from results/runs/*/timing.jsonl.")
    parser.add_argument("--runs", type=Path, default=defaults.runs_dir,
                        help=f"directory of run directories (default {defaults.runs_dir})")
    parser.add_argument("--out", type=Path, default=defaults.out_dir,
                        help=f"where scaling.md, the CSVs and PNGs go (default {defaults.out_dir})")
    parser.add_argument("--warmup-epochs", type=int, default=defaults.warmup_epochs,
                        help="epochs excluded from timing after every run_start (default %(default)s)")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="write tables only")
    parser.add_argument("--dataset", metavar="NAME_OR_PREFIX", default=defaults.dataset,
                        help="report one dataset only: its name, a prefix of its fingerprint, or (logs "
                             "without a fingerprint) its recorded path (default: every dataset)")
    args = parser.parse_args(argv)
    return ReportConfig(runs_dir=args.runs, out_dir=args.out, warmup_epochs=args.warmup_epochs,
                        plots=args.plots, dataset=args.dataset)


def _main(argv: Sequence[str] | None) -> int:
    config = _parse_args(argv)
    report, written = make_report(config)
    print(f"report: {len(report.runs)} run(s) used in {len(report.sections)} section(s) (one per dataset, "
          f"model and engine), {len(report.skipped)} skipped; wrote {len(written)} files to "
          f"{config.out_dir}:")
    for path in written:
        print(f"  {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `stockpredict-report`; returns the exit status."""
    return run_cli(_main, argv)
