"""Forecasts from a trained run: fresh minute bars in, the close `horizon` minutes ahead out.

    python -m stockpredict.predict --run results/runs/r1 --raw data/fresh --out predictions.csv
    python -m stockpredict.predict --run results/runs/r1 --raw data/raw/2024-03-08.csv.gz --out p.csv --all
    make predict RUN=r1 RAW=data/fresh [OUT=predictions.csv ALL=1 PREDICT_ARGS="--tz UTC"]

The run directory is self-contained: model.keras (the network), transform.json (the data file's
representation: fresh bars -> model inputs, model output -> price) and inputs.json (the preprocessing
config that made the training windows, and the ticker order of per-ticker statistics), all written by
the trainer when it finishes. Runs trained before inputs.json existed read the same from the data file
config.json's `train.data` names, while it is still there.

The bars are read exactly as preprocessing reads them (any supported format, docs/data.md "Input
formats"; --tz, --bar-label and --fill-gaps default to the values the training file was made with), and
windows are the training windows' definition: seq_len complete minutes of one session ending at minute e,
with e + horizon inside the same session. By default the latest such window per ticker; --all: every one.

Output CSV, one row per window, sorted by ticker and time (docs/predict.md):
    ticker, window_end, last_close, predicted_close, predicted_return, horizon_minutes
window_end is the window's last minute (its start), ISO 8601 in exchange time with the UTC offset; prices
in the input's units; predicted_return = predicted_close / last_close - 1.

TensorFlow is imported only inside main (seconds), so the pure functions here load without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from stockpredict.common import layout, rundir
from stockpredict.common import transform as transforms
from stockpredict.common.errors import UserError, run_cli
from stockpredict.common.files import write_atomic
from stockpredict.common.logs import get_logger

INPUTS_SCHEMA = 1
COLUMNS = ("ticker", "window_end", "last_close", "predicted_close", "predicted_return", "horizon_minutes")
PREDICT_BATCH_WINDOWS = 8192        # windows per forward pass (no gradients: large is cheap)
# Inputs this far outside what training saw mean other units or another instrument, not a forecast:
SEED_INPUT_RANGE = (-1.0, 2.0)      # min-max scaled values: one whole training range beyond either end
VOLUME_Z_LIMIT = 5.0                # mean standardised log volume (returns): ~150x the training level

log = get_logger("stockpredict.predict")


# --- what the run says fresh bars must look like ---------------------------------------------------

def inputs_record(data_path: str | Path) -> dict:
    """What predict needs from a sequences file besides the transform: the preprocessing config (seq_len,
    horizon, features, tz, bar_label, fill_gaps, ...) and /tickers, the row order of per-ticker
    statistics. The trainer writes it to the run directory as inputs.json."""
    import h5py

    with h5py.File(data_path, "r") as handle:
        config = handle.attrs[layout.ATTR_CONFIG]
        tickers = [t.decode() if isinstance(t, bytes) else str(t) for t in handle[layout.TICKERS][()]]
    return {"schema": INPUTS_SCHEMA, "data": os.path.abspath(data_path),
            "config": json.loads(config.decode() if isinstance(config, bytes) else str(config)),
            "tickers": tickers}


@dataclass(frozen=True)
class RunInputs:
    """A run's model contract, from its directory (and its data file for older runs)."""

    run_dir: Path
    config: object                 # preprocess.config.PreprocessConfig the training windows were made with
    tickers: tuple[str, ...]       # /tickers of the training file: index = row of per-ticker statistics
    transform: transforms.Transform
    source: str                    # where config and tickers came from (for messages)

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @property
    def features(self) -> tuple[str, ...]:
        return self.config.features


def read_run(run_dir: Path, overrides: dict | None = None) -> RunInputs:
    """Read and cross-check a run directory; every problem is a one-line UserError.

    overrides: PreprocessConfig fields the user set on the command line (tz, bar_label, fill_gaps).
    """
    from preprocess.preprocess_config import PreprocessConfig

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    for name in (rundir.MODEL, rundir.TRANSFORM):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir} has no {name}: not a finished training run (the trainer writes it "
                            f"at the end)")
    try:
        transform = transforms.from_json((run_dir / rundir.TRANSFORM).read_text())
    except transforms.TransformError as err:
        raise UserError(f"{run_dir / rundir.TRANSFORM}: {err}") from None
    record, source = _load_record(run_dir)
    try:
        config = PreprocessConfig.from_mapping({**record["config"], **(overrides or {})})
        tickers = tuple(str(t) for t in record["tickers"])
    except (KeyError, TypeError) as err:
        raise UserError(f"{source}: not a preprocessing record ({type(err).__name__}: {err})") from None
    if tuple(transform.features) != config.features:
        raise UserError(f"{run_dir}: transform.json's features {list(transform.features)} differ from the "
                        f"training windows' {list(config.features)} ({source})")
    rows = _statistics_rows(transform)
    if rows is not None and rows != len(tickers):
        raise UserError(f"{run_dir}: transform.json has per-ticker statistics for {rows} tickers, the "
                        f"training file had {len(tickers)} ({source})")
    return RunInputs(run_dir, config, tickers, transform, source)


