"""Forecasts from a trained run (stockpredict.job.predict): fresh bars -> the run's windows and transform ->
the model -> prices. Fast tests check the windows against the preprocessing stage's own HDF5 windows and
every user mistake; the slow ones train a tiny run and reproduce its test RMSE from raw bars."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from preprocess import inputs, windows
from stockpredict.common import rundir
from stockpredict.common import transform as transforms
from stockpredict.common.errors import UserError
from stockpredict.common.reader import SplitWindows
from stockpredict.job import predict, preemption


def _h5_windows(path: Path) -> pd.DataFrame:
    """Every window of every split of a sequences file: ticker, window_end (epoch s), x, y, last_close."""
    frames = []
    with h5py.File(path, "r") as h5:
        tickers = np.array([t.decode() for t in h5["tickers"][()]], dtype=object)
        for split in ("train", "val", "test"):
            g = h5[split]
            frames.append(pd.DataFrame({
                "split": split, "ticker": tickers[g["ticker"][()]], "ticker_index": g["ticker"][()],
                "end": g["window_end"][()], "y": g["y"][()], "last_close": g["last_close"][()],
                "row": np.arange(g["y"].shape[0])}))
    return pd.concat(frames, ignore_index=True)


def _h5_x(path: Path, split: str, rows: np.ndarray) -> np.ndarray:
    return SplitWindows(path, split, extras=False).x(np.asarray(rows))


def _make_run(root: Path, data: Path, transform=None, record: dict | None = None) -> Path:
    """A run directory as the trainer leaves it, minus a real model (the fast tests never load it)."""
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(data, "r") as h5:
        transform = transform or transforms.from_attrs(h5.attrs)
    (root / rundir.TRANSFORM).write_text(transforms.to_json(transform))
    (root / rundir.INPUTS).write_text(json.dumps(record or predict.inputs_record(data)))
    (root / rundir.MODEL).write_bytes(b"")
    (root / "config.json").write_text(json.dumps({"train": {"data": str(data)}}))
    return root


def _raw_of(dataset: Path) -> Path:
    return dataset.parent / "raw"  # preprocess.synthetic.build_tiny_dataset's layout


@pytest.fixture(scope="module")
def fake_run(tiny_dataset, tmp_path_factory) -> Path:
    return _make_run(tmp_path_factory.mktemp("fake") / "run", tiny_dataset)


def _one_ticker_raw(tiny_dataset: Path, tmp_path: Path, ticker: str = "AAPL", name: str | None = None,
                    edit=None) -> Path:
    raw = tmp_path / "fresh"
    raw.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(_raw_of(tiny_dataset) / f"{ticker}.csv")
    if edit is not None:
        frame = edit(frame)
    frame.to_csv(raw / f"{name or ticker}.csv", index=False)
    return raw


# --- windows: the training windows' definition, the run's transform ---------------------------------

def test_every_window_is_the_preprocessed_window_and_the_extra_ones_lack_only_their_target(tiny_dataset,
                                                                                           fake_run):
    run = predict.read_run(fake_run)
    built, skipped, _ = predict.prepare(run, _raw_of(tiny_dataset), every=True)
    assert skipped == {}
    ours = pd.DataFrame({"ticker": built.tickers, "end": built.window_end, "i": np.arange(len(built.x))})
    theirs = _h5_windows(tiny_dataset)
    joined = theirs.merge(ours, on=["ticker", "end"], how="left", validate="one_to_one")
    assert joined["i"].notna().all(), "a training window is missing from predict --all"
    for split, part in joined.groupby("split"):
        index = part["i"].to_numpy(int)
        np.testing.assert_allclose(built.x[index], _h5_x(tiny_dataset, split, part["row"].to_numpy()),
                                   rtol=0, atol=1e-6)
        np.testing.assert_array_equal(built.last_close[index], part["last_close"])
        np.testing.assert_array_equal(built.ticker_index[index], part["ticker_index"])
    # Windows preprocessing dropped but predict keeps: complete inputs, only the target minute is bad.
    extra = ours[~ours.set_index(["ticker", "end"]).index.isin(theirs.set_index(["ticker", "end"]).index)]
    assert 0 < len(extra) < 0.01 * len(ours)
    series = {s.ticker: s for s in inputs.load_universe(_raw_of(tiny_dataset), run.config,
                                                        inputs.run_serially)[0]}
    from preprocess.pipeline import session_open_epochs

    for ticker, end in zip(extra["ticker"], extra["end"]):
        s = series[ticker]
        codes = windows.minute_codes(s.values, s.present, run.features)
        opens = session_open_epochs(s.sessions)
        session = int(np.searchsorted(opens, end, side="right") - 1)
        target_minute = (end - opens[session]) // 60 + run.horizon
        assert codes[session, target_minute] != windows.OK


def test_the_latest_window_per_ticker_is_its_newest_complete_one(tiny_dataset, fake_run):
    run = predict.read_run(fake_run)
    every, _, _ = predict.prepare(run, _raw_of(tiny_dataset), every=True)
    latest, _, _ = predict.prepare(run, _raw_of(tiny_dataset), every=False)
    assert sorted(latest.tickers) == sorted(run.tickers)
    newest = pd.Series(every.window_end).groupby(every.tickers).max()
    assert dict(zip(latest.tickers, latest.window_end)) == newest.to_dict()
    # never past the last minute whose forecast lies inside the session (15:54 for horizon 5)
    ends = pd.to_datetime(latest.window_end, unit="s", utc=True).tz_convert("America/New_York")
    assert all((t.hour, t.minute) <= (15, 54) for t in ends)


def test_the_table_converts_model_output_back_to_prices(tiny_dataset, fake_run):
    run = predict.read_run(fake_run)
    built, _, _ = predict.prepare(run, _raw_of(tiny_dataset), every=True)
    theirs = _h5_windows(tiny_dataset)
    ours = pd.DataFrame({"ticker": built.tickers, "end": built.window_end, "i": np.arange(len(built.x))})
    joined = ours.merge(theirs, on=["ticker", "end"], how="inner")
    index = joined["i"].to_numpy()
    sub = predict.Windows(built.x[index], built.ticker_index[index], built.tickers[index],
                          built.window_end[index], built.last_close[index])
    # A model that outputs the stored target forecasts the true close: the table must say that close.
    table = predict.forecast_table(sub, joined["y"].to_numpy(), run)
    truth = run.transform.target_inverse(joined["y"].to_numpy(), joined["last_close"].to_numpy(),
                                         joined["ticker_index"].to_numpy())
    assert list(table.columns) == list(predict.COLUMNS)
    np.testing.assert_allclose(table["predicted_close"], truth, rtol=1e-12)
    np.testing.assert_allclose(table["predicted_return"], truth / joined["last_close"] - 1, rtol=1e-9)
    assert (table["horizon_minutes"] == run.horizon).all()
    back = pd.to_datetime(table["window_end"], utc=True).astype("int64") // 10**9
    np.testing.assert_array_equal(back, joined["end"])
    assert table["window_end"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:00-0[45]:00$").all()


def test_run_model_batches_and_keeps_the_order():
    x = np.arange(predict.PREDICT_BATCH_WINDOWS * 2 + 3, dtype=np.float32).reshape(-1, 1, 1)
    calls = []

    def model(batch):
        calls.append(len(batch))
        return batch[:, 0, 0] * 2

    np.testing.assert_array_equal(predict.run_model(model, x), x[:, 0, 0] * 2)
    assert calls == [predict.PREDICT_BATCH_WINDOWS, predict.PREDICT_BATCH_WINDOWS, 3]


# --- bars that do not fit the model: skipped with a reason, or one line when nothing is left -----------

def test_a_ticker_without_statistics_is_skipped_and_alone_it_fails(tiny_dataset, fake_run, tmp_path, caplog):
    run = predict.read_run(fake_run)
    raw = _one_ticker_raw(tiny_dataset, tmp_path, "AAPL")
    _one_ticker_raw(tiny_dataset, tmp_path, "MSFT", name="ZZZZ")
    built, skipped, _ = predict.prepare(run, raw, every=False)
    assert list(built.tickers) == ["AAPL"]
    assert list(skipped) == ["ZZZZ"] and "no per-ticker statistics" in skipped["ZZZZ"]
    (raw / "AAPL.csv").unlink()
    with pytest.raises(UserError, match=r"no ticker in .* can be forecast .*ZZZZ: no per-ticker statistics"):
        predict.prepare(run, raw, every=False)


def test_without_per_ticker_statistics_any_ticker_is_forecast(tiny_dataset, tmp_path):
    # returns over close only: no volume statistics, nothing per ticker
    with h5py.File(tiny_dataset, "r") as h5:
        full = transforms.from_attrs(h5.attrs)
    record = predict.inputs_record(tiny_dataset)
    record["config"]["features"] = ["close"]
    close_only = transforms.ReturnsTransform(("close",), full.target_mean, full.target_std, full.input_scale,
                                             full.volume_mean, full.volume_std)
    run = predict.read_run(_make_run(tmp_path / "run", tiny_dataset, close_only, record))
    raw = _one_ticker_raw(tiny_dataset, tmp_path, "MSFT", name="ZZZZ")
    built, skipped, _ = predict.prepare(run, raw, every=False)
    assert list(built.tickers) == ["ZZZZ"] and not skipped and built.x.shape[1:] == (60, 1)


def test_bars_without_a_model_feature_fail_in_one_line(tiny_dataset, fake_run, tmp_path):
    raw = _one_ticker_raw(tiny_dataset, tmp_path, edit=lambda f: f.drop(columns=["volume"]))
    with pytest.raises(UserError, match=r"features close,volume\): AAPL.csv: .*volume") as err:
        predict.prepare(predict.read_run(fake_run), raw, every=False)
    assert "\n" not in str(err.value)


def test_too_short_sessions_have_no_complete_window(tiny_dataset, fake_run, tmp_path):
    def first_half_hour(frame):
        t = pd.to_datetime(frame["timestamp"], utc=True).dt.tz_convert("America/New_York")
        return frame[(t.dt.hour == 9) | ((t.dt.hour == 10) & (t.dt.minute < 15))]

    raw = _one_ticker_raw(tiny_dataset, tmp_path, edit=first_half_hour)
    with pytest.raises(UserError, match=r"AAPL: no complete 60-minute window ending by 15:54 in 10 session"):
        predict.prepare(predict.read_run(fake_run), raw, every=False)


def test_volume_in_other_units_is_rejected(tiny_dataset, fake_run, tmp_path):
    def in_thousands_of_lots(frame):
        return frame.assign(volume=frame["volume"] * 100_000)

    raw = _one_ticker_raw(tiny_dataset, tmp_path, edit=in_thousands_of_lots)
    with pytest.raises(UserError, match=r"AAPL: its volume is .*x the training level .*other units"):
        predict.prepare(predict.read_run(fake_run), raw, every=False)


def test_seed_prices_far_outside_the_training_range_are_rejected(tiny_dataset, tmp_path):
    with h5py.File(tiny_dataset, "r") as h5:
        seed = transforms.SeedTransform(("close", "volume"), np.asarray(h5.attrs["norm_min"], np.float64),
                                        np.asarray(h5.attrs["norm_max"], np.float64))
    run = predict.read_run(_make_run(tmp_path / "run", tiny_dataset, seed))
    raw = _one_ticker_raw(tiny_dataset, tmp_path)
    built, skipped, _ = predict.prepare(run, raw, every=False)  # the training prices themselves pass
    assert list(built.tickers) == ["AAPL"] and not skipped
    cents = _one_ticker_raw(tiny_dataset, tmp_path / "cents", edit=lambda f: f.assign(
        **{c: f[c] * 100 for c in ("open", "high", "low", "close")}))
    with pytest.raises(UserError, match=r"AAPL: close [\d.]+ is far outside the close range"):
        predict.prepare(run, cents, every=False)


# --- the run directory ------------------------------------------------------------------------------

def test_a_run_without_inputs_json_reads_its_data_file_while_it_exists(tiny_dataset, fake_run, tmp_path):
    run = tmp_path / "old-run"
    shutil.copytree(fake_run, run)
    (run / rundir.INPUTS).unlink()
    old = predict.read_run(run)
    assert old.config == predict.read_run(fake_run).config and old.source == str(tiny_dataset)
    (run / "config.json").write_text(json.dumps({"train": {"data": str(tmp_path / "gone.h5")}}))
    with pytest.raises(UserError, match=r"has no inputs.json .* data file .*gone.h5 is gone"):
        predict.read_run(run)


def test_a_run_mixing_files_of_different_runs_is_rejected(tiny_dataset, fake_run, tmp_path):
    run = tmp_path / "mixed"
    shutil.copytree(fake_run, run)
    record = json.loads((run / rundir.INPUTS).read_text())
    record["tickers"] = record["tickers"][:-1]
    (run / rundir.INPUTS).write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"per-ticker statistics for 8 tickers, the training file had 7"):
        predict.read_run(run)
    record["config"]["features"] = ["close", "open"]
    (run / rundir.INPUTS).write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"features \['close', 'volume'\] differ .* \['close', 'open'\]"):
        predict.read_run(run)
    loaded = predict.read_run(fake_run)
    predict.check_model_shape((None, 60, 2), loaded)
    with pytest.raises(UserError, match=r"takes windows of \(30, 2\) .* seq_len 60"):
        predict.check_model_shape((None, 30, 2), loaded)


def test_flags_override_the_recorded_reading_options(fake_run):
    run = predict.read_run(fake_run, {"tz": "UTC", "bar_label": "end", "fill_gaps": 2})
    assert (run.config.tz, run.config.bar_label, run.config.fill_gaps, run.seq_len) == ("UTC", "end", 2, 60)
    with pytest.raises(UserError, match="unknown time zone 'Mars/Base'"):
        predict.read_run(fake_run, {"tz": "Mars/Base"})


@pytest.mark.parametrize("case, message", [
    ("no-run", "run directory not found"),
    ("no-model", "has no model.keras: not a finished training run"),
    ("bad-raw", "does not exist"),
    ("no-out-dir", "output directory"),
])
def test_user_mistakes_are_one_line_and_exit_2(case, message, fake_run, tiny_dataset, tmp_path, capsys):
    run, raw, out = fake_run, _raw_of(tiny_dataset), tmp_path / "p.csv"
    if case == "no-run":
        run = tmp_path / "nowhere"
    elif case == "no-model":
        run = tmp_path / "run"
        shutil.copytree(fake_run, run)
        (run / rundir.MODEL).unlink()
    elif case == "bad-raw":
        raw = tmp_path / "no-bars"
    else:
        out = tmp_path / "missing" / "p.csv"
    assert predict.main(["--run", str(run), "--raw", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


# --- a real trained run ---------------------------------------------------------------------------------

def _test_days_flat_file(tiny_dataset: Path, out: Path) -> Path:
    """The raw bars of the data file's test days as one vendor flat file: gzip CSV, a ticker column and
    nanosecond `window_start`, columns in the vendor's order (another format than the training CSVs)."""
    with h5py.File(tiny_dataset, "r") as h5:
        ends = h5["test/window_end"][()]
    days = set(pd.to_datetime(ends, unit="s", utc=True).tz_convert("America/New_York").date)
    frames = []
    for path in sorted(_raw_of(tiny_dataset).glob("*.csv")):
        frame = pd.read_csv(path, dtype={"close": str})  # empty and bad closes stay as the vendor wrote them
        t = pd.to_datetime(frame["timestamp"], utc=True)
        frame = frame[t.dt.tz_convert("America/New_York").dt.date.isin(days)]
        frames.append(pd.DataFrame({
            "ticker": path.stem, "volume": frame["volume"], "open": frame["open"], "close": frame["close"],
            "high": frame["high"], "low": frame["low"],
            "window_start": pd.to_datetime(frame["timestamp"], utc=True).astype("int64")}))
    pd.concat(frames).to_csv(out, index=False, compression="gzip")
    return out


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory) -> Path:
    from stockpredict.job import train

    run = tmp_path_factory.mktemp("trained") / "run"
    preemption.clear_stop()
    assert train.main(["--data", str(tiny_dataset), "--run-dir", str(run), "--epochs", "1", "--max-steps",
                       "20", "--seed", "3"], exit_now_when_preempted=False) == 0
    return run


