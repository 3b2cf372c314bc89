"""Preprocessing: window/target definitions, the HDF5 layout (schema 2), splits, representations, and the
learnable signal of the synthetic data. Real files throughout: synthetic CSVs -> pipeline -> HDF5."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from preprocess import windows
from preprocess.pipeline import build_dataset
from preprocess.preprocess_config import PreprocessConfig
from preprocess.synthetic import TINY_UNIVERSE
from stockpredict.common import metrics
from stockpredict.common.errors import UserError
from stockpredict.common.reader import load_split
from stockpredict.common.transform import from_attrs

SPLITS = ("train", "val", "test")


def test_tiny_dataset_has_the_schema_3_layout(tiny_dataset):
    with h5py.File(tiny_dataset, "r") as h5:
        tickers = [t.decode() if isinstance(t, bytes) else t for t in h5["tickers"][()]]
        assert len(tickers) == TINY_UNIVERSE["tickers"] and tickers == sorted(tickers)
        assert h5["tickers"].dtype.kind == "O"
        attrs = h5.attrs
        assert attrs["schema_version"] == 3
        assert list(attrs["features"]) == ["close", "volume"]
        assert attrs["target_feature"] == "close" and attrs["normalization"] == "per_ticker"
        assert attrs["representation"] == "returns"
        transform = json.loads(attrs["transform"])
        assert transform["name"] == "returns" and transform["features"] == ["close", "volume"]
        assert len(transform["volume_mean"]) == len(tickers) and transform["target_std"] > 0
        optimum = json.loads(attrs["optimum"])  # the tiny universe is synthetic: the optimum is known
        assert 0 < optimum["window_skill"] <= optimum["kalman_skill"] < 1
        assert optimum["horizon"] == 5 and optimum["seq_len"] == 60
        assert attrs["seq_len"] == 60 and attrs["horizon"] == 5
        assert attrs["norm_min"].shape == attrs["norm_max"].shape == (len(tickers), 2)
        assert attrs["norm_min"].dtype == np.float64
        config = json.loads(attrs["config"])
        assert config["normalize"] == "per_ticker" and config["representation"] == "returns"
        assert set(json.loads(attrs["input_sha256"])) == {f"{t}.csv" for t in tickers}
        counts = json.loads(attrs["window_counts"])
        for split in SPLITS:
            group = h5[split]
            n = counts[split]
            assert n > 0
            assert "x" not in group  # schema 3: each minute once, windows built by the reader
            series, start = group["series"], group["start"][:]
            assert series.shape[1] == 2 and series.dtype == np.float32 and start.dtype == np.int64
            assert start.shape == (n,) and start.min() >= 0 and start.max() + 60 <= series.shape[0]
            assert series.shape[0] < 2 * n  # each minute stored once (schema 2: 60 n)
            segments = group["segment_start"][:]
            assert segments[0] == 0 and np.all(np.diff(segments) >= 60)
            assert np.array_equal(np.unique(group["segment_ticker"][:]), np.unique(group["ticker"][:]))
            assert group["y"].shape == (n,) and group["y"].dtype == np.float32
            assert group["ticker"].dtype == np.int32 and group["window_end"].dtype == np.int64
            assert group["last_close"].shape == (n,) and group["last_close"].dtype == np.float64
            assert series.chunks is not None and group["start"].compression is not None
            ticker, ends = group["ticker"][:], group["window_end"][:]
            # (ticker, time) order on disk
            assert np.all(np.diff(ticker) >= 0)
            same = ticker[1:] == ticker[:-1]
            assert np.all(np.diff(ends)[same] > 0)
            # returns: the window's last close is the reference, so its input is exactly 0
            assert np.all(load_split(tiny_dataset, split)["x"][:, -1, 0] == 0)
        dropped = json.loads(attrs["dropped_counts"])
        assert dropped["missing_minute"] > 0  # the synthetic data has missing minutes


def test_a_least_squares_predictor_on_the_window_beats_persistence(tiny_dataset):
    """Proves the synthetic data has the learnable short-horizon signal the trainer's tests rely on, and
    that the representation keeps it: scored in price units, against the stored last close."""
    with h5py.File(tiny_dataset, "r") as h5:
        close = list(h5.attrs["features"]).index("close")
        transform = from_attrs(h5.attrs)
        optimum = json.loads(h5.attrs["optimum"])

        def design(split):
            group = load_split(tiny_dataset, split)
            x = group["x"][:, :, close].astype(np.float64)
            return (np.column_stack([x, np.ones(len(x))]), group["y"][:].astype(np.float64),
                    group["ticker"][:], group["last_close"][:])

        a, y, _, _ = design("train")
        weights, *_ = np.linalg.lstsq(a, y, rcond=None)
        a_test, y_test, ticker, last = design("test")
    result = metrics.metrics_from_sums(metrics.shard_sums(a_test @ weights, y_test, last, ticker, transform))
    assert result["skill"] > 0.15
    assert result["skill"] < optimum["kalman_skill"] + 0.1  # nothing beats the optimum by much


def test_windows_targets_and_last_close_match_the_raw_csv(tiny_dataset):
    """Inverted x and y equal the raw closes/volumes at window_end - 59 .. window_end and window_end + 5
    min; last_close is the raw close at window_end."""
    raw = tiny_dataset.parent / "raw"
    with h5py.File(tiny_dataset, "r") as h5:
        tickers = [t.decode() if isinstance(t, bytes) else t for t in h5["tickers"][()]]
        transform = from_attrs(h5.attrs)
        for split in SPLITS:
            group = load_split(tiny_dataset, split)
            rng = np.random.default_rng(0)
            for i in np.sort(rng.choice(group["y"].shape[0], 20, replace=False)):
                t = int(group["ticker"][i])
                bars = pd.read_csv(raw / f"{tickers[t]}.csv")
                bars["epoch"] = pd.to_datetime(bars["timestamp"], utc=True).astype("int64") // 10**9
                # the vendor mess: unsorted rows
                bars = bars.drop_duplicates("epoch").set_index("epoch").sort_index()
                end = int(group["window_end"][i])
                expected_x = bars.loc[end - 59 * 60: end, ["close", "volume"]].to_numpy()
                assert expected_x.shape == (60, 2)  # no missing minute inside a kept window
                last = group["last_close"][i:i + 1]
                assert last[0] == bars.loc[end, "close"]  # exact: float64 of the CSV value
                x = transform.inputs_inverse(group["x"][i:i + 1], last, t)[0]
                np.testing.assert_allclose(x[:, 0], expected_x[:, 0], rtol=1e-9)
                np.testing.assert_allclose(x[:, 1], expected_x[:, 1], rtol=1e-5)
                y = transform.target_inverse(group["y"][i:i + 1], last, t)[0]
                assert y == pytest.approx(bars.loc[end + 5 * 60, "close"], rel=1e-9)
                local = pd.Timestamp(end, unit="s", tz="UTC").tz_convert("America/New_York")
                session_minute = local.hour * 60 + local.minute - (9 * 60 + 30)
                assert 59 <= session_minute <= 384


def test_chronological_split_orders_trading_days_and_fits_statistics_on_train(tiny_dataset):
    with h5py.File(tiny_dataset, "r") as h5:
        days = {}
        for split in SPLITS:
            ends = pd.to_datetime(h5[split]["window_end"][:], unit="s", utc=True)
            ends = ends.tz_convert("America/New_York")
            days[split] = sorted(set(ends.date))
        assert max(days["train"]) < min(days["val"]) and max(days["val"]) < min(days["test"])
        assert (len(days["train"]), len(days["val"]), len(days["test"])) == (7, 2, 1)
        assert json.loads(h5.attrs["trading_days"]) == {"train": 7, "val": 2, "test": 1}
        # returns: the target is standardised over exactly the train windows, not val/test
        y = {split: h5[split]["y"][:].astype(np.float64) for split in SPLITS}
        assert y["train"].mean() == pytest.approx(0, abs=1e-6) and y["train"].std() == pytest.approx(1, 1e-5)
        assert abs(y["test"].mean()) > 1e-4 and abs(y["test"].std() - 1) > 1e-4


def test_the_seed_representation_fits_min_max_on_train(tiny_dataset, tmp_path):
    out = tmp_path / "seed.h5"
    build_dataset(tiny_dataset.parent / "raw", out, PreprocessConfig(representation="seed",
                                                                     normalize="per_ticker"),
                  workers=1, progress=False)
    with h5py.File(out, "r") as h5, h5py.File(tiny_dataset, "r") as returns:
        assert h5.attrs["representation"] == "seed" and json.loads(h5.attrs["transform"])["name"] == "seed"
        assert h5.attrs["optimum"] == returns.attrs["optimum"]  # the optimum is the data's, not the model's
        train = load_split(out, "train")
        x, y, ticker = train["x"], train["y"], train["ticker"]
        for t in np.unique(ticker):
            mine = ticker == t
            # train fills [0, 1] exactly per ticker and feature; val/test may leave it
            assert x[mine].min(axis=(0, 1)) == pytest.approx([0, 0], abs=1e-6)
            assert max(x[mine, :, 0].max(), y[mine].max()) == pytest.approx(1, abs=1e-6)
            assert x[mine, :, 1].max() == pytest.approx(1, abs=1e-6)
        for split in SPLITS:  # same windows, same last close, whatever the representation
            for name in ("ticker", "window_end", "last_close"):
                np.testing.assert_array_equal(h5[split][name][:], returns[split][name][:])


# --- pure window functions ---------------------------------------------------------------------------

def _grid(n_sessions=2, features=("close", "volume")):
    minute = np.arange(390, dtype=np.float64)
    values = np.empty((n_sessions, 390, len(features)))
    for s in range(n_sessions):
        values[s, :, 0] = 100 + 1000 * s + minute
        values[s, :, 1] = 1 + minute
    return values, np.ones((n_sessions, 390), dtype=bool)


def test_window_definitions_on_a_complete_session():
    values, present = _grid()
    assert windows.windows_per_session(60, 5) == 326
    x = windows.window_inputs(values, 60, 5)
    y = windows.window_targets(values[:, :, 0], 60, 5)
    ends = windows.window_end_minutes(60, 5)
    assert x.shape == (2, 326, 60, 2) and y.shape == (2, 326) and ends[0] == 59 and ends[-1] == 384
    for s, j in [(0, 0), (1, 100), (1, 325)]:
        e = ends[j]
        np.testing.assert_array_equal(x[s, j, :, 0], 100 + 1000 * s + np.arange(e - 59, e + 1))
        np.testing.assert_array_equal(x[s, j, :, 1], 1 + np.arange(e - 59, e + 1))
        assert y[s, j] == 100 + 1000 * s + e + 5
    status = windows.window_status(windows.minute_codes(values, present, ("close", "volume")), 60, 5)
    assert (status == 0).all()


@pytest.mark.parametrize("minute", [0, 59, 100, 389])
def test_a_missing_minute_drops_exactly_the_windows_and_targets_touching_it(minute):
    values, present = _grid(1)
    present[0, minute] = False
    values[0, minute] = np.nan
    status = windows.window_status(windows.minute_codes(values, present, ("close", "volume")), 60, 5)[0]
    ends = windows.window_end_minutes(60, 5)
    touching = ((ends - 59 <= minute) & (minute <= ends)) | (ends + 5 == minute)
    np.testing.assert_array_equal(status != 0, touching)
    assert set(np.unique(status[touching])) <= {4}  # reported as missing, not as NaN


def test_drop_reasons_are_reported_by_priority():
    values, present = _grid(1)
    values[0, 100, 1] = -5          # negative volume
    values[0, 200, 0] = 0           # non-positive price
    values[0, 203, 1] = np.nan      # NaN
    codes = windows.minute_codes(values, present, ("close", "volume"))
    assert (codes[0, 100], codes[0, 200], codes[0, 203], codes[0, 0]) == (1, 2, 3, 0)
    status = windows.window_status(codes, 60, 5)[0]
    ends = windows.window_end_minutes(60, 5)
    assert windows.DROP_REASONS[status[ends == 120][0]] == "negative_volume"
    assert windows.DROP_REASONS[status[ends == 201][0]] == "nonpositive_price"
    assert windows.DROP_REASONS[status[ends == 205][0]] == "nan_value"  # covers both 200 and 203


def test_coverage_marks_inputs_and_targets_of_selected_windows():
    mask = np.zeros((1, 326), dtype=bool)
    mask[0, 10] = True  # e = 69: inputs 10..69, target 74
    inputs, targets = windows.coverage(mask, 60, 5)
    np.testing.assert_array_equal(np.flatnonzero(inputs[0]), np.arange(10, 70))
    np.testing.assert_array_equal(np.flatnonzero(targets[0]), [74])


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(UserError, match="valid: features, seq_len"):
        PreprocessConfig.from_mapping({"seq_length": 60})
    with pytest.raises(UserError, match="must include 'close'"):
        PreprocessConfig(features=("volume",))
    with pytest.raises(UserError, match="seq_len \\+ horizon <= 390"):
        PreprocessConfig(seq_len=390)
    with pytest.raises(UserError, match="unknown time zone"):
        PreprocessConfig(tz="Mars/Olympus")
    assert PreprocessConfig.from_mapping({"horizon": 3}).horizon == 3
