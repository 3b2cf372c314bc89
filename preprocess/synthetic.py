"""A synthetic S&P 500-like universe of minute bars, in the preprocessing input format. Deterministic by seed.

    python -m preprocess.synthetic --out data/raw --tickers 503 --days 21 --seed 0

Each ticker's log price is p_t = f_t + d_t (t in minutes, continuing across sessions):
    f_t  the fair value, a slow random walk:   f_t = f_{t-1} + fair_vol * eps_t   (plus an overnight gap)
    d_t  a mean-reverting deviation, AR(1):     d_t = phi * d_{t-1} + deviation_vol * eta_t
Over the horizon h the expected change is E[p_{t+h} - p_t] = (phi^h - 1) d_t: with phi = 0.8 and h = 5 about
67 % of the current deviation is expected to revert. d_t is not observed, but the window shows it (p_t
minus the window's recent average), so a model that looks at the window beats the persistence forecast
p_{t+h} = p_t. With the defaults the predictable part is about a third of the variance of the 5-minute
change (see docs/data.md for the derivation and a least-squares check).

Volume is U-shaped over the session (high at the open and close), log-normal noise, integers.
Files: <TICKER>.csv with columns timestamp,open,high,low,close,volume; timestamps carry a UTC offset
(`--timestamps utc`, the default, like many vendors), or exchange-local with offset, or naive local.
Each day has 390 regular minutes (09:30-15:59 exchange time) plus a few pre- and post-market bars.
Vendor mess, all configurable: missing minutes, bad rows (empty close, non-positive price, negative
volume), exact duplicate rows, a few rows out of order.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from preprocess import optimum
from preprocess.optimum import TickerProcess
from stockpredict.common.errors import UserError, run_cli
from stockpredict.common.files import write_json_atomic
from stockpredict.common.logs import get_logger

log = get_logger("stockpredict.preprocess")

EXCHANGE_TZ = "America/New_York"
OPTIMUM_FILE = "optimum.json"  # written beside the CSVs; preprocessing reads it (docs/data.md)
# Real large caps first (names only, no real prices), then generated ones in the same style.
SP500_LIKE = (
    "AAPL MSFT NVDA AMZN GOOGL META BRK.B LLY AVGO JPM TSLA UNH XOM V PG MA JNJ HD MRK COST ABBV CVX CRM "
    "BAC AMD NFLX PEP KO WMT ADBE TMO LIN MCD ACN CSCO ABT ORCL DIS WFC INTU CAT DHR VZ AMGN IBM QCOM CMCSA "
    "TXN PFE NOW GE UNP PM SPGI NKE ISRG AMAT HON BA LOW COP RTX GS UBER BKNG ELV PLD T NEE MDT SYK BLK "
    "TJX LRCX SCHW VRTX MS ADP C DE REGN ETN PGR MMC CB BSX ADI PANW GILD MU CI SBUX BF.B KLAC SNPS"
).split()


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic universe; per-minute volatilities are in log-price units."""

    tickers: int = 503
    days: int = 21                 # trading days (Mon-Fri) from start_date
    seed: int = 0
    start_date: str = "2024-03-04"  # a Monday; 21 days cross the US DST switch (offset -05:00 -> -04:00)
    phi: float = 0.8               # AR(1) coefficient of the deviation per minute (half-life ~3 minutes)
    deviation_vol: float = 0.0008  # innovation sd of the deviation d_t per minute
    fair_vol: float = 0.00005      # sd of the fair-value random walk per minute
    overnight_vol: float = 0.002   # sd of the fair-value gap between sessions
    phi_spread: float = 0.0        # per-ticker phi drawn uniformly from phi +- phi_spread (0: all equal)
    vol_spread: float = 0.0        # per-ticker deviation_vol and fair_vol times exp(U(-s, s)), independently
    price_min: float = 20.0        # each ticker starts at a price drawn uniformly from [price_min, price_max]
    price_max: float = 500.0
    horizon: int = 5               # minutes; only for optimum.json (the best skill at this horizon)
    seq_len: int = 60              # minutes per window; only for optimum.json (the window-limited skill)
    extended_bars: int = 6         # pre- plus post-market bars per day (dropped by preprocessing)
    missing_frac: float = 0.002    # fraction of regular minutes with no bar
    bad_row_frac: float = 0.0005   # fraction of rows with an empty close, a price <= 0 or a negative volume
    duplicate_frac: float = 0.0005  # fraction of rows written twice (exact duplicates)
    unsorted_frac: float = 0.0005  # fraction of rows swapped with their neighbour
    timestamps: str = "utc"        # "utc" (+00:00), "offset" (exchange time with offset), "naive"