def _load_record(run_dir: Path) -> tuple[dict, str]:
    path = run_dir / rundir.INPUTS
    if path.is_file():
        try:
            return json.loads(path.read_text()), str(path)
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not JSON ({err})") from None
    # A run trained before inputs.json: the data file it names, if it is still there.
    try:
        data = json.loads((run_dir / rundir.CONFIG).read_text())["train"]["data"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{run_dir} has neither {rundir.INPUTS} nor a readable config.json naming its data "
                        f"file: cannot tell the window length, horizon and tickers the model was trained "
                        f"on") from None
    if not Path(data).is_file():
        raise UserError(f"{run_dir} has no {rundir.INPUTS} (trained before it was recorded) and its data "
                        f"file "
                        f"{data} is gone: cannot tell the window length, horizon and tickers the model was "
                        f"trained on")
    try:
        return inputs_record(data), data
    except (OSError, KeyError) as err:
        raise UserError(f"{data}: cannot read its preprocessing config and tickers ({err})") from None


def _statistics_rows(transform: transforms.Transform) -> int | None:
    """Number of per-ticker statistic rows, or None when the transform has none that matter."""
    if isinstance(transform, transforms.SeedTransform):
        return len(transform.norm_min) if transform.normalization == "per_ticker" else None
    return len(transform.volume_mean) if "volume" in transform.features else None


def check_model_shape(input_shape: Sequence, run: RunInputs) -> None:
    """The network's input (None, seq_len, n_features) must be the recorded windows'."""
    expected = (run.seq_len, len(run.features))
    if tuple(input_shape[1:]) != expected:
        raise UserError(f"{run.run_dir / rundir.MODEL} takes windows of {tuple(input_shape[1:])} (minutes, "
                        f"features) but the run records seq_len {run.seq_len} and features "
                        f"{','.join(run.features)}: the run directory mixes files of different runs")


# --- windows of fresh bars ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Windows:
    """Model-ready windows of all tickers, in (ticker, time) order."""

    x: np.ndarray             # float32 (n, seq_len, n_features), in the run's representation
    ticker_index: np.ndarray  # int (n,): row of the per-ticker statistics (index into RunInputs.tickers)
    tickers: np.ndarray       # object (n,): ticker names
    window_end: np.ndarray    # int64 (n,): UTC epoch seconds of minute e
    last_close: np.ndarray    # float64 (n,): close at minute e, price units


def series_windows(series, run: RunInputs, every: bool) -> tuple[np.ndarray, np.ndarray] | str:
    """One ticker's complete windows as raw values: (values (n, L, F) float64, window_end (n,) epoch s),
    the latest only unless `every`; or a reason (str) when it has none.

    Complete = every input minute present and valid (the training windows' rule, preprocess/windows.py),
    with e <= 390 - horizon - 1 so the forecast minute lies in the same session, as in training. The
    target minute itself need not exist: it is the future.
    """
    from preprocess import windows
    from preprocess.pipeline import session_open_epochs

    L, h = run.seq_len, run.horizon
    codes = windows.minute_codes(series.values, series.present, run.features)
    n = windows.windows_per_session(L, h)
    status = sliding_window_view(codes, L, axis=1)[:, :n].max(axis=2)  # (sessions, n), 0 = usable
    usable = status == windows.OK
    if not usable.any():
        worst = windows.DROP_REASONS[int(np.bincount(status.ravel()).argmax())] if status.size else None
        return (f"no complete {L}-minute window ending by {_clock(L - 1 + n - 1)} in "
                f"{len(series.sessions)} session(s)" + (f" (most windows: {worst})" if worst else ""))
    if not every:
        session, column = np.argwhere(usable)[-1]  # sessions are sorted: the last one is the newest
        usable = np.zeros_like(usable)
        usable[session, column] = True
    values = windows.window_inputs(series.values, L, h)[usable]
    ends = session_open_epochs(series.sessions)[:, None] + 60 * windows.window_end_minutes(L, h)
    return np.ascontiguousarray(values), ends[usable].astype(np.int64)


