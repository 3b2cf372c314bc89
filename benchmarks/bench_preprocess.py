"""Preprocessing benchmark: full S&P scale end to end, the windowing step vs the seed's, HDF5 codecs.

    .venv/bin/python benchmarks/bench_preprocess.py                 # all three parts (about 3 minutes)
    .venv/bin/python benchmarks/bench_preprocess.py --parts full     # one part

1. full: `python -m preprocess` on a synthetic 503-ticker x 21-day universe, under /usr/bin/time -v
   (wall seconds and peak RSS of the largest process; goals: <= 60 s on 2 cores, <= 2 GB).
2. windowing: the seed's approach (per ticker-day, a DataFrame column selection and one np.concatenate per
   window) vs preprocess.windows (sliding_window_view + one boolean selection) on the same tickers, in
   the same run; checks that both produce the same windows (goal: >= 100x).
4. scale (`--parts scale --days-list 21,63,252`): schema 2 against schema 3 on the same universe for each
   number of days: wall and CPU seconds, peak RSS, file size and bytes per window (how each grows).
3. codecs: file size, write time and read speed (sequential, random batches, random contiguous blocks)
   of /train/x for each compression filter and chunk length.
Prints Markdown tables; numbers go in docs/data.md with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from preprocess import bars, windows  # noqa: E402
from preprocess.preprocess_config import PreprocessConfig  # noqa: E402
from preprocess.synthetic import write_universe  # noqa: E402


def machine() -> str:
    return (f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.1f} at start")


def ensure_universe(raw: Path, tickers: int, days: int) -> None:
    if raw.is_dir() and len(list(raw.glob("*.csv"))) == tickers:
        return
    started = time.perf_counter()
    shutil.rmtree(raw, ignore_errors=True)
    write_universe(raw, tickers=tickers, days=days, seed=0)
    print(f"generated {tickers} tickers x {days} days in {time.perf_counter() - started:.1f} s -> {raw}")


def bench_full(raw: Path, out: Path, workers: int) -> None:
    time_bin = shutil.which("time") or "/usr/bin/time"
    if not Path(time_bin).exists():
        sys.exit("bench: /usr/bin/time is missing (Debian package `time`: apt-get install time)")
    command = [sys.executable, "-m", "preprocess", "--raw", str(raw), "--out", str(out), "--workers",
               str(workers), "--force"]
    proc = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
        sys.exit(f"bench: preprocess failed:\n{proc.stderr}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.split(":"))))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr).group(1))
              for kind in ("User", "System"))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    with h5py.File(out, "r") as h5:
        written = sum(h5[s]["y"].shape[0] for s in ("train", "val", "test"))
        dropped = sum(__import__("json").loads(h5.attrs["dropped_counts"]).values())
    print("\n## Full scale, end to end\n")
    print(f"command: `/usr/bin/time -v {' '.join(command[:1] + ['-m'] + command[2:])}`\n")
    print("| tickers x days | candidate windows | windows written | wall s | CPU s (user+sys) | windows/s | "
          "peak RSS MB | file MB |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {len(list(raw.glob('*.csv')))} x 21 | {written + dropped:,} | {written:,} | {seconds:.1f} | "
          f"{cpu:.1f} | {written / seconds:,.0f} | {rss_kb / 1024:.0f} | {out.stat().st_size / 2**20:.0f} |")
    print("\nsummary printed by the run:\n```\n" + proc.stdout.strip() + "\n```")


def timed_preprocess(raw: Path, out: Path, workers: int, schema: int) -> dict:
    """One `python -m preprocess --schema S` under /usr/bin/time -v: wall and CPU seconds, peak RSS of the
    largest process, windows written, file bytes."""
    command = [sys.executable, "-m", "preprocess", "--raw", str(raw), "--out", str(out), "--workers",
               str(workers), "--schema", str(schema), "--force"]
    proc = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
        sys.exit(f"bench: preprocess failed:\n{proc.stderr}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    with h5py.File(out, "r") as h5:
        written = sum(h5[s]["y"].shape[0] for s in ("train", "val", "test"))
    phases = re.search(r"seconds\s+[\d.]+ \((.*)\)", proc.stdout)
    return {"wall": sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.split(":")))),
            "cpu": sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr).group(1))
                       for kind in ("User", "System")),
            "rss_mb": int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
            / 1024, "windows": written, "bytes": out.stat().st_size,
            "phases": phases.group(1) if phases else "", "command": " ".join(command)}


def bench_scale(raw_root: Path, out_dir: Path, tickers: int, days_list: list[int], workers: int) -> None:
    """Schema 2 against schema 3, one after the other on the same input, for each number of days."""
    print("\n## Preprocessing at scale: schema 2 against schema 3\n")
    print("| tickers x days | schema | windows written | wall s | CPU s | peak RSS MB | file MB | "
          "bytes/window | phases (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    out_dir.mkdir(parents=True, exist_ok=True)
    for days in days_list:
        raw = raw_root / f"raw-{tickers}x{days}"
        ensure_universe(raw, tickers, days)
        for schema in (2, 3):
            out = out_dir / f"scale-{days}-schema{schema}.h5"
            r = timed_preprocess(raw, out, workers, schema)
            print(f"| {tickers} x {days} | {schema} | {r['windows']:,} | {r['wall']:.1f} | {r['cpu']:.1f} | "
                  f"{r['rss_mb']:,.0f} | {r['bytes'] / 1e6:,.0f} | {r['bytes'] / r['windows']:.1f} | "
                  f"{r['phases']} |", flush=True)
            if schema == 2:
                out.unlink()  # the large one: only its numbers are needed
    print(f"\ncommand per row: `/usr/bin/time -v python -m preprocess --raw <raw> --out <file> --workers "
          f"{workers} --schema <2|3> --force`")


def load_grids(raw: Path, n_tickers: int, config: PreprocessConfig) -> list[bars.TickerSeries]:
    paths = sorted(raw.glob("*.csv"))[:n_tickers]
    return [bars.clean_bars(bars.read_ticker_csv(p, config), p.stem, p.name, config) for p in paths]


def seed_windowing(series: list[bars.TickerSeries], seq_len: int, horizon: int):
    """The seed's approach, per ticker-day: select the columns of a DataFrame and grow the arrays with one
    np.concatenate per window; drop a window with a missing, NaN or invalid value."""
    xs, ys = [], []
    for s in series:
        for day in range(len(s.sessions)):
            frame = pd.DataFrame(s.values[day], columns=["Close", "Volume"])
            frame.loc[~s.present[day]] = np.nan
            x_day, y_day = np.empty((0, seq_len, 2)), np.empty(0)
            for start in range(390 - seq_len - horizon + 1):
                # one column selection per window, covering the inputs and the target minute
                rows = frame[["Close", "Volume"]].values[start:start + seq_len + horizon]
                checked = rows[[*range(seq_len), -1]]
                window, target_bar = checked[:seq_len], checked[-1]  # the drop rule of preprocess.windows:
                if np.isnan(checked).any() or (checked[:, 0] <= 0).any() or (checked[:, 1] < 0).any():
                    continue
                x_day = np.concatenate([x_day, window[None]])
                y_day = np.concatenate([y_day, [target_bar[0]]])
            xs.append(x_day)
            ys.append(y_day)
    return np.concatenate(xs), np.concatenate(ys)


def vectorised_windowing(series: list[bars.TickerSeries], seq_len: int, horizon: int):
    """This project's windowing step (as in preprocess.pipeline): status per window, one selection."""
    xs, ys = [], []
    for s in series:
        usable = windows.window_status(windows.minute_codes(s.values, s.present, ("close", "volume")),
                                       seq_len, horizon) == windows.OK
        xs.append(windows.window_inputs(s.values, seq_len, horizon)[usable])
        ys.append(windows.window_targets(s.values[:, :, 0], seq_len, horizon)[usable])
    return np.concatenate(xs), np.concatenate(ys)


