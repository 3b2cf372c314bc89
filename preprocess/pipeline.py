"""The preprocessing stage as one function: `build_dataset(raw, out, config)` -> sequences HDF5 + summary.

Steps: read and clean every ticker (in parallel, one task per file); assign trading days (or windows,
for the random split) to train/val/test; fit the representation (stockpredict/common/transform.py) on the
train windows only; write every window in (ticker, time) order into a temporary file, then rename it to
`out`. On the synthetic universe the best achievable skill (optimum.json beside the CSVs) is recomputed
for this horizon, window length and test split and stored as the attribute `optimum`.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import h5py
import numpy as np
import pandas as pd

from preprocess import bars, inputs, optimum, store, windows
from preprocess.preprocess_config import TARGET_FEATURE, PreprocessConfig
from stockpredict.common import transform as transforms
from stockpredict.common.errors import UserError
from stockpredict.common.logs import get_logger

log = get_logger("stockpredict.preprocess")

RANDOM_SPLIT_WARNING = ("--split random picks val/test windows at random among overlapping windows of the "
                        "same sessions, so they share minutes with training windows: this reproduces the "
                        "seed's leak and makes test scores optimistic")
ALL_DROP_REASONS = tuple(windows.DROP_REASONS[c] for c in sorted(windows.DROP_REASONS, reverse=True)) + (
    "no_train_windows",)


@dataclass
class Summary:
    """What a run did; printed as a table and stored (in part) as file attributes."""

    out: Path
    tickers: int
    skipped_tickers: dict[str, str]
    sessions: int
    trading_days: dict[str, int]
    window_counts: dict[str, int]
    dropped_counts: dict[str, int]
    row_counts: dict[str, int]
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)  # read, split_normalise, write
    warnings: list[str] = field(default_factory=list)
    input_rows: list[tuple[str, str]] = field(default_factory=list)  # how the input was read
    representation: str = ""
    optimum: dict | None = None  # the best achievable skill (synthetic data only)
    file_bytes: int = 0          # size of the written file
    schema: int = 0              # its schema_version

    def table(self) -> str:
        """A plain-text summary table (tickers, sessions, windows per split, drops, seconds, windows/s)."""
        total = sum(self.window_counts.values())
        rows = [("output", str(self.out)),
                ("tickers", f"{self.tickers} used, {len(self.skipped_tickers)} skipped"),
                ("sessions (ticker-days)", f"{self.sessions}"),
                ("trading days", ", ".join(f"{k} {v}" for k, v in self.trading_days.items()))]
        rows += self.input_rows
        rows += [(f"windows {split}", f"{n:,}") for split, n in self.window_counts.items()]
        rows += [(f"dropped {reason}", f"{n:,}") for reason, n in self.dropped_counts.items() if n]
        rows += [(f"rows {name.replace('_', ' ')}", f"{n:,}") for name, n in self.row_counts.items() if n]
        rows += [("representation", self.representation)]
        rows += [("best skill (optimum)", "unknown (not the synthetic universe)" if self.optimum is None else
                  f"{self.optimum['kalman_skill']:.3f} Kalman, {self.optimum['window_skill']:.3f} "
                  f"window least squares")]
        if self.file_bytes:
            rows += [("file", f"schema {self.schema}, {self.file_bytes / 1e6:,.1f} MB, "
                              f"{self.file_bytes / max(total, 1):.1f} bytes per window")]
        rows += [("seconds", f"{self.seconds:.2f} (" + ", ".join(f"{k} {v:.2f}" for k, v in
                                                            self.phase_seconds.items()) + ")"),
                 ("windows/s", f"{total / self.seconds:,.0f}" if self.seconds > 0 else "-")]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


@dataclass
class _Ticker:
    """A loaded ticker plus its per-window status, split label and normalisation statistics."""

    series: bars.TickerSeries
    status: np.ndarray = None       # int8 (n_sessions, n_windows): 0 usable, else a drop-reason code
    labels: np.ndarray = None       # int8 (n_sessions, n_windows): split index, -1 = not written
    norm_min: np.ndarray = None     # float64 (n_features,) over this ticker's train windows
    norm_max: np.ndarray = None


def build_dataset(raw: Path, out: Path, config: PreprocessConfig = PreprocessConfig(), *,
                  workers: int | None = None, force: bool = False, progress: bool | None = None) -> Summary:
    """Preprocess `raw` (a directory of <TICKER>.csv, or one CSV with a ticker column) into `out` (HDF5).

    `workers` processes read tickers in parallel (default: all cores); the output does not depend on it.
    Raises UserError for problems that make the whole run meaningless; `out` is then never created.
    """
    started = time.perf_counter()
    raw, out = Path(raw), Path(out)
    store.check_output_path(out, force)
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise UserError(f"--workers must be >= 1, not {workers}")
    show_progress = sys.stderr.isatty() if progress is None else progress

    loaded, skipped, hashes = load_universe(raw, config, workers, show_progress)
    read_done = time.perf_counter()
    if not loaded:
        raise UserError(f"no usable ticker in {raw} ({len(skipped)} skipped; see the warnings above)")
    input_report = inputs.check_inputs(loaded, config)
    for warning in input_report.warnings:
        log.warning(warning)
    if config.split == "random":
        log.warning(RANDOM_SPLIT_WARNING)

    tickers = [_Ticker(series) for series in loaded]
    trading_days = assign_splits(tickers, config)
    dropped = fit_normalisation(tickers, config)
    counts = {split: int(sum((t.labels == i).sum() for t in tickers)) for i, split in enumerate(store.SPLITS)}
    if counts["train"] == 0:
        raise UserError("no usable training window (every train window was dropped; see the drop counts)")
    norm_min, norm_max = normalisation_arrays(tickers, config)
    transform = fit_transform(tickers, config, norm_min, norm_max)
    best = synthetic_optimum(raw, hashes, tickers, config)

    row_counts: dict[str, int] = {}
    for t in tickers:
        for name, n in t.series.row_counts.items():
            row_counts[name] = row_counts.get(name, 0) + n
    summary = Summary(out=out, tickers=len(tickers), skipped_tickers=skipped,
                      sessions=int(sum(len(t.series.sessions) for t in tickers)),
                      trading_days=trading_days, window_counts=counts, dropped_counts=dropped,
                      row_counts=row_counts, warnings=input_report.warnings,
                      input_rows=input_report.rows, representation=config.representation, optimum=best)
    attrs = {
        "schema_version": config.schema,
        "config": config.to_json(),
        "features": np.array(config.features, dtype=h5py.string_dtype("utf-8")),
        "target_feature": TARGET_FEATURE,
        "normalization": config.normalize,
        "norm_min": norm_min,
        "norm_max": norm_max,
        "seq_len": config.seq_len,
        "horizon": config.horizon,
        "input_sha256": json.dumps(hashes, sort_keys=True),
        "window_counts": json.dumps(counts),
        "dropped_counts": json.dumps(dropped),
        "skipped_tickers": json.dumps(skipped, sort_keys=True),
        "row_counts": json.dumps(row_counts, sort_keys=True),
        "trading_days": json.dumps(trading_days),
        "input_format": json.dumps(input_report.understood, sort_keys=True),
        "warnings": json.dumps(input_report.warnings),
        "representation": config.representation,
        "transform": transforms.to_json(transform),
        "optimum": "unknown" if best is None else json.dumps(best, sort_keys=True),
    }
    split_done = time.perf_counter()
    with store.atomic_output(out, force) as output:
        write_sequences(output.path, tickers, counts, config, attrs, transform, show_progress,
                        check=output.check)
    finished = time.perf_counter()
    summary.file_bytes, summary.schema = out.stat().st_size, config.schema
    summary.seconds = finished - started
    summary.phase_seconds = {"read": read_done - started, "split+normalise": split_done - read_done,
                             "write": finished - split_done}
    return summary


def load_universe(raw: Path, config: PreprocessConfig, workers: int, progress: bool = False
                  ) -> tuple[list[bars.TickerSeries], dict[str, str], dict[str, str]]:
    """Read and clean every ticker (preprocess.inputs). Returns (series sorted by ticker,
    {file: skip reason}, {file: sha256})."""
    return inputs.load_universe(raw, config, lambda tasks: _run_tasks(tasks, workers, progress))


def assign_splits(tickers: list[_Ticker], config: PreprocessConfig) -> dict[str, int]:
    """Compute each window's status and split label; returns trading days per split (chronological)."""
    all_days = np.unique(np.concatenate([t.series.sessions for t in tickers]))
    n_days = len(all_days)
    n_train = max(1, int(round(config.train_frac * n_days)))
    n_train_val = max(n_train, min(n_days, int(round((config.train_frac + config.val_frac) * n_days))))
    day_split = np.full(n_days, 2, dtype=np.int8)
    day_split[:n_train_val] = 1
    day_split[:n_train] = 0
    rng = np.random.default_rng(config.split_seed)
    for t in tickers:
        s = t.series
        t.status = windows.window_status(windows.minute_codes(s.values, s.present, config.features),
                                         config.seq_len, config.horizon)
        usable = t.status == windows.OK
        t.labels = np.full(t.status.shape, -1, dtype=np.int8)
        if config.split == "chronological":
            session_split = day_split[np.searchsorted(all_days, s.sessions)]
            t.labels[usable] = np.broadcast_to(session_split[:, None], usable.shape)[usable]
        else:
            # One generator walked in (ticker, session, minute) order: the same draw whatever the workers.
            u = rng.random(int(usable.sum()))
            t.labels[usable] = (u >= config.train_frac).astype(np.int8) + (
                u >= config.train_frac + config.val_frac)
    if config.split == "random":
        return {"all": n_days}
    return {"train": n_train, "val": n_train_val - n_train, "test": n_days - n_train_val}