def normalisation_problem(transform: transforms.Transform, x: np.ndarray, raw: np.ndarray, index: int
                          ) -> str | None:
    """Why a ticker's model inputs (x, from raw values `raw`, statistics row `index`) are not what the model
    was trained on, or None.

    seed: min-max scaled values beyond SEED_INPUT_RANGE (prices or volumes in other units, or a price level
    the training never saw); returns: the mean standardised log volume beyond +-VOLUME_Z_LIMIT (volume in
    lots or thousands instead of shares). Price inputs of `returns` are relative, so any level is fine.
    """
    if isinstance(transform, transforms.SeedTransform):
        lo, hi = SEED_INPUT_RANGE
        outside = (x < lo) | (x > hi)
        if outside.any():
            j = int(np.argmax(outside.any(axis=(0, 1))))
            feature = transform.features[j]
            return (f"{feature} {raw[..., j][outside[..., j]][0]:g} is far outside the {feature} range the "
                    f"model was trained on (seed min-max, scaled to {x[..., j][outside[..., j]][0]:.2f}; "
                    f"trained on 0..1)")
        return None
    if "volume" in transform.features:
        j = transform.features.index("volume")
        z = float(np.mean(x[..., j]))
        if abs(z) > VOLUME_Z_LIMIT:
            return (f"its volume is {np.exp(z * float(transform.volume_std[index])):.3g}x the training "
                    f"level (mean standardised log volume {z:+.1f}): other units (lots, thousands)?")
    return None


def build_windows(series_list: list, run: RunInputs, every: bool) -> tuple[Windows, dict[str, str]]:
    """Model inputs for every usable ticker; returns (windows, {ticker: skip reason})."""
    per_ticker = _statistics_rows(run.transform) is not None
    index_of = {t: i for i, t in enumerate(run.tickers)}
    skipped: dict[str, str] = {}
    parts = []
    for series in series_list:
        name = series.ticker
        if per_ticker and name not in index_of:
            skipped[name] = (f"no per-ticker statistics: the model was trained on {len(run.tickers)} other "
                             f"tickers ({_statistics_kind(run.transform)} per ticker)")
            continue
        index = index_of.get(name, 0)  # without per-ticker statistics the index is never used
        if per_ticker and not _has_statistics(run.transform, index):
            skipped[name] = "no per-ticker statistics: it had no training windows"
            continue
        found = series_windows(series, run, every)
        if isinstance(found, str):
            skipped[name] = found
            continue
        raw, ends = found
        x = run.transform.inputs_forward(raw, index)
        problem = normalisation_problem(run.transform, x, raw, index)
        if problem:
            skipped[name] = problem
            continue
        parts.append((name, index, x, ends, raw[:, -1, run.config.close_index].astype(np.float64)))
    if not parts:
        return Windows(np.zeros((0, run.seq_len, len(run.features)), np.float32), np.zeros(0, int),
                       np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0)), skipped
    return Windows(
        x=np.concatenate([p[2] for p in parts]),
        ticker_index=np.concatenate([np.full(len(p[2]), p[1]) for p in parts]),
        tickers=np.concatenate([np.full(len(p[2]), p[0], dtype=object) for p in parts]),
        window_end=np.concatenate([p[3] for p in parts]),
        last_close=np.concatenate([p[4] for p in parts])), skipped


def _statistics_kind(transform: transforms.Transform) -> str:
    return "min-max" if isinstance(transform, transforms.SeedTransform) else "volume mean and sd"


def _has_statistics(transform: transforms.Transform, index: int) -> bool:
    if isinstance(transform, transforms.SeedTransform):
        return bool(np.isfinite(transform.norm_min[index]).all()
                    and np.isfinite(transform.norm_max[index]).all())
    return bool(np.isfinite(transform.volume_mean[index]) and np.isfinite(transform.volume_std[index]))


def _clock(minute: int) -> str:
    from preprocess.bars import clock

    return clock(minute)


# --- forecasts -----------------------------------------------------------------------------------------

def forecast_table(windows: Windows, model_output: np.ndarray, run: RunInputs) -> pd.DataFrame:
    """The output rows: model output -> price with the run's transform, in (ticker, time) order."""
    from preprocess.bars import EXCHANGE_TZ

    predicted = run.transform.target_inverse(model_output, windows.last_close, windows.ticker_index)
    ends = pd.to_datetime(windows.window_end, unit="s", utc=True).tz_convert(EXCHANGE_TZ)
    return pd.DataFrame({
        "ticker": windows.tickers.astype(str),
        "window_end": [t.isoformat() for t in ends],
        "last_close": windows.last_close,
        "predicted_close": predicted,
        "predicted_return": predicted / windows.last_close - 1.0,
        "horizon_minutes": np.full(len(predicted), run.horizon, dtype=np.int64),
    }, columns=list(COLUMNS))


