"""The known optimum of the synthetic universe (preprocess/optimum.py) against brute-force simulation of the
generator itself, and how it travels: optimum.json beside the CSVs -> the HDF5 attribute `optimum`."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from preprocess import optimum
from preprocess.pipeline import build_dataset
from preprocess.preprocess_config import PreprocessConfig
from preprocess.synthetic import (
    OPTIMUM_FILE,
    SyntheticConfig,
    simulate_ticker,
    ticker_process,
    write_universe,
)
from stockpredict.common.sequences import read_sequences_info

HORIZON, SEQ_LEN = 5, 60
SPREAD = {"phi_spread": 0.1, "vol_spread": 0.5, "price_min": 10.0, "price_max": 900.0}


def _simulate(config: SyntheticConfig, n_tickers: int, days: int):
    n = 390 * days
    processes = [ticker_process(config, i) for i in range(n_tickers)]
    log_price = np.array([simulate_ticker(np.random.default_rng([config.seed, i]), n, config,
                                          np.arange(0, n, 390), p)[0] for i, p in enumerate(processes)])
    return processes, log_price


def _kalman_forecasts(processes, log_price):
    """Run the filter over the simulated log prices (brute force: the realised forecasts, not variances)."""
    phi, dvol, fvol, ovol = (np.array([getattr(p, k) for p in processes])
                             for k in ("phi", "deviation_vol", "fair_vol", "overnight_vol"))
    f_hat, d_hat = log_price[:, 0].copy(), np.zeros(len(phi))
    a, b, c = np.ones(len(phi)), np.zeros(len(phi)), dvol ** 2 / (1 - phi ** 2)
    forecasts = np.empty_like(log_price)
    for t in range(log_price.shape[1]):
        d_hat = phi * d_hat
        a, b, c = a + fvol ** 2 + (ovol ** 2 if t % 390 == 0 else 0.0), phi * b, phi ** 2 * c + dvol ** 2
        s = a + 2 * b + c
        innovation = log_price[:, t] - f_hat - d_hat
        f_hat, d_hat = f_hat + (a + b) / s * innovation, d_hat + (b + c) / s * innovation
        a = c = (a * c - b * b) / s
        b = -a
        forecasts[:, t] = f_hat + phi ** HORIZON * d_hat
    return forecasts


def _by_window(array, days):
    """(tickers, days-1, windows) at the window ends, skipping day 1 (the filter's warm-up)."""
    ends = optimum.window_ends(SEQ_LEN, HORIZON)
    grid = array.reshape(array.shape[0], days, 390)[:, 1:]
    return grid[:, :, ends], grid[:, :, ends + HORIZON], grid[:, :, ends[0] - SEQ_LEN + 1: ends[-1] + 1]


@pytest.mark.parametrize("options", [{}, SPREAD], ids=["default", "per-ticker-10-900"])
def test_the_kalman_optimum_matches_a_brute_force_simulation(options):
    days, config = 30, SyntheticConfig(seed=3, **options)
    processes, log_price = _simulate(config, 40, days)
    last, target, _ = (np.exp(a) for a in _by_window(log_price, days))
    forecast = np.exp(_by_window(_kalman_forecasts(processes, log_price), days)[0])
    realised = 1 - np.sum((forecast - target) ** 2) / np.sum((last - target) ** 2)
    weights = np.sum(last ** 2, axis=(1, 2))
    computed = optimum.optimum(processes, weights, HORIZON, SEQ_LEN)
    assert computed["kalman_skill"] == pytest.approx(realised, abs=0.01)
    assert 0.1 < computed["kalman_skill"] < 0.6


def test_the_window_optimum_matches_least_squares_fitted_on_simulated_windows():
    days, config = 60, SyntheticConfig(seed=4, **SPREAD)  # 60 days: the fit of 59 weights costs < 0.005
    processes, log_price = _simulate(config, 12, days)
    ends = optimum.window_ends(SEQ_LEN, HORIZON)
    grid = log_price.reshape(len(processes), days, 390)
    se_model = se_persistence = 0.0
    for i in range(len(processes)):
        windows = np.lib.stride_tricks.sliding_window_view(grid[i], SEQ_LEN, axis=1)[:, :len(ends)]
        last = windows[:, :, -1]
        u = (windows[:, :, :-1] - last[..., None]).reshape(-1, SEQ_LEN - 1)
        z = (grid[i][:, ends + HORIZON] - last).ravel()
        train, test = slice(0, u.shape[0] // 2), slice(u.shape[0] // 2, None)  # fit on half, score the rest
        beta, *_ = np.linalg.lstsq(u[train], z[train], rcond=None)
        price = np.exp(last.ravel()[test])
        se_model += np.sum((price * (np.exp(u[test] @ beta) - np.exp(z[test]))) ** 2)
        se_persistence += np.sum((price * (1 - np.exp(z[test]))) ** 2)
        coefficients, _ = optimum.window_forecast(processes[i:i + 1], HORIZON, SEQ_LEN)
        # the same forecast rule, estimated: the fitted and the computed forecasts agree
        assert np.corrcoef(u[test] @ coefficients[0], u[test] @ beta)[0, 1] > 0.95
    realised = 1 - se_model / se_persistence
    weights = [np.sum(np.exp(2 * grid[i][days // 2:, ends])) for i in range(len(processes))]
    computed = optimum.optimum(processes, np.array(weights), HORIZON, SEQ_LEN)
    assert computed["window_skill"] == pytest.approx(realised, abs=0.01)
    assert computed["window_skill"] <= computed["kalman_skill"]


def test_a_random_walk_has_nothing_to_predict():
    processes = [optimum.TickerProcess(phi=0.8, deviation_vol=0.0, fair_vol=8e-4, overnight_vol=2e-3)] * 2
    best = optimum.optimum(processes, np.ones(2), HORIZON, SEQ_LEN)
    assert best["kalman_skill"] == pytest.approx(0, abs=1e-9)
    assert best["window_skill"] == pytest.approx(0, abs=1e-9)


def test_per_ticker_parameters_and_prices_from_10_to_900(tmp_path):
    write_universe(tmp_path, tickers=12, days=1, seed=0, extended_bars=0, **SPREAD)
    record = json.loads((tmp_path / OPTIMUM_FILE).read_text())
    files = record["files"]
    assert len(files) == 12 and record["horizon"] == HORIZON and record["seq_len"] == SEQ_LEN
    phis = [f["phi"] for f in files.values()]
    vols = [f["deviation_vol"] for f in files.values()]
    assert len(set(phis)) == 12 and 0.7 <= min(phis) and max(phis) <= 0.9
    assert 0.0008 * np.exp(-0.5) <= min(vols) and max(vols) <= 0.0008 * np.exp(0.5)
    prices = np.sqrt([f["mean_square_price"] for f in files.values()])
    assert 9 < prices.min() and prices.max() < 950 and prices.max() / prices.min() > 5
    # without spreads every ticker has the configured parameters exactly
    default = SyntheticConfig()
    assert {ticker_process(default, i) for i in range(5)} == {optimum.TickerProcess(
        default.phi, default.deviation_vol, default.fair_vol, default.overnight_vol)}


def test_preprocessing_carries_the_optimum_and_says_unknown_otherwise(tmp_path):
    raw = tmp_path / "raw"
    write_universe(raw, tickers=3, days=10, seed=5)
    known = tmp_path / "known.h5"
    summary = build_dataset(raw, known, PreprocessConfig(horizon=10), workers=1, progress=False)
    info = read_sequences_info(known)
    assert info.optimum["horizon"] == 10  # recomputed for the file's horizon, not optimum.json's 5
    record = json.loads((raw / OPTIMUM_FILE).read_text())
    assert record["horizon"] == 5 and info.optimum["kalman_skill"] != record["kalman_skill"]
    assert summary.optimum == info.optimum and "test windows" in info.optimum["weights"]

    (raw / "AAPL.csv").write_text((raw / "AAPL.csv").read_text() + "\n")  # not the generator's file now
    changed = tmp_path / "changed.h5"
    build_dataset(raw, changed, PreprocessConfig(), workers=1, progress=False)
    (raw / OPTIMUM_FILE).unlink()  # real data: no optimum.json
    real = tmp_path / "real.h5"
    build_dataset(raw, real, PreprocessConfig(), workers=1, progress=False)
    for path in (changed, real):
        with h5py.File(path, "r") as h5:
            assert h5.attrs["optimum"] == "unknown"
        assert read_sequences_info(path).optimum is None