def fit_normalisation(tickers: list[_Ticker], config: PreprocessConfig) -> dict[str, int]:
    """Min/max of every feature over each ticker's train windows (inputs, plus targets for close).

    Returns dropped-window counts by reason. With the seed representation and per-ticker normalisation
    a ticker without any train window cannot be scaled: its val/test windows are dropped as
    `no_train_windows` (the returns representation gives such a ticker the pooled volume statistics).
    """
    dropped = dict.fromkeys(ALL_DROP_REASONS, 0)
    close = config.close_index
    for t in tickers:
        for code, reason in windows.DROP_REASONS.items():
            dropped[reason] += int((t.status == code).sum())
        train = t.labels == 0
        if not train.any():
            if config.normalize == "per_ticker" and config.representation == "seed":
                dropped["no_train_windows"] += int((t.labels >= 0).sum())
                t.labels[:] = -1
            continue
        inputs, targets = windows.coverage(train, config.seq_len, config.horizon)
        covered = t.series.values[inputs]
        t.norm_min, t.norm_max = covered.min(axis=0), covered.max(axis=0)
        target_close = t.series.values[targets, close]
        t.norm_min[close] = min(t.norm_min[close], target_close.min())
        t.norm_max[close] = max(t.norm_max[close], target_close.max())
    return dropped


