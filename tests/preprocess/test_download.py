"""preprocess.download with recorded responses: frames built in the shape yfinance returns, injected in
place of the network call (preprocess.download.fetch_bars). Never touches the network."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from yfinance.exceptions import YFRateLimitError, YFTzMissingError

from preprocess import download
from preprocess.pipeline import build_dataset
from preprocess.preprocess_config import PreprocessConfig
from stockpredict.common.errors import UserError

NY = "America/New_York"
# Wednesday 2024-03-20, 18:00 New York time: the 20th is complete; 2024-03-29 (Good Friday) is in range
# of a later "now" below.
NOW = pd.Timestamp("2024-03-20 18:00", tz=NY).tz_convert("UTC")
HOLIDAYS = {dt.date(2024, 3, 29)}


def recorded_response(symbol: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    """What yfinance's Ticker.history(interval="1m", prepost=False, actions=False) returns: a DatetimeIndex
    named Datetime in exchange time, OHLCV columns, only minutes that traded (no holidays, no weekends)."""
    days = [d for d in pd.date_range(start, end - dt.timedelta(days=1), freq="D")
            if d.weekday() < 5 and d.date() not in HOLIDAYS]
    index = pd.DatetimeIndex([], tz=NY, name="Datetime")
    if days:
        index = pd.DatetimeIndex(np.concatenate([
            (pd.Timestamp(d).tz_localize(NY) + pd.to_timedelta(np.arange(570, 960), unit="min")).asi8
            for d in days]), tz="UTC").tz_convert(NY).rename("Datetime")
    rng = np.random.default_rng(len(symbol))
    close = 100 + np.cumsum(rng.normal(0, 0.05, len(index)))
    volume = rng.integers(1_000, 50_000, len(index))
    volume[::390] *= 20  # the opening auction
    return pd.DataFrame({"Open": close, "High": close + 0.02, "Low": close - 0.02, "Close": close,
                         "Adj Close": close, "Volume": volume}, index=index)


class Recorder:
    """A fake fetch: recorded responses, a log of requests, and symbols that fail in a given way."""

    def __init__(self, failures=None):
        self.calls: list[tuple[str, dt.date, dt.date]] = []
        self.failures = failures or {}

    def __call__(self, symbol, start, end):
        self.calls.append((symbol, start, end))
        failure = self.failures.get(symbol)
        if failure is not None:
            if isinstance(failure, list):  # a sequence of outcomes, one per call
                outcome = failure.pop(0)
                if outcome is not None:
                    raise outcome
            else:
                raise failure
        return recorded_response(symbol, start, end)


def _config(tmp_path, symbols=("AAPL", "MSFT"), days=8, **options):
    return download.DownloadConfig(symbols=tuple(symbols), out=tmp_path / "raw", days=days, pause_s=0.0,
                                   **options)


def test_bars_are_written_in_the_input_contract_and_a_failing_symbol_is_tabled(tmp_path):
    fetch = Recorder({"GONE": YFTzMissingError("GONE")})
    result = download.download(_config(tmp_path, ("AAPL", "GONE", "BRK.B")), now=NOW, fetch=fetch,
                               sleep=lambda s: None)
    assert result.sessions == [dt.date(2024, 3, d) for d in (11, 12, 13, 14, 15, 18, 19, 20)]
    assert sorted(result.written) == ["AAPL", "BRK.B"] and result.written["AAPL"] == 8 * 390
    assert set(result.failed) == {"GONE"} and "no timezone found" in result.failed["GONE"]
    table = result.failure_table()
    assert table.splitlines()[0] == "download failures (1 of 3 symbols):"
    assert "GONE" in table.splitlines()[2]
    # chunked: no request spans more than 7 calendar days; Yahoo's spelling of class shares
    assert all((end - start).days <= download.CHUNK_DAYS for _, start, end in fetch.calls)
    assert {s for s, _, _ in fetch.calls} == {"AAPL", "GONE", "BRK-B"}
    frame = pd.read_csv(tmp_path / "raw" / "AAPL.csv")
    assert list(frame.columns) == list(download.COLUMNS)
    assert frame["timestamp"].iloc[0] == "2024-03-11T13:30:00+00:00"  # 09:30 EDT, in UTC with offset
    assert frame["timestamp"].is_monotonic_increasing and frame["timestamp"].is_unique
    assert not (tmp_path / "raw" / "GONE.csv").exists()
    # the preprocessing stage reads the files as they are, without warnings
    summary = build_dataset(tmp_path / "raw", tmp_path / "seq.h5", PreprocessConfig(), workers=1,
                            progress=False)
    assert sum(summary.window_counts.values()) == 2 * 8 * 326 and not summary.warnings


def test_a_rerun_skips_complete_days_and_fetches_only_new_ones(tmp_path):
    config = _config(tmp_path, ("AAPL",))
    download.download(config, now=NOW, fetch=Recorder(), sleep=lambda s: None)
    before = (tmp_path / "raw" / "AAPL.csv").read_bytes()
    again = Recorder()
    result = download.download(config, now=NOW, fetch=again, sleep=lambda s: None)
    assert again.calls == [] and result.up_to_date == ["AAPL"]
    assert (tmp_path / "raw" / "AAPL.csv").read_bytes() == before
    # two days later, before that day's close: only the 21st is new (the 22nd is not complete yet)
    later = Recorder()
    result = download.download(config, now=pd.Timestamp("2024-03-22 12:00", tz=NY), fetch=later,
                               sleep=lambda s: None)
    assert later.calls == [("AAPL", dt.date(2024, 3, 21), dt.date(2024, 3, 22))]
    frame = pd.read_csv(tmp_path / "raw" / "AAPL.csv")
    assert len(frame) == 9 * 390 and frame["timestamp"].is_unique and result.written == {"AAPL": 390}


def test_a_holiday_between_trading_days_is_remembered(tmp_path):
    config = _config(tmp_path, ("AAPL",), days=5)
    now = pd.Timestamp("2024-04-02 17:00", tz=NY)  # Mar 27, 28, (29 Good Friday), Apr 1, 2
    first = Recorder()
    result = download.download(config, now=now, fetch=first, sleep=lambda s: None)
    assert result.written == {"AAPL": 4 * 390}
    second = Recorder()
    download.download(config, now=now, fetch=second, sleep=lambda s: None)
    assert second.calls == []  # the holiday is not asked for again


def test_rate_limits_are_retried_with_growing_waits(tmp_path):
    waits = []
    fetch = Recorder({"AAPL": [YFRateLimitError(), YFRateLimitError(), None]})
    result = download.download(_config(tmp_path, ("AAPL",), days=3, retry_wait_s=10.0), now=NOW,
                               fetch=fetch, sleep=waits.append)
    assert result.written == {"AAPL": 3 * 390} and len(fetch.calls) == 3
    assert waits == [10.0, 20.0]

    fetch = Recorder({"MSFT": YFRateLimitError()})
    result = download.download(_config(tmp_path, ("MSFT",), days=3, retries=1), now=NOW, fetch=fetch,
                               sleep=lambda s: None)
    assert "rate limited 2 times" in result.failed["MSFT"] and len(fetch.calls) == 2


def test_requests_are_spaced_by_the_pause(tmp_path):
    waits = []
    config = download.DownloadConfig(symbols=("AAPL", "MSFT"), out=tmp_path / "raw", days=10, pause_s=5.0)
    download.download(config, now=NOW, fetch=Recorder(), sleep=waits.append)
    # 10 weekdays = 2 requests per symbol; every request after the first waits (almost) the full pause
    assert len(waits) == 3 and all(4.0 < w <= 5.0 for w in waits)


def test_without_network_the_cli_fails_in_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    import curl_cffi.requests.exceptions as curl_errors

    fetch = Recorder({"MSFT": curl_errors.DNSError("Could not resolve host: query2.finance.yahoo.com")})
    monkeypatch.setattr(download, "fetch_bars", fetch)
    monkeypatch.setattr(download, "utc_now", lambda: NOW)
    code = download.main(["--symbols", "AAPL MSFT GOOG", "--days", "3", "--out", str(tmp_path / "raw"),
                          "--pause", "0"])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot reach Yahoo Finance while fetching MSFT" in errors[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["AAPL.csv"]  # complete; no temp files
    assert len(pd.read_csv(tmp_path / "raw" / "AAPL.csv")) == 3 * 390
    assert [s for s, _, _ in fetch.calls] == ["AAPL", "MSFT"]  # stopped at the first network failure


def test_the_cli_prints_a_summary_and_the_failure_table(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setattr(download, "fetch_bars", Recorder({"ZZZZ": YFTzMissingError("ZZZZ")}))
    monkeypatch.setattr(download, "utc_now", lambda: NOW)
    code = download.main(["--symbols", "AAPL,ZZZZ", "--days", "40", "--out", str(tmp_path / "raw"),
                          "--pause", "0"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "1 symbols updated" in out and "1 failed" in out
    assert "download failures (1 of 2 symbols)" in err and "ZZZZ" in err
    available = len(download.wanted_sessions(NOW, 40)[0])
    assert available < 40 and f"only {available} weekdays lie within Yahoo's 30-day window" in caplog.text
    assert len(pd.read_csv(tmp_path / "raw" / "AAPL.csv")) == available * 390
    assert "\r" not in err  # no progress bar off a terminal

    monkeypatch.setattr(download, "fetch_bars", Recorder({"ZZZZ": YFTzMissingError("ZZZZ")}))
    code = download.main(["--symbols", "ZZZZ", "--out", str(tmp_path / "other"), "--pause", "0"])
    assert code == 2 and "error: no symbol could be downloaded" in capsys.readouterr().err


@pytest.mark.parametrize("argv,pattern", [
    (["--symbols", "AA/PL"], "not a ticker symbol: 'AA/PL'"),
    (["--symbols", "AAPL", "--days", "0"], "--days must be >= 1"),
    (["--symbols", " "], "no symbols given"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, argv, pattern):
    assert download.main(argv + ["--out", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and pattern in err and len(err.strip().splitlines()) == 1


def test_the_shipped_sp500_list_states_its_source_and_date():
    header = [line for line in download.CONSTITUENTS.read_text().splitlines() if line.startswith("#")]
    assert any("Source:" in line for line in header) and any("2026-08-08" in line for line in header)
    symbols = download.parse_symbols("sp500")
    assert 495 <= len(symbols) <= 510 and len(set(symbols)) == len(symbols)
    assert {"AAPL", "MSFT", "BRK.B"} <= set(symbols)
    assert download.yahoo_symbol("BRK.B") == "BRK-B"
    assert download.parse_symbols("aapl, MSFT aapl") == ("AAPL", "MSFT")


def test_sessions_stop_at_the_last_complete_one_and_at_the_lookback():
    before_close = pd.Timestamp("2024-03-20 15:00", tz=NY)
    sessions, capped = download.wanted_sessions(before_close, 2)
    assert sessions == [dt.date(2024, 3, 18), dt.date(2024, 3, 19)] and not capped
    sessions, capped = download.wanted_sessions(NOW, 100)
    assert capped and sessions[0] >= dt.date(2024, 3, 20) - dt.timedelta(days=download.LOOKBACK_DAYS)
    assert download.request_chunks([dt.date(2024, 3, d) for d in (4, 5, 8, 11, 12)]) == [
        (dt.date(2024, 3, 4), dt.date(2024, 3, 9)), (dt.date(2024, 3, 11), dt.date(2024, 3, 13))]


def test_an_existing_file_in_another_layout_is_not_overwritten(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "AAPL.csv").write_text("Date,ToD,Close\n2024-03-04,09:30,1\n")
    with pytest.raises(UserError, match="exists with columns Date, ToD, Close"):
        download.download(_config(tmp_path, ("AAPL",)), now=NOW, fetch=Recorder(), sleep=lambda s: None)
    assert (raw / "AAPL.csv").read_text() == "Date,ToD,Close\n2024-03-04,09:30,1\n"
