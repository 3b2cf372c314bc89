"""Vendor layouts and time-zone safety: each test writes a small file in one layout and checks that it gives
the same windows as the project's own CSV (or the expected warning), on real files and real HDF5 output."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from preprocess import timestamps
from preprocess.pipeline import build_dataset
from preprocess.preprocess_config import PreprocessConfig
from preprocess.synthetic import write_universe
from stockpredict.common.errors import UserError
from stockpredict.common.reader import load_split

REPO = Path(__file__).resolve().parents[1]
CLEAN = dict(missing_frac=0.0, bad_row_frac=0.0, duplicate_frac=0.0, unsorted_frac=0.0)
NY = "America/New_York"
WINDOWS_PER_SESSION = 326  # 390 - 60 - 5 + 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """3 tickers x 3 days of regular-session bars (no extended hours, no mess), UTC timestamps, and the
    frames and HDF5 file they give."""
    root = tmp_path_factory.mktemp("formats")
    raw = root / "raw"
    write_universe(raw, tickers=3, days=3, seed=1, extended_bars=0, **CLEAN)
    frames = {p.stem: pd.read_csv(p) for p in sorted(raw.glob("*.csv"))}
    out = root / "reference.h5"
    build_dataset(raw, out, PreprocessConfig(), workers=1, progress=False)
    return frames, out


def _build(raw, tmp_path, name="out.h5", **config):
    out = tmp_path / name
    summary = build_dataset(raw, out, PreprocessConfig(**config), workers=1, progress=False)
    return out, summary


def _datasets(path):
    with h5py.File(path, "r") as h5:
        data = {f"{s}/{d}": v for s in ("train", "val", "test") for d, v in load_split(path, s).items()
                if d in ("x", "y", "ticker", "window_end")}
        data["tickers"] = [t.decode() if isinstance(t, bytes) else t for t in h5["tickers"][()]]
        return data


def _assert_same_windows(a, b):
    da, db = _datasets(a), _datasets(b)
    for key in da:
        np.testing.assert_array_equal(da[key], db[key], err_msg=key)


def _attrs(path):
    with h5py.File(path, "r") as h5:
        return json.loads(h5.attrs["input_format"]), json.loads(h5.attrs["warnings"])


def _rows(summary):
    return dict(summary.input_rows)


def _local(frame):
    return pd.to_datetime(frame["timestamp"], utc=True).dt.tz_convert(NY)


def _write_each(tmp_path, frames, transform, suffix=".csv", name="raw"):
    raw = tmp_path / name
    raw.mkdir()
    for ticker, frame in frames.items():
        out = transform(frame.copy())
        path = raw / f"{ticker}{suffix}"
        if suffix == ".parquet":
            out.to_parquet(path, index=False)
        else:
            out.to_csv(path, index=False)
    return raw


@pytest.mark.parametrize("date_form,time_form,described", [
    ("%Y-%m-%d", "%H:%M", "HH:MM[:SS] text"),
    ("%m/%d/%Y", "%H:%M:%S", "HH:MM[:SS] text"),
    ("%Y%m%d", "%H%M", "HHMM integers"),
])
def test_separate_date_and_time_columns_are_joined(reference, tmp_path, date_form, time_form, described):
    frames, expected = reference

    def split(frame):
        local = _local(frame)
        frame.insert(0, "date", local.dt.strftime(date_form))
        frame.insert(1, "ToD", local.dt.strftime(time_form))
        return frame.drop(columns="timestamp")

    raw = _write_each(tmp_path, frames, split)
    assert pd.read_csv(next(raw.glob("*.csv"))).dtypes["ToD"].kind == ("i" if "HHMM" in described else "O")
    out, summary = _build(raw, tmp_path)
    _assert_same_windows(expected, out)
    assert _rows(summary)["time column"] == f"date + ToD: date and time of day ({described})"
    assert _rows(summary)["time zone"] == NY
    assert not summary.warnings


def test_a_date_column_without_times_is_skipped_with_the_reason(reference, tmp_path):
    frames, _ = reference
    raw = _write_each(tmp_path, frames, lambda f: f.assign(timestamp=_local(f).dt.strftime("%Y-%m-%d"))
                      .rename(columns={"timestamp": "date"}))
    with pytest.raises(UserError, match="no usable ticker"):
        _build(raw, tmp_path)
    # the reason names the column and the fix
    from preprocess.inputs import load_universe, run_serially

    _, skipped, _ = load_universe(raw, PreprocessConfig(), run_serially)
    assert "all 1170 bars are at 00:00 (date holds no time of day)" in skipped["AAPL.csv"]
    assert "time, tod" in skipped["AAPL.csv"]


def test_end_labelled_bars_warn_and_read_right_with_bar_label_end(reference, tmp_path):
    frames, expected = reference
    def shifted(frame):
        later = pd.to_datetime(frame["timestamp"], utc=True) + pd.Timedelta(minutes=1)
        return frame.assign(timestamp=later.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"))

    raw = _write_each(tmp_path, frames, shifted)
    out, summary = _build(raw, tmp_path, "as_start.h5")
    # read as start labels, every session loses its 09:30 bar and the 16:00 bar falls outside
    assert sum(summary.window_counts.values()) == 3 * 3 * (WINDOWS_PER_SESSION - 1)
    assert len(summary.warnings) == 1
    assert "3 of 3 tickers have bars stamped 16:00 and none at 09:30" in summary.warnings[0]
    assert summary.warnings[0].endswith("pass --bar-label end")
    assert _attrs(out)[1] == summary.warnings

    fixed, summary = _build(raw, tmp_path, "as_end.h5", bar_label="end")
    _assert_same_windows(expected, fixed)
    assert not summary.warnings and _rows(summary)["bar labels"].startswith("minute end")
    assert _attrs(fixed)[0]["bar_label"] == "end"


@pytest.mark.parametrize("unit,factor,word", [("s", 1, "seconds"), ("ms", 10**3, "milliseconds"),
                                              ("ns", 10**9, "nanoseconds")])
def test_epoch_times_are_detected_by_magnitude(reference, tmp_path, unit, factor, word):
    frames, expected = reference
    def to_epoch(frame):
        seconds = pd.to_datetime(frame["timestamp"], utc=True).astype("int64") // 10**9
        return frame.assign(timestamp=seconds * factor).rename(columns={"timestamp": "ts"})

    raw = _write_each(tmp_path, frames, to_epoch)
    out, summary = _build(raw, tmp_path)
    _assert_same_windows(expected, out)
    assert _rows(summary)["time column"] == f"ts: Unix epoch {word}"
    assert _rows(summary)["time zone"] == "UTC (epoch times)"
    assert timestamps.epoch_unit(np.array([1709562600 * factor]))[0] == unit


def test_gzip_csv_reads_like_plain_csv(reference, tmp_path):
    frames, expected = reference
    raw = tmp_path / "gz"
    raw.mkdir()
    for ticker, frame in frames.items():
        with gzip.open(raw / f"{ticker}.csv.gz", "wt") as handle:
            frame.to_csv(handle, index=False)
    out, summary = _build(raw, tmp_path)
    _assert_same_windows(expected, out)
    with h5py.File(out, "r") as h5:
        assert sorted(json.loads(h5.attrs["input_sha256"])) == sorted(f"{t}.csv.gz" for t in frames)


def test_parquet_with_a_datetime_column_reads_like_csv(reference, tmp_path):
    frames, expected = reference
    raw = _write_each(tmp_path, frames,
                      lambda f: f.assign(timestamp=pd.to_datetime(f["timestamp"], utc=True)),
                      suffix=".parquet")
    out, summary = _build(raw, tmp_path)
    _assert_same_windows(expected, out)
    assert _rows(summary)["time column"] == "timestamp: datetime with time zone UTC"


def test_a_bad_parquet_row_is_named_by_its_row_number(reference, tmp_path):
    frames, _ = reference
    raw = _write_each(tmp_path, frames, lambda f: f, suffix=".parquet")
    table = pd.read_parquet(raw / "AAPL.parquet").astype({"volume": str})
    table.loc[9, "volume"] = "lots"
    table.to_parquet(raw / "AAPL.parquet", index=False)
    _, summary = _build(raw, tmp_path)
    assert summary.skipped_tickers == {"AAPL.parquet": "AAPL.parquet row 10: non-numeric volume 'lots'"}


def _flat_files(frames, directory, kind="csv.gz"):
    """Per-day vendor flat files: every ticker of one day in one file, nanosecond `window_start`."""
    directory.mkdir()
    rows = pd.concat([f.assign(ticker=t) for t, f in frames.items()])
    start = pd.to_datetime(rows["timestamp"], utc=True)
    rows = pd.DataFrame({"ticker": rows["ticker"], "volume": rows["volume"], "open": rows["open"],
                         "close": rows["close"], "high": rows["high"], "low": rows["low"],
                         "window_start": start.astype("int64"), "transactions": 7})
    for day, part in rows.groupby(start.dt.tz_convert(NY).dt.strftime("%Y-%m-%d").to_numpy()):
        part = part.sample(frac=1.0, random_state=0)  # vendors sort by ticker, not time: any order works
        if kind == "parquet":
            part.to_parquet(directory / f"{day}.parquet", index=False)
        else:
            part.to_csv(directory / f"{day}.csv.gz", index=False)
    return directory


@pytest.mark.parametrize("kind", ["csv.gz", "parquet"])
def test_per_day_multi_ticker_flat_files_give_the_same_windows(reference, tmp_path, kind):
    frames, expected = reference
    raw = _flat_files(frames, tmp_path / "flat", kind)
    assert len(list(raw.iterdir())) == 3
    out, summary = _build(raw, tmp_path)
    _assert_same_windows(expected, out)
    assert _rows(summary)["time column"] == "window_start: Unix epoch nanoseconds"
    assert summary.row_counts.get("unsorted_files") == 3
    with h5py.File(out, "r") as h5:
        assert len(json.loads(h5.attrs["input_sha256"])) == 3


def test_a_conflict_in_flat_files_names_the_file_and_row(reference, tmp_path):
    frames, _ = reference
    raw = _flat_files(frames, tmp_path / "flat")
    day = sorted(raw.iterdir())[1]
    part = pd.read_csv(day)
    extra = part[part["ticker"] == "MSFT"].iloc[[0]].assign(close=999.0)
    pd.concat([part, extra]).to_csv(day, index=False)
    _, summary = _build(raw, tmp_path)
    reason = summary.skipped_tickers["MSFT (3 files)"]
    line = len(part) + 2
    assert reason.startswith(f"MSFT (3 files): {day.name} rows ") and reason.endswith(
        f" and {line}: conflicting bars for the same minute"), reason


def _naive_utc_with_extended_hours(frames, directory):
    """The issue's case: naive UTC stamps, pre-market from 04:00 and post-market to 19:59 New York time,
    thin volume outside the session (the synthetic session volume is U-shaped, heaviest at open/close)."""
    directory.mkdir()
    for ticker, frame in frames.items():
        stamps = pd.to_datetime(frame["timestamp"], utc=True)
        days = stamps.dt.tz_convert(NY).dt.normalize().unique()
        extra = []
        for day in days:
            local = day + pd.to_timedelta(np.r_[240:570, 960:1200], unit="min")
            extra.append(pd.DataFrame({"timestamp": local.tz_convert("UTC"), "open": 100.0, "high": 100.0,
                                       "low": 100.0, "close": 100.0, "volume": 5}))
        both = pd.concat([frame.assign(timestamp=stamps)] + extra).sort_values("timestamp")
        both["timestamp"] = both["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")  # naive: the zone is lost
        both.to_csv(directory / f"{ticker}.csv", index=False)
    return directory


def test_naive_utc_with_extended_hours_warns_and_names_tz_utc(reference, tmp_path):
    frames, expected = reference
    raw = _naive_utc_with_extended_hours(frames, tmp_path / "naive_utc")
    out, summary = _build(raw, tmp_path, "as_ny.h5")
    # read in New York time, the "session" is 04:30-10:59 New York time (EST): fully covered, so only
    # the volume peak (the real open, at 14:30 as read) gives it away
    assert _rows(summary)["regular-session minutes"].startswith("100.0% present")
    assert len(summary.warnings) == 1
    warning = summary.warnings[0]
    assert "the heaviest trading is at 14:30, not near the open" in warning
    assert "read in UTC instead: 100% present, peak at " in warning and warning.endswith("pass --tz UTC")
    peak = warning.split("peak at ")[1][:5]
    assert peak < "10:00" or peak >= "15:30"  # near the open or the close once read right
    assert "\n" not in warning
    assert _attrs(out)[1] == [warning]

    fixed, summary = _build(raw, tmp_path, "as_utc.h5", tz="UTC")
    assert not summary.warnings
    _assert_same_windows(expected, fixed)
    assert _rows(summary)["time zone"] == "UTC"


def test_naive_utc_regular_hours_only_warns_about_coverage(reference, tmp_path):
    frames, _ = reference
    raw = _write_each(tmp_path, frames, lambda f: f.assign(
        timestamp=pd.to_datetime(f["timestamp"], utc=True).dt.strftime("%Y-%m-%d %H:%M")))
    _, summary = _build(raw, tmp_path)
    # 14:30-20:59 UTC read as New York time: only 14:30-15:59 fall in the session (90 of 390 minutes)
    assert _rows(summary)["regular-session minutes"].startswith("23.1% present")
    # one warning: bars at 16:00 and none at 09:30 are explained by the zone, not by end labels
    assert len(summary.warnings) == 1
    assert "only 23% of regular-session minutes are present" in summary.warnings[0]
    assert summary.warnings[0].endswith("pass --tz UTC")


def test_times_with_offsets_never_suggest_tz(reference, tmp_path):
    frames, _ = reference
    # a real shift baked into offset-carrying stamps (the vendor's clock was 5 hours off): --tz cannot fix it
    raw = _write_each(tmp_path, frames, lambda f: f.assign(timestamp=(pd.to_datetime(f["timestamp"], utc=True)
                                                                      - pd.Timedelta(hours=5))
                                                           .dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")))
    _, summary = _build(raw, tmp_path)
    assert len(summary.warnings) == 1
    assert "--tz does not apply" in summary.warnings[0] and "pass --tz" not in summary.warnings[0]


def test_the_cli_prints_how_the_input_was_read_and_warns_once(reference, tmp_path):
    frames, _ = reference
    raw = _naive_utc_with_extended_hours(frames, tmp_path / "naive_utc")
    out = tmp_path / "seq.h5"
    proc = subprocess.run([sys.executable, "-m", "preprocess", "--raw", str(raw), "--out", str(out),
                           "--workers", "2"], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "pass --tz UTC" in line]) == 1
    for row in ("time column", "timestamp: date-time text without UTC offset", "time zone", NY,
                "bar labels", "minute start", "regular-session minutes"):
        assert row in proc.stdout


@pytest.mark.parametrize("layout,aware", [
    ("%Y-%m-%dT%H:%M:%S+00:00", True), ("%Y-%m-%d %H:%M:%S", False), ("%Y-%m-%dT%H:%MZ", True),
    ("%Y-%m-%dT%H:%M:%SZ", True), ("%Y-%m-%d %H:%M", False), ("%Y-%m-%dT%H:%M:%S%z", True),
    ("%Y-%m-%dT%H:%M%z", True), ("colon-offset", True),
])
def test_the_fixed_layout_fast_path_agrees_with_pandas(layout, aware):
    rng = np.random.default_rng(7)
    instants = pd.DatetimeIndex(rng.integers(0, 2_000_000_000, 5000) * 10**9, tz="UTC")
    local = instants.tz_convert("Asia/Kolkata" if "%z" in layout or "colon" in layout else "UTC")
    if layout == "colon-offset":  # +05:30
        text = pd.Series(local.strftime("%Y-%m-%dT%H:%M:%S%z"), dtype=object).str.replace(
            r"(\d\d)$", r":\1", regex=True)
    else:
        text = pd.Series(local.strftime(layout), dtype=object)
    parsed, got_aware = timestamps.parse_fixed_iso(text)
    expected = pd.DatetimeIndex(pd.to_datetime(text, format="ISO8601", utc=aware)).as_unit("ns").asi8
    assert got_aware == aware
    np.testing.assert_array_equal(parsed, expected)


@pytest.mark.parametrize("odd", ["2024-02-30 09:30:00", "2024-13-01 09:30:00", "2024-03-04 24:30:00",
                                 "2024-03-04x09:30:00", "2024-03-04 09:30:0", "2024-03-04T09:30:00+00:00",
                                 "2024-03-04 09:30:00.5"])
def test_the_fast_path_leaves_anything_else_to_the_general_parser(odd):
    assert timestamps.parse_fixed_iso(pd.Series(["2024-03-04 09:30:00", odd], dtype=object)) is None
