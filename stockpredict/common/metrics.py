"""Honest test metrics: the model against the persistence forecast, in price units.

Every forecast is converted back to a price with the file's transform (stockpredict/common/transform.py)
before it is scored, so the price-unit metrics (and skill) mean the same whatever the representation.
Everything is computed from sums (squared errors, absolute errors, counts), so each rank can score its
own shard and one allreduce of the sums gives the exact metrics of the whole split.
"""

from __future__ import annotations

import math

import numpy as np

from stockpredict.common.transform import Transform

# Order of the per-shard sums; one float64 vector, so ranks combine them with a single Sum allreduce.
SUM_FIELDS = (
    "count", "se_norm", "se_price", "ae_price", "persistence_se_norm", "persistence_se_price",
    "direction_correct", "direction_count",
)


def shard_sums(pred: np.ndarray, y: np.ndarray, last_close: np.ndarray, tickers: np.ndarray,
               transform: Transform) -> np.ndarray:
    """The SUM_FIELDS sums for one batch of windows.

    pred, y: model output and target in the representation's units, shape (n,) or (n, 1);
    last_close: close at the window's last minute in price units (the persistence forecast);
    tickers: ticker index per window; transform: the file's (SequencesInfo.transform).
    *_norm sums are in the representation's units, where persistence is the target_forward of the last
    close; *_price sums compare prices. Direction: does the forecast move the same way as the truth
    from the last close? Windows whose true move is exactly zero (common at minute resolution) have no
    direction and are left out of `direction_count`. The transforms are increasing in price, so signs
    are taken in the representation's units, where a zero move is exactly zero.
    """
    pred, y = (np.asarray(a, np.float64).reshape(-1) for a in (pred, y))
    last_price = np.asarray(last_close, np.float64).reshape(-1)
    tickers = np.asarray(tickers).reshape(-1)
    persistence = transform.target_forward(last_price, last_price, tickers).astype(np.float64)
    y_price = transform.target_inverse(y, last_price, tickers)
    pred_price = transform.target_inverse(pred, last_price, tickers)
    true_move = np.sign(y - persistence)
    moved = true_move != 0
    return np.array([
        y.size,
        np.sum((pred - y) ** 2),
        np.sum((pred_price - y_price) ** 2),
        np.sum(np.abs(pred_price - y_price)),
        np.sum((persistence - y) ** 2),
        np.sum((last_price - y_price) ** 2),
        np.sum(np.sign(pred - persistence)[moved] == true_move[moved]),
        np.sum(moved),
    ], dtype=np.float64)


def metrics_from_sums(sums: np.ndarray) -> dict:
    """The run_end `test` metrics from summed SUM_FIELDS (over all ranks).

    mse, persistence_mse: in the representation's (normalised) units; *_price: price units;
    skill = 1 - MSE_model / MSE_persistence in price units (> 0: better than "the price stays").
    """
    s = dict(zip(SUM_FIELDS, (float(v) for v in sums)))
    n = s["count"]
    if n == 0:
        raise ValueError("no test windows to score")
    persistence_se_price = s["persistence_se_price"]
    return {
        "mse": s["se_norm"] / n,
        "rmse_price": math.sqrt(s["se_price"] / n),
        "mae_price": s["ae_price"] / n,
        "persistence_mse": s["persistence_se_norm"] / n,
        "persistence_rmse_price": math.sqrt(persistence_se_price / n),
        # null when persistence is exact (a constant price)
        "skill": 1.0 - s["se_price"] / persistence_se_price if persistence_se_price > 0 else None,
        "direction_accuracy": (s["direction_correct"] / s["direction_count"]
                               if s["direction_count"] else None),
    }


def skill_of_optimum(skill: float | None, optimum: dict | None) -> float | None:
    """skill / the Kalman optimum's skill (1.0 = the best achievable); None when either is unknown."""
    if skill is None or not optimum or not optimum.get("kalman_skill"):
        return None
    return skill / optimum["kalman_skill"]