@pytest.mark.slow
def test_all_windows_of_the_test_days_reproduce_the_trainers_test_rmse(trained_run, tiny_dataset, tmp_path):
    assert json.loads((trained_run / rundir.INPUTS).read_text())["tickers"] == \
        predict.inputs_record(tiny_dataset)["tickers"]
    raw = _test_days_flat_file(tiny_dataset, tmp_path / "2024-03-15.csv.gz")
    out = tmp_path / "predictions.csv"
    assert predict.main(["--run", str(trained_run), "--raw", str(raw), "--out", str(out), "--all"]) == 0
    table = pd.read_csv(out)
    table["end"] = pd.to_datetime(table["window_end"], utc=True).astype("int64") // 10**9
    test = _h5_windows(tiny_dataset).query("split == 'test'")
    joined = test.merge(table, on=["ticker", "end"], how="left", suffixes=("", "_predicted"))
    assert joined["predicted_close"].notna().all() and len(table) >= len(test)
    np.testing.assert_array_equal(joined["last_close_predicted"], joined["last_close"])
    with h5py.File(tiny_dataset, "r") as h5:
        transform = transforms.from_attrs(h5.attrs)
    truth = transform.target_inverse(joined["y"], joined["last_close"], joined["ticker_index"])
    rmse = float(np.sqrt(np.mean((joined["predicted_close"] - truth) ** 2)))
    recorded = json.loads((trained_run / "metrics.json").read_text())["test"]["rmse_price"]
    assert rmse == pytest.approx(recorded, rel=1e-5)
    # and the model is not the persistence forecast: its error differs from "the price stays"
    persistence = float(np.sqrt(np.mean((joined["last_close"] - truth) ** 2)))
    assert abs(rmse - persistence) > 1e-4 * persistence


