"""Reading speed per input format: the read+clean phase of preprocessing on the synthetic S&P universe.

    .venv/bin/python benchmarks/bench_inputs.py --raw /tmp/full/raw            # 503 x 21, CSV as written
    .venv/bin/python benchmarks/bench_inputs.py --raw /tmp/full/raw --formats csv,parquet --repeats 3

For each format the universe is converted once (CSV -> .csv.gz, Parquet with a UTC datetime column,
per-day many-ticker flat files with nanosecond `window_start`), then `preprocess.inputs.load_universe`
reads it with --workers processes, as the pipeline does. Reported: wall seconds (mean +- sd of the
repeats after one warm-up read), CPU seconds (all processes; steadier than wall time on a busy machine),
candidate windows per wall second (326 per ticker-session read) and input MB.
The machine is shared: compare formats measured in one run.
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from preprocess import inputs  # noqa: E402
from preprocess.pipeline import _run_tasks  # noqa: E402
from preprocess.preprocess_config import PreprocessConfig  # noqa: E402
from preprocess.synthetic import write_universe  # noqa: E402

FORMATS = ("csv", "csv.gz", "parquet", "flat-parquet")


def convert(raw: Path, kind: str, root: Path) -> Path:
    """The universe in `kind`, written once under root (reused when present)."""
    if kind == "csv":
        return raw
    target = root / kind
    if target.is_dir() and any(target.iterdir()):
        return target
    target.mkdir(parents=True, exist_ok=True)
    paths = sorted(raw.glob("*.csv"))
    if kind == "flat-parquet":
        frames = [pd.read_csv(p).assign(ticker=p.stem) for p in paths]
        rows = pd.concat(frames, ignore_index=True)
        start = pd.to_datetime(rows.pop("timestamp"), utc=True)
        rows["window_start"] = start.astype("int64")
        for day, part in rows.groupby(start.dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d")):
            part.to_parquet(target / f"{day}.parquet", index=False)
        return target
    for path in paths:
        if kind == "csv.gz":
            with open(path, "rb") as src, gzip.open(target / f"{path.name}.gz", "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
        else:
            frame = pd.read_csv(path)
            frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
            frame.to_parquet(target / f"{path.stem}.parquet", index=False)
    return target


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the reader processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def read_once(raw: Path, workers: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, candidate windows) of one read of the universe."""
    config = PreprocessConfig()
    started, cpu = time.perf_counter(), cpu_seconds()
    series, skipped, _ = inputs.load_universe(raw, config, lambda tasks: _run_tasks(tasks, workers, False))
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    windows = sum(len(s.sessions) for s in series) * (390 - config.seq_len - config.horizon + 1)
    return seconds, cpu, windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, default=Path("/tmp/full/raw"), help="synthetic universe (CSV)")
    parser.add_argument("--tickers", type=int, default=503)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not (args.raw.is_dir() and len(list(args.raw.glob("*.csv"))) == args.tickers):
        shutil.rmtree(args.raw, ignore_errors=True)
        write_universe(args.raw, tickers=args.tickers, days=args.days, seed=0)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; {args.workers} workers")
    print("| format | input MB | read s (mean +- sd) | CPU s | candidate windows | windows/s |")
    print("|---|---|---|---|---|---|")
    for kind in args.formats.split(","):
        path = convert(args.raw, kind, args.raw.parent / "formats")
        size = sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 2**20
        read_once(path, args.workers)  # warm-up: page cache, imports
        runs = [read_once(path, args.workers) for _ in range(args.repeats)]
        seconds = [s for s, _, _ in runs]
        cpu = statistics.mean(c for _, c, _ in runs)
        windows = runs[0][2]
        sd = statistics.stdev(seconds) if len(seconds) > 1 else 0.0
        mean = statistics.mean(seconds)
        print(f"| {kind} | {size:,.0f} | {mean:.1f} +- {sd:.1f} | {cpu:.1f} | {windows:,} | "
              f"{windows / mean:,.0f} |")


if __name__ == "__main__":
    main()