def ticker_names(n: int, seed: int = 0) -> list[str]:
    """n distinct SP500-like ticker names: real large-cap symbols first, then generated 2-4 letter ones."""
    names = list(SP500_LIKE[:n])
    rng = np.random.default_rng([seed, 7919])
    letters = np.array(list(string.ascii_uppercase))
    taken = set(names)
    while len(names) < n:
        candidate = "".join(rng.choice(letters, size=int(rng.choice([2, 3, 3, 4, 4, 4]))))
        if candidate not in taken:
            taken.add(candidate)
            names.append(candidate)
    return names


def trading_days(start: str, days: int) -> pd.DatetimeIndex:
    """The first `days` weekdays from `start` (no holiday calendar)."""
    return pd.bdate_range(start, periods=days)


def ticker_process(config: SyntheticConfig, index: int) -> TickerProcess:
    """The generating parameters of ticker `index`: the config's, spread per ticker when asked.

    Drawn from their own generator ([seed, index, 1]) so that the spreads at 0 leave every other draw,
    and so the default universe, unchanged.
    """
    rng = np.random.default_rng([config.seed, index, 1])
    phi_shift, log_dvol, log_fvol = rng.uniform(-1, 1, 3)
    return TickerProcess(phi=config.phi + config.phi_spread * phi_shift,
                         deviation_vol=config.deviation_vol * float(np.exp(config.vol_spread * log_dvol)),
                         fair_vol=config.fair_vol * float(np.exp(config.vol_spread * log_fvol)),
                         overnight_vol=config.overnight_vol)


def simulate_ticker(rng: np.random.Generator, n_minutes: int, config: SyntheticConfig,
                    session_starts: np.ndarray, process: TickerProcess | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Log prices and volumes for n_minutes consecutive regular minutes (sessions concatenated).

    `process` gives this ticker's parameters (default: the config's phi and volatilities).
    """
    p = process or TickerProcess(config.phi, config.deviation_vol, config.fair_vol, config.overnight_vol)
    fair_steps = p.fair_vol * rng.standard_normal(n_minutes)
    fair_steps[session_starts] += p.overnight_vol * rng.standard_normal(len(session_starts))
    fair = np.log(rng.uniform(config.price_min, config.price_max)) + np.cumsum(fair_steps)
    eta = p.deviation_vol * rng.standard_normal(n_minutes)
    deviation = np.empty(n_minutes)
    level = eta[0] / np.sqrt(1 - p.phi ** 2)
    for t in range(n_minutes):  # a scalar recursion; ~10k steps per ticker is cheap
        level = p.phi * level + eta[t]
        deviation[t] = level
    minute = np.arange(n_minutes) % 390
    u_shape = 1.0 + 3.0 * ((minute - 195) / 195) ** 2
    volume = np.round(rng.uniform(2e3, 5e4) * u_shape * rng.lognormal(0, 0.5, n_minutes))
    return fair + deviation, volume


def write_universe(out_dir: Path, tickers: int = 503, days: int = 21, seed: int = 0, **options) -> list[Path]:
    """Write <TICKER>.csv files for a synthetic universe into out_dir; returns the paths (sorted).

    Extra keyword options are fields of SyntheticConfig (missing_frac, bad_row_frac, timestamps, ...).
    """
    valid = set(SyntheticConfig.__dataclass_fields__) - {"tickers", "days", "seed"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise UserError(f"unknown synthetic option(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(sorted(valid))}")
    config = SyntheticConfig(tickers=tickers, days=days, seed=seed, **options)
    if tickers < 1 or days < 1:
        raise UserError(f"need --tickers >= 1 and --days >= 1, got {tickers} and {days}")
    if config.timestamps not in ("utc", "offset", "naive"):
        raise UserError(f"timestamps must be utc, offset or naive, not {config.timestamps!r}")
    if not (-1 < config.phi - abs(config.phi_spread) and config.phi + abs(config.phi_spread) < 1):
        raise UserError(f"need -1 < phi +- phi_spread < 1 (a stationary deviation), got phi={config.phi}, "
                        f"phi_spread={config.phi_spread}")
    if not 0 < config.price_min <= config.price_max:
        raise UserError(f"need 0 < price_min <= price_max, got {config.price_min} and {config.price_max}")
    if config.horizon < 1 or config.seq_len < 2 or config.seq_len + config.horizon > 390:
        raise UserError(f"need horizon >= 1, seq_len >= 2 and seq_len + horizon <= 390, got "
                        f"{config.horizon} and {config.seq_len}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dates = trading_days(config.start_date, days)
    regular_text, extended_text = _timestamp_text(dates, config)
    n_minutes = 390 * days
    session_starts = np.arange(0, n_minutes, 390)
    paths, processes, weights = [], [], []
    for index, name in enumerate(ticker_names(tickers, seed)):
        rng = np.random.default_rng([seed, index])
        process = ticker_process(config, index)
        log_price, volume = simulate_ticker(rng, n_minutes, config, session_starts, process)
        frame = _bars_frame(rng, log_price, volume, regular_text, extended_text, config)
        path = out_dir / f"{name}.csv"
        frame.to_csv(path, index=False, float_format="%.4f")
        paths.append(path)
        processes.append(process)
        weights.append(float(np.mean(np.exp(2 * log_price))))
    write_optimum(out_dir, config, paths, processes, weights)
    return sorted(paths)


def write_optimum(out_dir: Path, config: SyntheticConfig, paths: list[Path], processes: list[TickerProcess],
                  mean_square_prices: list[float]) -> dict:
    """Write OPTIMUM_FILE beside the CSVs: the best achievable skill over persistence (preprocess/optimum.py)
    at config.horizon, pooled over all tickers, plus what preprocessing needs to recompute it for its own
    horizon, window length and test split: each file's parameters and sha256 (to tell it is ours)."""
    from preprocess.bars import file_sha256

    record = optimum.optimum(processes, np.asarray(mean_square_prices), config.horizon, config.seq_len)
    record["generator"] = dataclasses.asdict(config)
    record["files"] = {path.name: {"sha256": file_sha256(path), "mean_square_price": round(w, 6),
                                   **process.to_dict()}
                       for path, process, w in zip(paths, processes, mean_square_prices)}
    write_json_atomic(out_dir / OPTIMUM_FILE, record)
    return record


