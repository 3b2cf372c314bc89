"""The command line: `python -m stockpredict.report` and the `stockpredict-report` entry point."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from stockpredict.common.errors import UserError, run_cli
from stockpredict.report.output import make_report
from stockpredict.report.report_config import PRICE_UNITS, ReportConfig
from stockpredict.report.scaling_model import NETWORKS


def _price(args: argparse.Namespace) -> tuple[float | None, str, int]:
    """(price per hour, unit, ranks per node) from the flags, or from the --profile's price keys."""
    unit = args.price_unit or None
    if unit is not None and unit not in PRICE_UNITS:
        raise UserError(f"--price-unit must be one of {', '.join(PRICE_UNITS)}, got {unit!r}")
    ranks_per_node = _number(args.ranks_per_node, "--ranks-per-node", int)
    price = _number(args.price_per_hour, "--price-per-hour")
    if args.profile:
        from stockpredict.control.jobscript import (
            profile_prices,  # jinja2 is imported only when a profile is named
        )

        found = profile_prices(args.profile)
        if ranks_per_node is None:
            ranks_per_node = found["ranks_per_node"]
        if price is None:
            by_unit = {u: found.get(f"price_per_{u}_hour") for u in PRICE_UNITS}
            if unit is None:  # the unit the profile prices; per GPU-hour when it has both
                unit = next((u for u in PRICE_UNITS if by_unit[u] is not None), None)
            price = by_unit.get(unit) if unit else None
            if price is None:
                raise UserError(f"profile {args.profile!r} has no price_per_{unit or 'gpu'}_hour; add it "
                                f"to the profile or pass --price-per-hour")
    return price, unit or "gpu", 1 if ranks_per_node is None else ranks_per_node


def _number(text: str | None, flag: str, kind: type = float) -> float | int | None:
    """A flag's value as `kind`; None when not given or empty (`make report PRICE=`). A bad value is a
    one-line error (argparse's own would add a usage line)."""
    if text is None or text.strip() == "":
        return None
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"{flag} wants {'an integer' if kind is int else 'a number'}, got {text!r}") from None


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
    model = parser.add_argument_group("scaling model (docs/scaling.md)")
    model.add_argument("--network", metavar="PRESET", default=defaults.network,
                       help=f"predict the same measurements on this network: {', '.join(NETWORKS)} (default: "
                            f"the network fitted to the runs)")
    model.add_argument("--price-per-hour", metavar="X",
                       help="adds cost columns: price per GPU-hour or node-hour (--price-unit)")
    model.add_argument("--price-unit", metavar="|".join(PRICE_UNITS),
                       help="what --price-per-hour is per (default gpu, or what the profile prices)")
    model.add_argument("--ranks-per-node", metavar="N",
                       help="ranks billed as one node with --price-unit node (default: the profile's GPUs "
                            "per node, else 1)")
    model.add_argument("--target-epochs", default=str(defaults.target_epochs), metavar="N",
                       help="epochs of a planned study, for hours and cost to target (default %(default)s)")
    model.add_argument("--profile", metavar="NAME",
                       help="read price_per_gpu_hour / price_per_node_hour from slurm/profiles/NAME.toml "
                            "(or a path); --price-per-hour overrides it")
    args = parser.parse_args(argv)
    price, unit, ranks_per_node = _price(args)
    target_epochs = _number(args.target_epochs, "--target-epochs", int)
    return ReportConfig(runs_dir=args.runs, out_dir=args.out, warmup_epochs=args.warmup_epochs,
                        plots=args.plots, dataset=args.dataset, network=args.network, price_per_hour=price,
                        price_unit=unit, ranks_per_node=ranks_per_node,
                        target_epochs=defaults.target_epochs if target_epochs is None else target_epochs,
                        profile=args.profile)


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