def bench_windowing(raw: Path, n_tickers: int, repeats: int) -> None:
    config = PreprocessConfig()
    series = load_grids(raw, n_tickers, config)
    started = time.perf_counter()
    seed_x, seed_y = seed_windowing(series, config.seq_len, config.horizon)
    seed_s = time.perf_counter() - started
    vectorised_windowing(series, config.seq_len, config.horizon)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        ours_x, ours_y = vectorised_windowing(series, config.seq_len, config.horizon)
        times.append(time.perf_counter() - started)
    identical = np.array_equal(seed_x, ours_x) and np.array_equal(seed_y, ours_y)
    n = len(ours_x)
    mean, spread = statistics.mean(times), statistics.stdev(times) if len(times) > 1 else 0.0
    print("\n## Windowing step: the seed's approach vs sliding_window_view (same input, same run)\n")
    print(f"input: the first {n_tickers} tickers x {len(series[0].sessions)} days of the universe "
          f"({n:,} windows kept); identical windows and targets: {identical}\n")
    print("| approach | seconds | windows/s |")
    print("|---|---|---|")
    print(f"| seed: DataFrame column selection + np.concatenate per window | {seed_s:.2f} "
          f"| {n / seed_s:,.0f} |")
    print(f"| preprocess.windows (mean +- sd of {repeats} after a warm-up) | {mean:.4f} +- {spread:.4f} | "
          f"{n / mean:,.0f} |")
    print(f"\nspeed-up: {seed_s / mean:,.0f}x")
    if not identical:
        sys.exit("bench: the two approaches produced different windows")