def prepare(run: RunInputs, raw: Path, every: bool) -> tuple[Windows, dict[str, str], list[str]]:
    """Read `raw` as preprocessing would and build the model inputs, before any TensorFlow.

    Returns (windows, {ticker or file: skip reason}, the input checks' warnings); logs each skip as one
    warning line. Raises UserError when no ticker is left, naming the first reasons.
    """
    from preprocess import inputs

    series, skipped_files, _ = inputs.load_universe(Path(raw), run.config, inputs.run_serially)
    report = inputs.check_inputs(series, run.config)
    built, skipped = build_windows(series, run, every)
    skipped = {**skipped_files, **skipped}
    if not len(built.x):
        reasons = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3])
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        raise UserError(f"no ticker in {raw} can be forecast with this model (seq_len {run.seq_len}, horizon "
                        f"{run.horizon}, features {','.join(run.features)}): {reasons or 'no bars'}{more}")
    for name, reason in skipped.items():
        if name not in skipped_files:  # load_universe logged those already
            log.warning("skipping %s: %s", name, reason)
    return built, skipped, report.warnings


def run_model(model_predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """model_predict (x -> (n,) outputs) over x in batches of PREDICT_BATCH_WINDOWS; (n,) float."""
    return np.concatenate([np.asarray(model_predict(x[i:i + PREDICT_BATCH_WINDOWS])).reshape(-1)
                           for i in range(0, len(x), PREDICT_BATCH_WINDOWS)])


def write_table(table: pd.DataFrame, out: Path) -> None:
    """The CSV, atomically (never half a file); floats with every digit (repr)."""
    write_atomic(out, table.to_csv(index=False, lineterminator="\n"))


# --- command line --------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from preprocess.preprocess_config import BAR_LABELS

    parser = argparse.ArgumentParser(
        prog="python -m stockpredict.predict", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Forecast the close `horizon` minutes after the latest complete window of each ticker "
                    "with a trained run's model (docs/predict.md).")
    parser.add_argument("--run", type=Path, required=True,
                        help="a finished run directory (model.keras, transform.json, inputs.json)")
    parser.add_argument("--raw", type=Path, required=True,
                        help="fresh minute bars: a directory or one file, in any format preprocessing reads")
    parser.add_argument("--out", type=Path, required=True, help="output CSV (replaced atomically)")
    parser.add_argument("--all", action="store_true", dest="every",
                        help="every complete window, not only the latest per ticker")
    parser.add_argument("--tz", default=None,
                        help="time zone of times without a UTC offset (default: the training file's)")
    parser.add_argument("--bar-label", choices=BAR_LABELS, default=None,
                        help="what a bar's time marks: minute start or end (default: the training file's)")
    parser.add_argument("--fill-gaps", type=int, default=None, metavar="K",
                        help="forward-fill interior gaps of at most K minutes (default: the training file's)")
    return parser.parse_args(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in (("tz", args.tz), ("bar_label", args.bar_label),
                                   ("fill_gaps", args.fill_gaps)) if v is not None}
    run = read_run(args.run, overrides)
    if not args.out.parent.is_dir():
        raise UserError(f"output directory {args.out.parent} does not exist")
    built, skipped, warnings = prepare(run, args.raw, args.every)  # user mistakes fail before TensorFlow
    for warning in warnings:
        log.warning(warning)
    model = load_model(run.run_dir / rundir.MODEL)
    check_model_shape(model.input_shape, run)
    table = forecast_table(built, run_model(lambda x: model(x, training=False).numpy()[:, 0], built.x), run)
    write_table(table, args.out)
    used = table["ticker"].nunique()
    print(f"wrote {len(table):,} forecast(s) of the close {run.horizon} minutes ahead for {used} ticker(s) "
          f"to {args.out} ({len(skipped)} skipped; config: {', '.join(_config_summary(run.config))})")
    return 0


def _config_summary(config) -> list[str]:
    values = dataclasses.asdict(config)
    return [f"{k} {values[k] if k != 'features' else ','.join(values[k])}"
            for k in ("seq_len", "horizon", "features", "tz", "bar_label", "fill_gaps")]


def load_model(path: Path):
    """The trained Keras model (TensorFlow imported here: seconds). Not compiled: inference only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        return tf.keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a damaged or foreign file
        raise UserError(f"cannot load {path} ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `python -m stockpredict.predict`."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
