"""stockpredict/common/transform.py and stockpredict/common/metrics.py: representations round-trip
prices, and the
price-unit metrics do not depend on the representation (real files from the pipeline)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from preprocess.pipeline import build_dataset
from preprocess.preprocess_config import PreprocessConfig
from stockpredict.common import metrics, transform
from stockpredict.common.reader import load_split
from stockpredict.common.sequences import read_sequences_info

FEATURES = ("close", "volume", "high")


def _windows(n=200, n_tickers=4, seed=0):
    """Raw windows (n, 60, 3) of close, volume, high with prices from 10 to 900, and the close at e+5."""
    rng = np.random.default_rng(seed)
    tickers = rng.integers(0, n_tickers, n)
    level = np.exp(rng.uniform(np.log(10), np.log(900), n_tickers))[tickers]
    close = level[:, None] * np.exp(np.cumsum(rng.normal(0, 1e-3, (n, 65)), axis=1))
    close = np.round(close, 4)  # the CSV's precision
    volume = np.round(rng.lognormal(9, 1, (n, 60)))
    values = np.stack([close[:, :60], volume, close[:, :60] * 1.0003], axis=2)
    return values, close[:, -1], tickers


def _fitted(name, values, target, tickers, n_tickers=4):
    if name == "returns":
        last = values[:, -1, 0]
        volumes = [np.log1p(values[tickers == t, :, 1]).ravel() for t in range(n_tickers)]
        return transform.fit_returns(FEATURES, np.log(target / last), volumes)
    lo = np.array([values[tickers == t].min(axis=(0, 1)) for t in range(n_tickers)])
    hi = np.array([values[tickers == t].max(axis=(0, 1)) for t in range(n_tickers)])
    if name == "seed-global":
        lo, hi = lo.min(axis=0), hi.max(axis=0)
    return transform.SeedTransform(FEATURES, lo, hi)


@pytest.mark.parametrize("name,rtol", [("returns", 5e-9), ("seed-global", 2e-6), ("seed-per-ticker", 2e-6)])
def test_forward_then_inverse_gives_back_the_prices(name, rtol):
    """Through float32 storage: returns is exact to a few 1e-9 (a float32 log return of ~1e-3 keeps 7 digits
    of the move, not of the level); min-max keeps ~7 digits of its [min, max] range."""
    values, target, tickers = _windows()
    t = transform.from_json(transform.to_json(_fitted(name, values, target, tickers)))  # via JSON, as stored
    last = values[:, -1, 0]
    x = t.inputs_forward(values, tickers)
    y = t.target_forward(target, last, tickers)
    assert x.dtype == np.float32 and y.dtype == np.float32 and x.shape == values.shape
    back = t.inputs_inverse(x, last, tickers)
    np.testing.assert_allclose(back[..., [0, 2]], values[..., [0, 2]], rtol=rtol)
    np.testing.assert_allclose(back[..., 1], values[..., 1], rtol=1e-5)
    np.testing.assert_allclose(t.target_inverse(y, last, tickers), target, rtol=rtol)
    # one ticker index for a whole batch gives the same as one index per window
    one = tickers == 2
    np.testing.assert_array_equal(t.inputs_forward(values[one], 2), x[one])
    np.testing.assert_array_equal(t.target_forward(target[one], last[one], 2), y[one])


def test_returns_targets_are_standardised_and_inputs_relative_to_the_last_close():
    values, target, tickers = _windows()
    t = _fitted("returns", values, target, tickers)
    y = t.target_forward(target, values[:, -1, 0], tickers).astype(np.float64)
    assert y.mean() == pytest.approx(0, abs=1e-6) and y.std() == pytest.approx(1, rel=1e-5)
    x = t.inputs_forward(values, tickers)
    assert np.all(x[:, -1, 0] == 0)
    # the level is gone: the same moves at 10x the price give the same inputs
    scaled = values.copy()
    scaled[..., [0, 2]] *= 10
    np.testing.assert_allclose(t.inputs_forward(scaled, tickers)[..., [0, 2]], x[..., [0, 2]], atol=1e-5)


def test_a_ticker_without_train_windows_gets_the_pooled_volume_statistics():
    t = transform.fit_returns(("close", "volume"), np.array([0.001, -0.002, 0.0]),
                              [np.log1p(np.array([100.0, 1000.0])), None])
    assert t.volume_mean[1] == t.volume_mean[0] and t.volume_std[1] == t.volume_std[0]


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(transform.TransformError, match="unknown representation 'levels'"):
        transform.from_params({"name": "levels", "features": ["close"]})
    with pytest.raises(transform.TransformError, match="target_mean"):
        transform.from_params({"name": "returns", "features": ["close"]})
    with pytest.raises(transform.TransformError, match="not JSON"):
        transform.from_json("{")


def test_schema_1_attributes_read_as_the_seed_representation():
    attrs = {"features": np.array([b"close", b"volume"]), "norm_min": np.array([10.0, 0.0]),
             "norm_max": np.array([20.0, 100.0])}
    t = transform.from_attrs(attrs)
    assert t.name == "seed" and t.normalization == "global"
    assert t.target_inverse(np.array([0.5]), None, 0)[0] == 15.0


@pytest.fixture(scope="module")
def both_representations(tmp_path_factory):
    """The same synthetic universe preprocessed as returns and as seed (global min-max, so no window is
    dropped in one and kept in the other)."""
    from preprocess.synthetic import write_universe

    root = tmp_path_factory.mktemp("reps")
    write_universe(root / "raw", tickers=4, days=10, seed=3, price_min=10, price_max=900, phi_spread=0.1,
                   vol_spread=0.5)
    paths = {}
    for name in ("returns", "seed"):
        paths[name] = root / f"{name}.h5"
        build_dataset(root / "raw", paths[name], PreprocessConfig(representation=name), workers=1,
                      progress=False)
    return paths


def test_price_metrics_do_not_depend_on_the_representation(both_representations):
    """One price forecast (persistence plus a partial reversion towards the window mean), expressed in each
    representation, gives the same price metrics and skill; the normalised mse differ."""
    scores = {}
    for name, path in both_representations.items():
        info = read_sequences_info(path)
        group = load_split(path, "test")
        x, y, ticker, last = group["x"], group["y"], group["ticker"], group["last_close"]
        prices = info.transform.inputs_inverse(x, last, ticker)[:, :, info.close_index]
        forecast_price = last + 0.5 * (prices[:, -10:].mean(axis=1) - last)
        pred = info.transform.target_forward(forecast_price, last, ticker)
        half = len(y) // 2  # summed in two shards, as two ranks would
        sums = sum(metrics.shard_sums(pred[s], y[s], last[s], ticker[s], info.transform)
                   for s in (slice(0, half), slice(half, None)))
        scores[name] = metrics.metrics_from_sums(sums)
    returns, seed = scores["returns"], scores["seed"]
    for key in ("rmse_price", "mae_price", "persistence_rmse_price", "skill", "direction_accuracy"):
        assert returns[key] == pytest.approx(seed[key], rel=1e-3, abs=1e-4), key
    assert returns["skill"] > 0.02  # the rule does beat persistence on this data
    assert returns["mse"] / seed["mse"] > 100  # normalised units differ by orders of magnitude


def test_metrics_match_a_direct_computation_in_price_units(both_representations):
    info = read_sequences_info(both_representations["returns"])
    rng = np.random.default_rng(0)
    with h5py.File(both_representations["returns"], "r") as h5:
        y, ticker, last = h5["val"]["y"][:], h5["val"]["ticker"][:], h5["val"]["last_close"][:]
    pred = y + rng.normal(0, 0.5, len(y))
    m = metrics.metrics_from_sums(metrics.shard_sums(pred, y, last, ticker, info.transform))
    t = info.transform
    true_price = last * np.exp(t.target_mean + t.target_std * y.astype(np.float64))
    pred_price = last * np.exp(t.target_mean + t.target_std * pred.astype(np.float64))
    assert m["rmse_price"] == pytest.approx(np.sqrt(np.mean((pred_price - true_price) ** 2)), rel=1e-9)
    assert m["skill"] == pytest.approx(1 - np.sum((pred_price - true_price) ** 2)
                                       / np.sum((last - true_price) ** 2), rel=1e-9)
    moved = np.abs(true_price - last) > 1e-7 * last  # a zero move comes back as ~1e-12 relative
    assert m["direction_accuracy"] == pytest.approx(
        np.mean(np.sign(pred_price - last)[moved] == np.sign(true_price - last)[moved]), abs=1e-9)
    assert metrics.skill_of_optimum(m["skill"], info.optimum) == pytest.approx(
        m["skill"] / info.optimum["kalman_skill"])
    assert metrics.skill_of_optimum(0.1, None) is None