def _timestamp_text(dates: pd.DatetimeIndex, config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Timestamp strings of every regular minute, and of every extended-hours minute
    (08:00-09:29, 16:00-17:59)."""
    def render(local_naive: pd.DatetimeIndex) -> np.ndarray:
        aware = local_naive.tz_localize(EXCHANGE_TZ)
        if config.timestamps == "utc":
            return np.asarray(aware.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S+00:00"))
        if config.timestamps == "offset":
            text = np.asarray(aware.strftime("%Y-%m-%dT%H:%M:%S%z"))
            return np.char.add(np.char.add(_slice(text, 0, 22), ":"), _slice(text, 22, 24))
        return np.asarray(local_naive.strftime("%Y-%m-%d %H:%M:%S"))

    minutes = np.arange(390)
    regular = (dates.values[:, None] + np.timedelta64(570, "m") + minutes.astype("timedelta64[m]")).ravel()
    extended_minutes = np.concatenate([np.arange(480, 570), np.arange(960, 1080)])
    extended = (dates.values[:, None] + extended_minutes.astype("timedelta64[m]")).ravel()
    return render(pd.DatetimeIndex(regular)), render(pd.DatetimeIndex(extended)).reshape(len(dates), -1)


def _slice(text: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.array([s[start:stop] for s in text])


def _bars_frame(rng, log_price, volume, regular_text, extended_text, config: SyntheticConfig) -> pd.DataFrame:
    n = len(log_price)
    close = np.exp(log_price)
    open_ = np.concatenate(([close[0]], close[:-1]))
    spread = close * np.abs(rng.normal(0, config.deviation_vol / 2, n))
    high, low = np.maximum(open_, close) + spread, np.minimum(open_, close) - spread
    keep = rng.random(n) >= config.missing_frac
    rows = {"timestamp": regular_text[keep], "open": open_[keep], "high": high[keep], "low": low[keep],
            "close": close[keep], "volume": volume[keep]}
    frame = pd.DataFrame(rows)

    # Extended-hours bars: a few random minutes per day around the last regular close of that day.
    n_days = extended_text.shape[0]
    if config.extended_bars > 0:
        order = rng.random((n_days, extended_text.shape[1])).argsort(axis=1)
        pick = np.sort(order[:, :config.extended_bars], axis=1)
        ext_text = np.take_along_axis(extended_text, pick, axis=1).ravel()
        day_close = np.repeat(close[389::390], config.extended_bars)
        ext_close = day_close * np.exp(rng.normal(0, 0.002, len(day_close)))
        ext = pd.DataFrame({"timestamp": ext_text, "open": ext_close, "high": ext_close, "low": ext_close,
                            "close": ext_close, "volume": np.round(rng.uniform(100, 2000, len(ext_close)))})
        frame = pd.concat([frame, ext], ignore_index=True)
        frame = frame.iloc[np.argsort(frame["timestamp"].to_numpy(), kind="stable")].reset_index(drop=True)

    n_rows = len(frame)
    bad = np.flatnonzero(rng.random(n_rows) < config.bad_row_frac)
    kind = rng.integers(0, 3, len(bad))
    close_col, volume_col = frame.columns.get_loc("close"), frame.columns.get_loc("volume")
    frame.iloc[bad[kind == 0], close_col] = np.nan
    # Non-positive prices: half zero, half negative.
    frame.iloc[bad[kind == 1], close_col] = -frame.iloc[bad[kind == 1], close_col].to_numpy() * (
        rng.random(int((kind == 1).sum())) < 0.5)
    frame.iloc[bad[kind == 2], volume_col] = -frame.iloc[bad[kind == 2], volume_col].to_numpy() - 1

    order = np.arange(n_rows)
    swaps = np.flatnonzero(rng.random(n_rows - 1) < config.unsorted_frac)
    for i in swaps:
        order[i], order[i + 1] = order[i + 1], order[i]
    duplicates = np.flatnonzero(rng.random(n_rows) < config.duplicate_frac)
    order = np.insert(order, duplicates + 1, order[duplicates])
    frame = frame.iloc[order].reset_index(drop=True)
    frame["volume"] = frame["volume"].astype(np.int64)
    return frame


TINY_UNIVERSE = {"tickers": 8, "days": 10, "seed": 0}


def build_tiny_dataset(root: Path) -> Path:
    """A small universe (8 tickers x 10 days) written under `root` and preprocessed with per-ticker
    normalisation; returns the .h5 path. The test fixture `tiny_dataset` and the trainer's tests use it:
    a least-squares predictor on the window beats persistence on its test split
    (tests/preprocess/test_pipeline.py).
    """
    from preprocess.pipeline import build_dataset
    from preprocess.preprocess_config import PreprocessConfig

    root = Path(root)
    write_universe(root / "raw", **TINY_UNIVERSE)
    out = root / "sequences.h5"
    build_dataset(root / "raw", out, PreprocessConfig(normalize="per_ticker"), workers=1, progress=False)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write a synthetic universe (see the module docstring)."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(prog="python -m preprocess.synthetic",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for <TICKER>.csv files")
    parser.add_argument("--tickers", type=int, default=defaults.tickers, help="number of tickers")
    parser.add_argument("--days", type=int, default=defaults.days, help="trading days")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    for name in ("start_date", "phi", "deviation_vol", "fair_vol", "overnight_vol", "phi_spread",
                 "vol_spread", "price_min", "price_max", "horizon", "seq_len", "extended_bars",
                 "missing_frac", "bad_row_frac", "duplicate_frac", "unsorted_frac", "timestamps"):
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            help=_field_help(name))
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    paths = write_universe(out, **args)
    print(f"wrote {len(paths)} ticker files ({args['days']} days each) to {out}")
    record = json.loads((Path(out) / OPTIMUM_FILE).read_text())
    print(f"best achievable skill over persistence at horizon {record['horizon']} min: "
          f"{record['kalman_skill']:.3f} (Kalman filter), {record['window_skill']:.3f} (least squares on a "
          f"{record['seq_len']}-minute window); written to {out / OPTIMUM_FILE}")
    return 0


def _field_help(name: str) -> str:
    import inspect

    for line in inspect.getsource(SyntheticConfig).splitlines():
        if line.strip().startswith(f"{name}:") and "#" in line:
            return line.split("#", 1)[1].strip()
    return name


if __name__ == "__main__":
    raise SystemExit(main())
