"""Command line of the preprocessing stage: raw minute bars -> windowed sequences (HDF5).

    python -m preprocess --raw data/raw --out data/processed/sequences.h5
    python -m preprocess --raw data/raw --out seq.h5 --normalize per-ticker --workers 2 --force
    python -m preprocess --raw flatfiles/ --out seq.h5 --tz UTC --bar-label end   # vendor exports

Inputs (docs/data.md, "Input formats"): a directory of <TICKER>.csv / .csv.gz / .parquet files, files
holding many tickers in a ticker column (one file, or a directory of per-day files), or a mix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from preprocess.pipeline import build_dataset
from preprocess.preprocess_config import BAR_LABELS, PreprocessConfig
from stockpredict.common.errors import UserError, run_cli
from stockpredict.common.transform import REPRESENTATIONS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = PreprocessConfig()
    parser = argparse.ArgumentParser(
        prog="python -m preprocess", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Raw minute bars (a directory of <TICKER>.csv/.csv.gz/.parquet files, or files with a "
                    "ticker column) -> leak-free windowed sequences in HDF5 (layout: docs/data.md).")
    parser.add_argument("--raw", type=Path, required=True,
                        help="input directory, or one file holding many tickers")
    parser.add_argument("--out", type=Path, required=True, help="output .h5 file")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.add_argument("--workers", type=int, default=None, help="reader processes (default: all cores)")
    parser.add_argument("--split", choices=("chronological", "random"), default=defaults.split,
                        help="chronological by trading day; random reproduces the seed's leaky split")
    parser.add_argument("--train-frac", type=float, default=defaults.train_frac, help="train fraction")
    parser.add_argument("--val-frac", type=float, default=defaults.val_frac, help="validation fraction")
    parser.add_argument("--split-seed", type=int, default=defaults.split_seed, help="seed of --split random")
    parser.add_argument("--fill-gaps", type=int, default=defaults.fill_gaps, metavar="K",
                        help="forward-fill interior gaps of at most K missing minutes (0: never)")
    parser.add_argument("--tz", default=defaults.tz,
                        help="time zone of times without a UTC offset (e.g. UTC for naive UTC exports)")
    parser.add_argument("--bar-label", choices=BAR_LABELS, default=defaults.bar_label,
                        help="what a bar's time marks: the start of its minute (09:30 = first bar) or "
                             "the end (09:31 = first bar, 16:00 = last)")
    parser.add_argument("--features", default=",".join(defaults.features),
                        help="comma-separated features (close, volume, open, high, low); must include close")
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len, help="window length, minutes")
    parser.add_argument("--horizon", type=int, default=defaults.horizon, help="target horizon, minutes")
    parser.add_argument("--representation", choices=REPRESENTATIONS, default=defaults.representation,
                        help="returns: log returns relative to the window's last close, standardised on "
                             "train (the model learns the move); seed: the seed's min-max price level")
    parser.add_argument("--normalize", choices=("global", "per-ticker", "per_ticker"),
                        default=defaults.normalize,
                        help="min-max statistics fitted on train (seed representation only)")
    parser.add_argument("--chunk-windows", type=int, default=defaults.chunk_windows,
                        help="HDF5 chunk length along n")
    parser.add_argument("--compression", choices=("lzf", "gzip", "none"), default=defaults.compression,
                        help="HDF5 compression filter")
    parser.add_argument("--schema", type=int, choices=(2, 3), default=defaults.schema,
                        help="sequences file schema: 3 stores each minute once, 2 every window")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: only when stderr is a terminal)")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    """The resolved PreprocessConfig of parsed command-line arguments."""
    return PreprocessConfig(
        features=tuple(f.strip().lower() for f in args.features.split(",") if f.strip()),
        seq_len=args.seq_len, horizon=args.horizon, split=args.split, train_frac=args.train_frac,
        val_frac=args.val_frac, split_seed=args.split_seed, representation=args.representation,
        normalize=args.normalize.replace("-", "_"),
        fill_gaps=args.fill_gaps, tz=args.tz, chunk_windows=args.chunk_windows, compression=args.compression,
        schema=args.schema,
        bar_label=args.bar_label)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    config = config_from_args(args)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, not {args.workers}")
    summary = build_dataset(args.raw, args.out, config, workers=args.workers, force=args.force,
                            progress=args.progress)
    print("preprocess summary", file=sys.stdout)
    print(summary.table(), file=sys.stdout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (`stockpredict-preprocess`)."""
    return run_cli(_main, argv)
