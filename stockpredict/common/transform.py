"""Named representations of windows and targets: what the model sees and predicts, and the way back to prices.

numpy only (no TensorFlow), so preprocessing, metrics and a prediction tool share one definition.

    returns (default)  price features: log(v_t / last_close) / input_scale per minute (the window's last
                       close is 0); volume: (log1p(v) - mean_ticker) / sd_ticker; target: the horizon's log
                       return (log(close_{e+h} / last_close) - target_mean) / target_std.
                       input_scale = target_std, so inputs and target share one unit of log return.
    seed               the seed's: every feature min-max scaled, (v - min) / (max - min); the target is the
                       close at e+h on the close's scale. min/max global or per ticker.

Every statistic is fitted on the train split only (by preprocessing). `params()` is plain JSON (stored as
the HDF5 attribute `transform`); `from_params(params)` rebuilds the transform, so a file alone says how to
invert its model's output: price = transform.target_inverse(model_output, last_close, ticker).

Ticker arguments are a ticker index (int) or an int array with one index per window; per-ticker
statistics are rows of /tickers order. Prices are in price units, float64.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

REPRESENTATIONS = ("returns", "seed")
DEFAULT_REPRESENTATION = "returns"
PRICE_FEATURES = ("open", "high", "low", "close")
TARGET_FEATURE = "close"


class TransformError(ValueError):
    """Parameters that do not describe a transform (a damaged or foreign file)."""


def _rows(stat: np.ndarray, tickers) -> np.ndarray:
    """Per-window rows of a (n_tickers, ...) statistic, shaped to broadcast against (n, ...) arrays."""
    return stat[tickers] if np.ndim(tickers) == 0 else stat[np.asarray(tickers)]


def _nan_to_none(values: np.ndarray) -> list:
    return [None if isinstance(v, float) and math.isnan(v) else v for v in np.asarray(values).tolist()] \
        if np.ndim(values) == 1 else [_nan_to_none(row) for row in values]


def _none_to_nan(values) -> np.ndarray:
    return np.array(values, dtype=object).astype(np.float64)  # None -> nan


@dataclass(frozen=True)
class SeedTransform:
    """Min-max scaling of every feature and of the target (the seed's formulation)."""

    features: tuple[str, ...]
    norm_min: np.ndarray        # (n_features,) global, or (n_tickers, n_features) per ticker; float64
    norm_max: np.ndarray
    name: str = "seed"

    @property
    def normalization(self) -> str:
        return "per_ticker" if self.norm_min.ndim == 2 else "global"

    def _bounds(self, tickers, column=None) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.norm_min, self.norm_max
        if lo.ndim == 2:
            lo, hi = _rows(lo, tickers), _rows(hi, tickers)
        if column is not None:
            return lo[..., column], hi[..., column]
        if lo.ndim == 2:  # (n, F) against (n, L, F) windows
            lo, hi = lo[:, None, :], hi[:, None, :]
        return lo, hi

    @staticmethod
    def _scale(values, lo, hi) -> np.ndarray:
        # A constant feature (max == min) maps to 0 instead of dividing by zero. Same arithmetic as
        # schema 1's writer, so the seed representation reproduces those files bit for bit.
        span = np.where(hi > lo, hi - lo, 1.0)
        return ((values - lo) / span).astype(np.float32)

    @staticmethod
    def _unscale(values, lo, hi) -> np.ndarray:
        span = np.where(hi > lo, hi - lo, 1.0)
        return np.asarray(values, np.float64) * span + lo

    def inputs_forward(self, values: np.ndarray, tickers) -> np.ndarray:
        """Raw windows (n, seq_len, n_features) in price/volume units -> float32 model inputs."""
        return self._scale(np.asarray(values, np.float64), *self._bounds(tickers))

    def inputs_inverse(self, x: np.ndarray, last_close: np.ndarray, tickers) -> np.ndarray:
        """Model inputs -> raw windows (float64); last_close is not needed for min-max."""
        return self._unscale(x, *self._bounds(tickers))

    def target_forward(self, price: np.ndarray, last_close: np.ndarray, tickers) -> np.ndarray:
        """Close at e+h (price units) -> the float32 training target."""
        return self._scale(np.asarray(price, np.float64), *self._bounds(tickers, self.close_index))

    def target_inverse(self, y: np.ndarray, last_close: np.ndarray, tickers) -> np.ndarray:
        """Model output or target -> close at e+h in price units (float64)."""
        return self._unscale(np.asarray(y, np.float64).reshape(-1),
                             *self._bounds(tickers, self.close_index))

    @property
    def close_index(self) -> int:
        return self.features.index(TARGET_FEATURE)

    # Schema 3 (common/reader.py): min-max is per minute, so the stored series IS the window's inputs and
    # no column needs a per-window shift; the windows equal schema 2's bit for bit.
    @property
    def relative_columns(self) -> tuple[int, ...]:
        return ()

    def series_forward(self, values: np.ndarray, ticker: int, segment_start: np.ndarray) -> np.ndarray:
        """One ticker's stored minutes (m, n_features) in price/volume units, its ticker-sessions starting
        at rows segment_start -> the stored float32 series (schema 3)."""
        return self._scale(np.asarray(values, np.float64), *self._bounds(ticker))

    def params(self) -> dict:
        return {"name": self.name, "features": list(self.features), "normalization": self.normalization,
                "norm_min": _nan_to_none(self.norm_min), "norm_max": _nan_to_none(self.norm_max)}


@dataclass(frozen=True)
class ReturnsTransform:
    """Log returns relative to the window's last close, standardised; volume standardised per ticker."""

    features: tuple[str, ...]
    target_mean: float          # mean of log(close_{e+h} / close_e) over train windows
    target_std: float           # its standard deviation (> 0)
    input_scale: float          # divides log(v_t / last_close) of the price features (= target_std)
    volume_mean: np.ndarray     # (n_tickers,) mean of log1p(volume) over the ticker's train minutes
    volume_std: np.ndarray      # (n_tickers,) its sd (> 0); tickers without train windows get the pooled one
    name: str = "returns"

    @property
    def close_index(self) -> int:
        return self.features.index(TARGET_FEATURE)

    def inputs_forward(self, values: np.ndarray, tickers) -> np.ndarray:
        values = np.asarray(values, np.float64)
        last = values[:, -1:, self.close_index]                        # (n, 1)
        out = np.empty(values.shape, np.float32)
        for j, feature in enumerate(self.features):
            if feature in PRICE_FEATURES:
                out[..., j] = np.log(values[..., j] / last) / self.input_scale
            else:
                mean, std = self._volume(tickers)
                out[..., j] = (np.log1p(values[..., j]) - mean) / std
        return out

    def inputs_inverse(self, x: np.ndarray, last_close: np.ndarray, tickers) -> np.ndarray:
        x = np.asarray(x, np.float64)
        last = np.asarray(last_close, np.float64).reshape(-1, 1)
        out = np.empty(x.shape, np.float64)
        for j, feature in enumerate(self.features):
            if feature in PRICE_FEATURES:
                out[..., j] = last * np.exp(x[..., j] * self.input_scale)
            else:
                mean, std = self._volume(tickers)
                out[..., j] = np.expm1(x[..., j] * std + mean)
        return out

    @property
    def relative_columns(self) -> tuple[int, ...]:
        """Columns a reader turns into window inputs by subtracting the window's last stored close."""
        return tuple(j for j, f in enumerate(self.features) if f in PRICE_FEATURES)

    def series_forward(self, values: np.ndarray, ticker: int, segment_start: np.ndarray) -> np.ndarray:
        """One ticker's stored minutes (m, n_features), its ticker-sessions starting at rows
        segment_start -> the stored float32 series (schema 3).

        Price features: (log v - ref) / input_scale, ref = the mean log close of the session's usable
        minutes (one per ticker-session), so a window's input is stored[t] - stored[last close]
        (common/reader.py). Centring on the session keeps the stored values small (a few units), so
        float32 holds them to about 1e-6 of the window's units; storing log v / input_scale itself
        (thousands) would lose three digits.
        Volume: standardised per minute, exactly as inputs_forward, so it needs no shift.
        """
        values = np.asarray(values, np.float64)
        out = np.empty(values.shape, np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):  # unusable minutes: no window reads them
            logs = np.log(values[:, list(self.relative_columns)])
            close = logs[:, self.relative_columns.index(self.close_index)]
            usable = np.isfinite(close)
            sums = np.add.reduceat(np.where(usable, close, 0.0), segment_start)
            counts = np.add.reduceat(usable.astype(np.int64), segment_start)
            ref = np.repeat(sums / np.maximum(counts, 1), np.diff(np.append(segment_start, len(close))))
            for k, j in enumerate(self.relative_columns):
                out[:, j] = (logs[:, k] - ref) / self.input_scale
            for j, feature in enumerate(self.features):
                if feature not in PRICE_FEATURES:
                    mean, std = self._volume(ticker)
                    out[:, j] = (np.log1p(values[:, j]) - mean) / std
        return out

    def _volume(self, tickers) -> tuple[np.ndarray, np.ndarray]:
        mean, std = _rows(self.volume_mean, tickers), _rows(self.volume_std, tickers)
        return (mean, std) if np.ndim(mean) == 0 else (mean[:, None], std[:, None])

    def target_forward(self, price: np.ndarray, last_close: np.ndarray, tickers) -> np.ndarray:
        log_return = np.log(np.asarray(price, np.float64) / np.asarray(last_close, np.float64))
        return ((log_return - self.target_mean) / self.target_std).astype(np.float32)

    def target_inverse(self, y: np.ndarray, last_close: np.ndarray, tickers) -> np.ndarray:
        y = np.asarray(y, np.float64).reshape(-1)
        return np.asarray(last_close, np.float64).reshape(-1) * np.exp(self.target_mean + self.target_std * y)

    def params(self) -> dict:
        return {"name": self.name, "features": list(self.features), "target_mean": self.target_mean,
                "target_std": self.target_std, "input_scale": self.input_scale,
                "volume_mean": np.asarray(self.volume_mean).tolist(),
                "volume_std": np.asarray(self.volume_std).tolist()}


Transform = SeedTransform | ReturnsTransform


def fit_returns(features: Sequence[str], target_log_returns: np.ndarray,
                log_volumes: Sequence[np.ndarray | None]) -> ReturnsTransform:
    """Fit the returns representation on train windows.

    target_log_returns: log(close_{e+h} / close_e) of every train window (all tickers).
    log_volumes: per ticker (in /tickers order), log1p(volume) of every minute its train windows cover,
    or None for a ticker without train windows (it gets the pooled statistics).
    """
    target = np.asarray(target_log_returns, np.float64)
    if target.size == 0:
        raise ValueError("no train windows to fit the returns representation on")
    mean, std = float(np.mean(target)), float(np.std(target))
    std = std if std > 0 else 1.0  # a flat universe: nothing to scale
    volume_mean = np.zeros(len(log_volumes))
    volume_std = np.ones(len(log_volumes))
    if "volume" in features:
        fitted = [v for v in log_volumes if v is not None and v.size]
        pooled = np.concatenate(fitted) if fitted else np.zeros(1)
        for i, v in enumerate(log_volumes):
            sample = v if v is not None and v.size else pooled
            volume_mean[i] = np.mean(sample)
            volume_std[i] = np.std(sample) if np.std(sample) > 0 else 1.0
    return ReturnsTransform(features=tuple(features), target_mean=mean, target_std=std, input_scale=std,
                            volume_mean=volume_mean, volume_std=volume_std)


def from_params(params: Mapping) -> Transform:
    """Rebuild a transform from `params()` (e.g. json.loads of the HDF5 attribute `transform`)."""
    try:
        name, features = params["name"], tuple(params["features"])
        if name == "seed":
            return SeedTransform(features, _none_to_nan(params["norm_min"]), _none_to_nan(params["norm_max"]))
        if name == "returns":
            return ReturnsTransform(features, float(params["target_mean"]), float(params["target_std"]),
                                    float(params["input_scale"]),
                                    np.asarray(params["volume_mean"], np.float64),
                                    np.asarray(params["volume_std"], np.float64))
    except (KeyError, TypeError, ValueError) as err:
        raise TransformError(f"bad transform parameters ({type(err).__name__}: {err})") from None
    raise TransformError(f"unknown representation {name!r}; known: {', '.join(REPRESENTATIONS)}")


def to_json(transform: Transform) -> str:
    """Sorted JSON of the parameters; floats round-trip exactly (Python writes repr)."""
    return json.dumps(transform.params(), sort_keys=True)


def from_json(text: str) -> Transform:
    try:
        params = json.loads(text)
    except json.JSONDecodeError as err:
        raise TransformError(f"transform attribute is not JSON ({err})") from None
    if not isinstance(params, dict):
        raise TransformError("transform attribute is not a JSON object")
    return from_params(params)


def from_attrs(attrs: Mapping) -> Transform:
    """The transform of a sequences file from its root attributes (schema 2: `transform`; schema 1: the
    seed representation from `features`, `norm_min`, `norm_max`)."""
    if "transform" in attrs:
        text = attrs["transform"]
        return from_json(text.decode() if isinstance(text, bytes) else str(text))
    features = tuple(f.decode() if isinstance(f, bytes) else str(f) for f in attrs["features"])
    return SeedTransform(features, np.asarray(attrs["norm_min"], np.float64),
                         np.asarray(attrs["norm_max"], np.float64))