def normalisation_arrays(tickers: list[_Ticker], config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """norm_min, norm_max as stored: (n_features,) for global, (n_tickers, n_features) for per_ticker."""
    n_features = len(config.features)
    if config.normalize == "per_ticker":
        # A ticker without train windows has no windows written; NaN marks its unused statistics.
        unused = np.full(n_features, np.nan)  # np.array copies it into each row
        lo = np.array([t.norm_min if t.norm_min is not None else unused for t in tickers])
        hi = np.array([t.norm_max if t.norm_max is not None else unused for t in tickers])
        return lo, hi
    fitted = [t for t in tickers if t.norm_min is not None]
    return (np.min([t.norm_min for t in fitted], axis=0), np.max([t.norm_max for t in fitted], axis=0))


def fit_transform(tickers: list[_Ticker], config: PreprocessConfig, norm_min: np.ndarray,
                  norm_max: np.ndarray) -> transforms.Transform:
    """The configured representation, fitted on train windows only (see stockpredict/common/transform.py)."""
    if config.representation == "seed":
        return transforms.SeedTransform(config.features, norm_min, norm_max)
    close, L, h = config.close_index, config.seq_len, config.horizon
    n = windows.windows_per_session(L, h)
    returns, volumes = [], []
    volume = config.features.index("volume") if "volume" in config.features else None
    for t in tickers:
        train = t.labels == 0
        grid = t.series.values[:, :, close]
        with np.errstate(invalid="ignore", divide="ignore"):  # dropped windows may hold NaN or 0
            log_return = np.log(grid[:, L - 1 + h: L - 1 + h + n] / grid[:, L - 1: L - 1 + n])
        returns.append(log_return[train])
        if volume is None or not train.any():
            volumes.append(None)
            continue
        inputs, _ = windows.coverage(train, L, h)
        volumes.append(np.log1p(t.series.values[inputs][:, volume]))
    return transforms.fit_returns(config.features, np.concatenate(returns), volumes)


def synthetic_optimum(raw: Path, hashes: dict[str, str], tickers: list[_Ticker],
                      config: PreprocessConfig) -> dict | None:
    """The best achievable test skill when `raw` is an untouched synthetic universe, else None (unknown).

    Recomputed from optimum.json's per-file parameters for this horizon and seq_len, pooled over the
    tickers used, each weighted by the sum of its test windows' squared last close (their share of the
    price-unit MSE); a file whose sha256 differs from the generator's record makes it unknown.
    """
    from preprocess.synthetic import OPTIMUM_FILE

    path = raw / OPTIMUM_FILE if raw.is_dir() else None
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        files = record["files"]
        names = [f"{t.series.ticker}.csv" for t in tickers]
        if any(name not in files or files[name]["sha256"] != hashes.get(name) for name in names):
            log.warning("%s does not describe these CSV files (changed or foreign); optimum unknown", path)
            return None
        processes = [optimum.TickerProcess(**{k: files[name][k] for k in
                                              ("phi", "deviation_vol", "fair_vol", "overnight_vol")})
                     for name in names]
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("cannot read %s (%s); optimum unknown", path, err)
        return None
    close, L, h = config.close_index, config.seq_len, config.horizon
    n = windows.windows_per_session(L, h)
    weights = np.array([float(np.sum(t.series.values[:, L - 1: L - 1 + n, close][t.labels == 2] ** 2))
                        for t in tickers])
    split = "test"
    if not weights.sum() > 0:  # no test windows: weigh by the generator's mean squared price
        weights, split = np.array([files[name]["mean_square_price"] for name in names]), "all minutes"
    best = optimum.optimum(processes, weights, h, L)
    best["weights"] = f"squared last close summed over the {split} windows of each ticker"
    best["source"] = OPTIMUM_FILE
    return best


def session_open_epochs(sessions: np.ndarray) -> np.ndarray:
    """UTC epoch seconds of 09:30 exchange time on each session date (datetime64[D])."""
    open_offset = pd.Timedelta(minutes=bars.SESSION_OPEN_MINUTE)
    local = pd.DatetimeIndex(sessions.astype("datetime64[ns]")) + open_offset
    return local.tz_localize(bars.EXCHANGE_TZ).tz_convert("UTC").asi8 // 1_000_000_000


def ticker_windows(t: _Ticker, index: int, split: int, config: PreprocessConfig,
                   transform: transforms.Transform):
    """One ticker's windows of one split in the representation: (x, y, window_end, last_close), in time
    order; last_close is the close at minute e in price units (float64)."""
    mask = t.labels == split
    s = t.series
    x = windows.window_inputs(s.values, config.seq_len, config.horizon)[mask]
    close = config.close_index
    y = windows.window_targets(s.values[:, :, close], config.seq_len, config.horizon)[mask]
    last_close = x[:, -1, close].astype(np.float64)
    ends = session_open_epochs(s.sessions)[:, None] + 60 * windows.window_end_minutes(config.seq_len,
                                                                                       config.horizon)
    return (transform.inputs_forward(x, index), transform.target_forward(y, last_close, index),
            ends[mask].astype(np.int64), last_close)


def ticker_segments(t: _Ticker, index: int, split: int, config: PreprocessConfig,
                    transform: transforms.Transform):
    """One ticker's windows of one split for schema 3: (series, segment_start, start, y, window_end,
    last_close). series holds, for every session with a window in the split, its minutes from the first
    window's first minute to the last window's last input minute, in the stored form
    (transform.series_forward); segment_start and start are rows of series. Windows in time order, the
    same windows, targets and last closes as ticker_windows gives schema 2."""
    mask = t.labels == split
    sessions = np.flatnonzero(mask.any(axis=1))
    L, h, close = config.seq_len, config.horizon, config.close_index
    n_features = len(config.features)
    if sessions.size == 0:
        empty = np.zeros(0, np.int64)
        return (np.zeros((0, n_features), np.float32), empty, empty, np.zeros(0, np.float32), empty,
                np.zeros(0, np.float64))
    chosen = mask[sessions]
    first = chosen.argmax(axis=1)                                   # window index = start minute
    last = chosen.shape[1] - 1 - chosen[:, ::-1].argmax(axis=1)
    lengths = last - first + L
    segment_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    rows = np.arange(int(lengths.sum())) - np.repeat(segment_start - first, lengths)   # session minute
    values = t.series.values[np.repeat(sessions, lengths), rows]
    series = transform.series_forward(values, index, segment_start)
    which, w = np.nonzero(chosen)
    start = segment_start[which] + (w - first[which])
    s = t.series
    n = windows.windows_per_session(L, h)
    last_close = s.values[:, L - 1: L - 1 + n, close][mask].astype(np.float64)
    y = windows.window_targets(s.values[:, :, close], L, h)[mask]
    ends = session_open_epochs(s.sessions)[:, None] + 60 * windows.window_end_minutes(L, h)
    return (series, segment_start, start.astype(np.int64), transform.target_forward(y, last_close, index),
            ends[mask].astype(np.int64), last_close)


def write_sequences(path: Path, tickers: list[_Ticker], counts: dict[str, int], config: PreprocessConfig,
                    attrs: dict, transform: transforms.Transform, progress: bool = False,
                    check: Callable[[], None] = lambda: None) -> None:
    """Write every split's windows, in (ticker, time) order, and the root attributes to `path`.

    `check` runs after every ticker; it raises to abort (see store.AtomicOutput).
    """
    # No chunk cache (rdcc_nbytes=0): SplitWriter writes whole chunks once, and a write that fails (a full
    # disk) then raises here; a cached chunk would fail only when h5py flushes it while closing, where the
    # error is swallowed and the process crashed (measured: SIGSEGV on a full tmpfs).
    with h5py.File(path, "w", rdcc_nbytes=0) as h5:
        if config.schema == 3:
            _write_schema_3(h5, tickers, config, attrs, transform, progress, check)
            return
        store.create_layout(h5, counts, config.seq_len, len(config.features),
                            [t.series.ticker for t in tickers], config.chunk_windows, config.compression)
        for key, value in attrs.items():
            h5.attrs[key] = value
        writers = [store.SplitWriter(h5[split], config.chunk_windows) for split in store.SPLITS]
        for index, t in enumerate(_bar(tickers, progress, "writing")):
            for split, writer in enumerate(writers):
                x, y, ends, last_close = ticker_windows(t, index, split, config, transform)
                writer.append(x, y, np.full(len(x), index, dtype=np.int32), ends, last_close)
            check()
        for writer in writers:
            writer.close()
        h5.flush()  # metadata too: a full disk raises here rather than while closing


def _write_schema_3(h5: h5py.File, tickers: list[_Ticker], config: PreprocessConfig, attrs: dict,
                    transform: transforms.Transform, progress: bool, check: Callable[[], None]) -> None:
    store.create_layout_3(h5, len(config.features), [t.series.ticker for t in tickers], config.chunk_windows,
                          config.compression)
    for key, value in attrs.items():
        h5.attrs[key] = value
    writers = [store.SplitWriter3(h5[split]) for split in store.SPLITS]
    for index, t in enumerate(_bar(tickers, progress, "writing")):
        for split, writer in enumerate(writers):
            series, segment_start, start, y, ends, last_close = ticker_segments(t, index, split, config,
                                                                                transform)
            writer.append(series, segment_start, index, start, y, ends, last_close)
        check()
    for writer in writers:
        writer.close()
    h5.flush()  # metadata too: a full disk raises here rather than while closing


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group; only the parent handles it (and removes its temp file).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _call(task):
    function, args = task
    return function(*args)


def _run_tasks(tasks: list[tuple[Callable, tuple]], workers: int, progress: bool) -> Iterable:
    """Run tasks in order of submission (results come back in that order whatever the worker count)."""
    if workers == 1 or len(tasks) == 1:
        yield from _bar(map(_call, tasks), progress, "reading", total=len(tasks))
        return
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context,
                                                initializer=_ignore_sigint) as pool:
        try:
            yield from _bar(pool.map(_call, tasks, chunksize=4), progress, "reading", total=len(tasks))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _bar(iterable, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="ticker", file=sys.stderr)
