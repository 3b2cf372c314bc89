"""Honest test metrics: the model against the persistence forecast, on the normalised and price scales.

Everything is computed from sums (squared errors, absolute errors, counts), so each rank can score its
own shard and one allreduce of the sums gives the exact metrics of the whole split.
"""

from __future__ import annotations

import math

import numpy as np

# Order of the per-shard sums; one float64 vector, so ranks combine them with a single Sum allreduce.
SUM_FIELDS = (
    "count", "se_norm", "se_price", "ae_price", "persistence_se_norm", "persistence_se_price",
    "direction_correct", "direction_count",
)


def to_price(values: np.ndarray, tickers: np.ndarray, norm_min: np.ndarray, norm_max: np.ndarray,
             close_index: int) -> np.ndarray:
    """Undo min-max normalisation of the close column: price = v * (max - min) + min.

    norm_min/norm_max are (n_features,) for "global" normalisation or (n_tickers, n_features) for
    "per_ticker"; `tickers` (int, per window) picks the row in the latter case.
    """
    if norm_min.ndim == 1:
        lo, hi = norm_min[close_index], norm_max[close_index]
    else:
        lo, hi = norm_min[tickers, close_index], norm_max[tickers, close_index]
    return values.astype(np.float64) * (hi - lo) + lo


def shard_sums(pred: np.ndarray, y: np.ndarray, last_close: np.ndarray, tickers: np.ndarray,
               norm_min: np.ndarray, norm_max: np.ndarray, close_index: int) -> np.ndarray:
    """The SUM_FIELDS sums for one batch of windows (all inputs on the normalised scale, shape (n,)).

    Direction: does the forecast move the same way as the truth from the last observed close?
    Windows whose true move is exactly zero (common at minute resolution) have no direction and are
    left out of `direction_count`.
    """
    pred, y, last_close = (np.asarray(a, np.float64).reshape(-1) for a in (pred, y, last_close))
    price = lambda v: to_price(v, tickers, norm_min, norm_max, close_index)  # noqa: E731
    y_price, pred_price, last_price = price(y), price(pred), price(last_close)
    true_move = np.sign(y - last_close)
    moved = true_move != 0
    return np.array([
        y.size,
        np.sum((pred - y) ** 2),
        np.sum((pred_price - y_price) ** 2),
        np.sum(np.abs(pred_price - y_price)),
        np.sum((last_close - y) ** 2),
        np.sum((last_price - y_price) ** 2),
        np.sum(np.sign(pred - last_close)[moved] == true_move[moved]),
        np.sum(moved),
    ], dtype=np.float64)


def metrics_from_sums(sums: np.ndarray) -> dict:
    """The run_end `test` metrics from summed SUM_FIELDS (over all ranks). Unitless except *_price."""
    s = dict(zip(SUM_FIELDS, (float(v) for v in sums)))
    n = s["count"]
    if n == 0:
        raise ValueError("no test windows to score")
    mse = s["se_norm"] / n
    persistence_mse = s["persistence_se_norm"] / n
    return {
        "mse": mse,
        "rmse_price": math.sqrt(s["se_price"] / n),
        "mae_price": s["ae_price"] / n,
        "persistence_mse": persistence_mse,
        "persistence_rmse_price": math.sqrt(s["persistence_se_price"] / n),
        # skill > 0: the model beats "the price stays where it was"; null when persistence is exact.
        "skill": 1.0 - mse / persistence_mse if persistence_mse > 0 else None,
        "direction_accuracy": (s["direction_correct"] / s["direction_count"]
                               if s["direction_count"] else None),
    }
