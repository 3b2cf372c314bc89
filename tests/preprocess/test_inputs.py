"""Preprocessing on messy and bad input: every case of the input contract, on real CSV and HDF5 files."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from preprocess.pipeline import build_dataset
from preprocess.preprocess_config import PreprocessConfig
from preprocess.synthetic import write_universe
from stockpredict.common.errors import UserError
from stockpredict.common.reader import load_split
from stockpredict.common.transform import from_attrs

CLEAN = dict(missing_frac=0.0, bad_row_frac=0.0, duplicate_frac=0.0, unsorted_frac=0.0)


@pytest.fixture(scope="module")
def clean_universe(tmp_path_factory):
    """3 tickers x 3 days without any vendor mess (but with pre/post-market bars), UTC timestamps."""
    raw = tmp_path_factory.mktemp("clean") / "raw"
    write_universe(raw, tickers=3, days=3, seed=1, **CLEAN)
    return raw


def _copy(raw, tmp_path, name="raw"):
    target = tmp_path / name
    shutil.copytree(raw, target)
    return target


def _build(raw, tmp_path, name="out.h5", workers=1, **config):
    out = tmp_path / name
    summary = build_dataset(raw, out, PreprocessConfig(**config), workers=workers, progress=False)
    return out, summary


def _datasets(path):
    with h5py.File(path, "r") as h5:
        data = {f"{s}/{d}": v for s in ("train", "val", "test") for d, v in load_split(path, s).items()
                if d in ("x", "y", "ticker", "window_end")}
        data["tickers"] = [t.decode() if isinstance(t, bytes) else t for t in h5["tickers"][()]]
        return data


def _assert_same_datasets(a, b):
    da, db = _datasets(a), _datasets(b)
    assert da.keys() == db.keys()
    for key in da:
        np.testing.assert_array_equal(da[key], db[key], err_msg=key)


def test_a_clean_universe_keeps_every_window_and_drops_extended_hours(clean_universe, tmp_path):
    out, summary = _build(clean_universe, tmp_path)
    assert sum(summary.window_counts.values()) == 3 * 3 * 326
    assert summary.row_counts["out_of_session_rows"] == 3 * 3 * 6  # 6 pre/post bars per ticker-day
    assert not any(summary.dropped_counts.values()) and not summary.skipped_tickers


@pytest.mark.parametrize("style", ["offset", "naive"])
def test_offset_and_naive_timestamps_give_the_same_windows_as_utc(clean_universe, tmp_path, style):
    raw = tmp_path / style
    write_universe(raw, tickers=3, days=3, seed=1, timestamps=style, **CLEAN)
    first = pd.read_csv(raw / "AAPL.csv", nrows=1)["timestamp"][0]
    assert first.endswith("-05:00") if style == "offset" else first[-3:-2] == ":" and "+" not in first
    reference, _ = _build(clean_universe, tmp_path, "utc.h5")
    out, _ = _build(raw, tmp_path, f"{style}.h5")
    _assert_same_datasets(reference, out)


def test_naive_timestamps_are_read_in_the_tz_option(tmp_path):
    raw = tmp_path / "naive"
    write_universe(raw, tickers=1, days=2, seed=1, timestamps="naive", **CLEAN)
    _, summary = _build(raw, tmp_path, "ny.h5")
    assert sum(summary.window_counts[s] for s in ("train", "val", "test")) == 2 * 326
    # Read as UTC, 09:30 local becomes 04:30 or 05:30 New York time: most of the session falls outside it.
    _, shifted = _build(raw, tmp_path, "utc.h5", tz="UTC")
    assert sum(shifted.window_counts.values()) < 2 * 326
    assert shifted.row_counts["out_of_session_rows"] > 2 * 6


def test_column_aliases_are_matched_case_insensitively(clean_universe, tmp_path):
    raw = _copy(clean_universe, tmp_path)
    for path, names in ((raw / "AAPL.csv", {"timestamp": "DateTime", "close": "Close", "volume": "VOLUME"}),
                        (raw / "MSFT.csv", {"timestamp": "time", "close": "Last", "volume": "Vol"})):
        pd.read_csv(path).rename(columns=names).to_csv(path, index=False)
    reference, _ = _build(clean_universe, tmp_path, "ref.h5")
    out, summary = _build(raw, tmp_path)
    assert not summary.skipped_tickers
    _assert_same_datasets(reference, out)


def test_unsorted_and_exactly_duplicated_rows_are_sorted_and_dropped(clean_universe, tmp_path):
    raw = _copy(clean_universe, tmp_path)
    path = raw / "AAPL.csv"
    bars = pd.read_csv(path)
    messy = pd.concat([bars, bars.iloc[100:117]]).sample(frac=1.0, random_state=0)
    messy.to_csv(path, index=False)
    reference, _ = _build(clean_universe, tmp_path, "ref.h5")
    out, summary = _build(raw, tmp_path)
    _assert_same_datasets(reference, out)
    assert summary.row_counts["duplicate_rows"] == 17
    assert summary.row_counts["unsorted_files"] == 1


def test_missing_minutes_nan_nonpositive_and_negative_volume_drop_windows_with_reasons(
        clean_universe, tmp_path):
    raw = _copy(clean_universe, tmp_path)
    path = raw / "AAPL.csv"
    bars = pd.read_csv(path)
    # Rows of day 1 (of 3): row 3 is 09:30 after the 6 pre/post bars sorted by time (all pre-market).
    session = bars[pd.to_datetime(bars["timestamp"], utc=True).dt.tz_convert("America/New_York")
                   .dt.strftime("%H:%M").between("09:30", "15:59")]
    first_day = session.index[:390]
    bars.loc[first_day[200], "close"] = np.nan
    bars.loc[first_day[300], "volume"] = -1
    bars = bars.drop(index=[first_day[100]])
    bars.loc[session.index[390 + 150], "close"] = 0.0       # day 2
    bars.to_csv(path, index=False)
    _, summary = _build(raw, tmp_path)
    touching = 60 + 1  # windows containing the minute, plus the one whose target it is
    assert summary.dropped_counts["missing_minute"] == touching
    assert summary.dropped_counts["nonpositive_price"] == touching
    assert summary.dropped_counts["nan_value"] == touching
    assert summary.dropped_counts["negative_volume"] == touching  # minutes 100/200/300 share no window
    assert sum(summary.window_counts.values()) == 9 * 326 - sum(summary.dropped_counts.values())


@pytest.mark.parametrize("gap,k,kept", [(2, 2, True), (2, 1, False), (3, 2, False)])
def test_fill_gaps_forward_fills_only_gaps_up_to_k_minutes(clean_universe, tmp_path, gap, k, kept):
    raw = _copy(clean_universe, tmp_path)
    path = raw / "AAPL.csv"
    bars = pd.read_csv(path)
    local = pd.to_datetime(bars["timestamp"], utc=True).dt.tz_convert("America/New_York").dt.strftime("%H:%M")
    gap_rows = bars.index[local.between("12:00", "15:59")][:gap]
    previous = bars.loc[gap_rows[0] - 1]
    bars.drop(index=gap_rows).to_csv(path, index=False)
    out, summary = _build(raw, tmp_path, fill_gaps=k)
    assert summary.row_counts["filled_minutes"] == (gap if kept else 0)
    # windows containing a gap minute (59 + gap) plus those whose target is one (gap)
    assert sum(summary.window_counts.values()) == (9 * 326 if kept else 9 * 326 - (59 + 2 * gap))
    if kept:  # the filled minutes repeat the previous close with zero volume
        with h5py.File(out, "r") as h5:
            transform = from_attrs(h5.attrs)
            ticker = h5["train"]["ticker"][:]
            ends = h5["train"]["window_end"][:]
            gap_end = pd.Timestamp(bars.loc[gap_rows[-1], "timestamp"]).value // 10**9
            i = np.flatnonzero((ticker == 0) & (ends == gap_end))[0]
            train = load_split(out, "train")
            x = transform.inputs_inverse(train["x"][i:i + 1], train["last_close"][i:i + 1], 0)
            x = x[0, -gap:]
        np.testing.assert_allclose(x[:, 0], previous["close"], rtol=1e-6)
        np.testing.assert_allclose(x[:, 1], 0.0, atol=1e-3)


def _skip_reason(raw, tmp_path, name):
    _, summary = _build(raw, tmp_path)
    assert summary.tickers == 2
    return summary.skipped_tickers[name]


def _rewrite(raw, name, edit):
    path = raw / name
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(lines)))


@pytest.mark.parametrize("edit,pattern", [
    (lambda lines: ["when,price,size\n"] + lines[1:], r"AAPL.csv: no usable timestamp/close/volume column"),
    (lambda lines: lines[:9] + ["yesterday noon" + lines[9][25:]] + lines[10:],
     r"AAPL.csv row 10: unparsable timestamp 'yesterday noon'"),
    (lambda lines: lines[:11] + [lines[11].rsplit(",", 1)[0] + ",lots\n"] + lines[12:],
     r"AAPL.csv row 12: non-numeric volume 'lots'"),
    (lambda lines: lines[:200] + [lines[200].rsplit(",", 1)[0] + ",999999\n"] + lines[200:],
     r"AAPL.csv rows 20[01] and 20[12]: conflicting bars"),
    (lambda lines: [], r"AAPL.csv: empty file"),
    (lambda lines: lines[:1], r"AAPL.csv: empty file \(header only\)"),
    (lambda lines: lines[:50],
     r"AAPL.csv: only \d+ regular-session minutes, fewer than one window \(seq_len \+ horizon = 65\)"),
    (lambda lines: lines[:20] + [lines[20].replace("+00:00", "")] + lines[21:],
     r"AAPL.csv row 21: mixes timestamps with and without a UTC offset"),
    (lambda lines: ["\x00\x01\x02garbage\n"] * 3, r"AAPL.csv"),
])
def test_a_bad_ticker_file_is_skipped_with_a_reason_naming_file_and_row(clean_universe, tmp_path, edit,
                                                                         pattern):
    raw = _copy(clean_universe, tmp_path)
    _rewrite(raw, "AAPL.csv", edit)
    out, summary = _build(raw, tmp_path)
    assert summary.tickers == 2 and list(summary.skipped_tickers) == ["AAPL.csv"]
    import re

    assert re.search(pattern, summary.skipped_tickers["AAPL.csv"]), summary.skipped_tickers
    with h5py.File(out, "r") as h5:
        assert "AAPL" not in [t.decode() if isinstance(t, bytes) else t for t in h5["tickers"][()]]
        assert json.loads(h5.attrs["skipped_tickers"]) == summary.skipped_tickers
        assert "AAPL.csv" in json.loads(h5.attrs["input_sha256"])


def test_one_long_file_with_a_ticker_column_equals_per_ticker_files(clean_universe, tmp_path):
    frames = [pd.read_csv(p).assign(Symbol=p.stem) for p in sorted(clean_universe.glob("*.csv"))]
    long_file = tmp_path / "all.csv"
    pd.concat(frames).to_csv(long_file, index=False)
    reference, _ = _build(clean_universe, tmp_path, "ref.h5")
    out, summary = _build(long_file, tmp_path)
    _assert_same_datasets(reference, out)
    with h5py.File(out, "r") as h5:
        assert list(json.loads(h5.attrs["input_sha256"])) == ["all.csv"]


@pytest.mark.parametrize("setup,pattern", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: d, "has no <TICKER>.csv files"),
    (lambda d: (d / "a.csv").write_text("x,y\n1,2\n") and d, "no usable ticker"),
])
def test_a_meaningless_run_stops_with_a_user_error_and_no_output(tmp_path, setup, pattern):
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(UserError, match=pattern):
        build_dataset(setup(raw), tmp_path / "out.h5", PreprocessConfig(), workers=1, progress=False)
    assert not (tmp_path / "out.h5").exists()
    assert not list(tmp_path.glob(".out.h5*"))


def test_output_path_problems_are_user_errors(clean_universe, tmp_path):
    existing = tmp_path / "out.h5"
    existing.write_bytes(b"keep me")
    with pytest.raises(UserError, match="already exists; pass --force"):
        build_dataset(clean_universe, existing, workers=1)
    assert existing.read_bytes() == b"keep me"
    build_dataset(clean_universe, existing, workers=1, force=True)
    assert h5py.is_hdf5(existing)
    with pytest.raises(UserError, match="is a directory"):
        build_dataset(clean_universe, tmp_path, workers=1)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(UserError, match="cannot create output directory"):
        build_dataset(clean_universe, not_a_dir / "sub" / "out.h5", workers=1)


def test_random_split_mixes_windows_of_a_session_and_is_seeded(clean_universe, tmp_path):
    out, summary = _build(clean_universe, tmp_path, split="random")
    again, _ = _build(clean_universe, tmp_path, "again.h5", split="random")
    _assert_same_datasets(out, again)
    total = sum(summary.window_counts.values())
    assert total == 9 * 326 and abs(summary.window_counts["train"] / total - 0.7) < 0.05
    with h5py.File(out, "r") as h5:
        days = {s: set(pd.to_datetime(h5[s]["window_end"][:], unit="s").date) for s in ("train", "test")}
    assert days["train"] & days["test"]  # the leak the warning talks about


def test_global_normalisation_stores_one_min_max_per_feature(clean_universe, tmp_path):
    out, _ = _build(clean_universe, tmp_path, representation="seed", normalize="global",
                    features=("close", "volume", "high"))
    with h5py.File(out, "r") as h5:
        assert h5.attrs["norm_min"].shape == (3,)
        assert list(h5.attrs["features"]) == ["close", "volume", "high"]
        x = load_split(out, "train")["x"]
        assert x.shape[2] == 3
        np.testing.assert_allclose(x.min(axis=(0, 1)), 0, atol=1e-6)
        np.testing.assert_allclose(x.max(axis=(0, 1)), 1, atol=1e-6)


def test_output_is_identical_whatever_the_worker_count(tmp_path):
    raw = tmp_path / "raw"
    write_universe(raw, tickers=6, days=3, seed=2)
    one, _ = _build(raw, tmp_path, "one.h5", workers=1)
    two, _ = _build(raw, tmp_path, "two.h5", workers=2)
    assert one.read_bytes() == two.read_bytes()