def _timed(function, repeats: int = 3) -> float:
    """Mean seconds of `repeats` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.mean(times)


def bench_codecs(source: Path, n_windows: int, batch: int, batches: int) -> None:
    from stockpredict.common.reader import SplitWindows

    with h5py.File(source, "r") as h5:
        n_windows = min(n_windows, h5["train/y"].shape[0])
    x = SplitWindows(source, "train", 0, n_windows, extras=False).x(slice(None))
    block = 2048  # stockpredict.data.BLOCK_WINDOWS: the trainer reads chunk-aligned blocks of this size
    print("\n## HDF5 codecs for /train/x\n")
    print(f"data: the first {len(x):,} train windows of the full-scale file ({x.nbytes / 2**20:.0f} MB raw "
          f"float32). Read columns, mean of 3 after a warm-up: the whole dataset; the trainer's pattern "
          f"(all {block}-window chunk-aligned blocks in random order); {batches} batches of {batch} "
          f"random indices (fancy indexing, sorted)\n")
    print("| codec | chunk (windows) | MB on disk | ratio | write MB/s | full read MB/s | "
          "aligned blocks, windows/s | random indices, windows/s |")
    print("|---|---|---|---|---|---|---|---|")
    codecs = [("none", {}), ("lzf", {"compression": "lzf"}),
              ("lzf+shuffle", {"compression": "lzf", "shuffle": True}),
              ("gzip-1", {"compression": "gzip", "compression_opts": 1}),
              ("gzip-4", {"compression": "gzip", "compression_opts": 4}),
              ("gzip-1+shuffle", {"compression": "gzip", "compression_opts": 1, "shuffle": True})]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=source.parent) as tmp:
        for name, options in codecs:
            for chunk in (256, 2048):
                path = Path(tmp) / f"{name}-{chunk}.h5"

                def write(path=path, chunk=chunk, options=options):
                    with h5py.File(path, "w") as h5:
                        h5.create_dataset("x", data=x, chunks=(chunk,) + x.shape[1:], **options)

                write_s = _timed(write, repeats=1)
                size = path.stat().st_size
                with h5py.File(path, "r") as h5:
                    dset = h5["x"]
                    full_s = _timed(lambda dset=dset: dset[:])
                    starts = rng.permutation(np.arange(0, len(x), block))
                    blocks_s = _timed(lambda dset=dset, starts=starts: [dset[a:a + block] for a in starts])
                    picks = [np.sort(rng.choice(len(x), batch, replace=False)) for _ in range(batches)]
                    random_s = _timed(lambda dset=dset, picks=picks: [dset[p] for p in picks], repeats=1)
                mb = x.nbytes / 2**20
                print(f"| {name} | {chunk} | {size / 2**20:.1f} | {x.nbytes / size:.1f} "
                      f"| {mb / write_s:,.0f} | "
                      f"{mb / full_s:,.0f} | {len(x) / blocks_s:,.0f} | {batches * batch / random_s:,.0f} |")
                path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="full,windowing,codecs", help="comma-separated parts to run")
    parser.add_argument("--raw", type=Path, default=REPO / "data" / "bench" / "raw",
                        help="synthetic universe (generated here when absent)")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "bench" / "sequences.h5")
    parser.add_argument("--tickers", type=int, default=503)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed-tickers", type=int, default=8, help="tickers in the windowing comparison")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the vectorised windowing")
    parser.add_argument("--codec-windows", type=int, default=200_000)
    parser.add_argument("--days-list", default="21,63,252", help="days of the scale part")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    print(f"# bench_preprocess\n\nmachine: {machine()}\n")
    print("load average before each part is printed; the machine is shared, so compare ratios within a run\n")
    if "scale" in parts:
        bench_scale(args.raw.parent, args.out.parent, args.tickers,
                    [int(d) for d in args.days_list.split(",")], args.workers)
    if not parts & {"full", "windowing", "codecs"}:
        return
    ensure_universe(args.raw, args.tickers, args.days)
    if "full" in parts:
        print(f"load average: {os.getloadavg()[0]:.1f}")
        bench_full(args.raw, args.out, args.workers)
    if "windowing" in parts:
        bench_windowing(args.raw, args.seed_tickers, args.repeats)
    if "codecs" in parts:
        if not args.out.exists():
            bench_full(args.raw, args.out, args.workers)
        bench_codecs(args.out, args.codec_windows, batch=256, batches=40)


if __name__ == "__main__":
    main()