@pytest.mark.slow
def test_latest_forecasts_are_one_plausible_row_per_ticker(trained_run, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "latest.csv"
    raw = _raw_of(tiny_dataset)
    assert predict.main(["--run", str(trained_run), "--raw", str(raw), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == list(predict.COLUMNS)
    assert sorted(table["ticker"]) == predict.inputs_record(tiny_dataset)["tickers"]
    assert (table["predicted_return"].abs() < 0.03).all()
    np.testing.assert_allclose(table["predicted_close"],
                               table["last_close"] * (1 + table["predicted_return"]), rtol=1e-12)
    assert table["window_end"].str.startswith("2024-03-15T").all()  # the last day of the tiny universe
    printed = capsys.readouterr().out
    assert f"wrote 8 forecast(s) of the close 5 minutes ahead for 8 ticker(s) to {out}" in printed


@pytest.mark.slow
def test_a_model_of_another_window_length_is_rejected_in_one_line(trained_run, tiny_dataset, tmp_path,
                                                                  capsys):
    run = tmp_path / "mixed"
    shutil.copytree(trained_run, run)
    record = json.loads((run / rundir.INPUTS).read_text())
    record["config"]["seq_len"] = 30
    (run / rundir.INPUTS).write_text(json.dumps(record))
    out = tmp_path / "p.csv"
    assert predict.main(["--run", str(run), "--raw", str(_raw_of(tiny_dataset)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "takes windows of (60, 2)" in err[-1] and "seq_len 30" in err[-1]
    assert not out.exists()


@pytest.mark.slow
def test_make_predict_finds_a_run_id_under_hostile_results_and_writes_out(trained_run, tiny_dataset,
                                                                          tmp_path):
    canary = tmp_path / "canary"
    hostile = f"my dir;touch {canary};$(touch {canary})`touch {canary}` 'q\""
    results = tmp_path / hostile / "results"
    shutil.copytree(trained_run, results / "runs" / "r1")
    out = tmp_path / hostile / "p.csv"
    make = ["make", "--no-print-directory", "-C", str(REPO), f"VENV={Path(sys.executable).parent.parent}",
            "SETUP_DONE="]
    proc = subprocess.run([*make, "predict", "RUN=r1", f"RESULTS={results}", f"RAW={_raw_of(tiny_dataset)}",
                           f"OUT={out}", "ALL=1", "PREDICT_ARGS=--tz 'America/New_York'"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not canary.exists()
    table = pd.read_csv(out)
    assert len(table) > 8 * 300 and table["ticker"].nunique() == 8  # --all: every window of 10 days
    proc = subprocess.run([*make, "predict", f"RAW={_raw_of(tiny_dataset)}"], capture_output=True, text=True)
    assert proc.returncode != 0 and "set RUN=" in proc.stderr
