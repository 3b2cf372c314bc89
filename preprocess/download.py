"""Download 1-minute bars from Yahoo Finance (yfinance) into the input contract: one <SYMBOL>.csv per ticker.

    python -m preprocess.download --symbols "AAPL MSFT" --days 5 --out data/raw
    python -m preprocess.download --symbols sp500 --days 20 --out data/raw    # the shipped S&P 500 list

Files hold `timestamp,open,high,low,close,volume`, timestamps in UTC with `+00:00`, regular-session bars
(09:30-15:59 New York time), unadjusted prices: `python -m preprocess --raw data/raw` reads them as they
are. Yahoo keeps 1-minute bars for the last 30 days and serves at most 8 days of them per request, so
`--days` counts weekdays back from the last complete session within the last LOOKBACK_DAYS days, and
requests span at most CHUNK_DAYS calendar days.

Resumable: days already in a symbol's file are not fetched again (nor weekdays that came back empty
while the days around them had bars: holidays, noted in DIR/.download-state.json). A symbol's file is
replaced atomically once all its requests succeeded, so an interruption never leaves half a file.
Failures of single symbols (delisted, unknown) are listed in a table at the end; a network failure
stops the run with one line. Requests are spaced by `--pause` seconds; rate-limit answers are retried
with doubling waits.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from stockpredict.common.errors import UserError, run_cli
from stockpredict.common.files import write_atomic, write_json_atomic
from stockpredict.common.logs import get_logger

log = get_logger("stockpredict.download")

EXCHANGE_TZ = "America/New_York"
CONSTITUENTS = Path(__file__).with_name("data") / "sp500_constituents.csv"
STATE_FILE = ".download-state.json"
COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")  # the input contract, in this order
LOOKBACK_DAYS = 29       # Yahoo serves 1-minute bars of the last 30 days; one day of margin
CHUNK_DAYS = 7           # calendar days per request (Yahoo allows 8 for 1-minute bars)
SESSION_DONE = dt.time(16, 30)  # a session's bars are final some minutes after the 16:00 close
SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-^=]{0,14}$")


@dataclass(frozen=True)
class DownloadConfig:
    """What to fetch and how politely. Units: days, seconds."""

    symbols: tuple[str, ...]     # as listed (BRK.B); Yahoo's spelling (BRK-B) is derived
    out: Path                    # directory of <SYMBOL>.csv files
    days: int = 5                # weekdays back from the last complete session (capped by the lookback)
    pause_s: float = 0.5         # minimum seconds between two requests
    retries: int = 3             # extra tries after a rate-limit answer
    retry_wait_s: float = 30.0   # first wait after a rate-limit answer; doubles each retry

    def __post_init__(self) -> None:
        if not self.symbols:
            raise UserError("no symbols given (--symbols \"AAPL MSFT\" or --symbols sp500)")
        bad = [s for s in self.symbols if not SYMBOL_RE.match(s)]
        if bad:
            raise UserError(f"not a ticker symbol: {bad[0]!r} (letters, digits, '.', '-', '^', '=')")
        if self.days < 1:
            raise UserError(f"--days must be >= 1, not {self.days}")
        if self.pause_s < 0 or self.retries < 0 or self.retry_wait_s < 0:
            raise UserError("--pause, retries and waits must be >= 0")


class NetworkError(Exception):
    """The data source cannot be reached: stop the whole run."""


class RateLimited(Exception):
    """The source answered "too many requests"."""


# The one function that touches the network; tests replace it with recorded responses.
def fetch_bars(yahoo_symbol: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    """1-minute regular-session bars of [start, end) from Yahoo, as yfinance returns them: a DatetimeIndex
    in exchange time, columns Open, High, Low, Close, Volume (unadjusted). Raises yfinance's errors."""
    import yfinance as yf

    yf.config.debug.hide_exceptions = False  # raise, so a failure is classified instead of logged
    logging.getLogger("yfinance").setLevel(logging.CRITICAL)
    return yf.Ticker(yahoo_symbol).history(start=start.isoformat(), end=end.isoformat(), interval="1m",
                                           prepost=False, auto_adjust=False, actions=False, timeout=20)


def utc_now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


def yahoo_symbol(symbol: str) -> str:
    """Yahoo's spelling of a listed symbol: class shares take a dash (BRK.B -> BRK-B)."""
    return symbol.replace(".", "-")


def load_constituents(path: Path = CONSTITUENTS) -> list[str]:
    """Symbols of the shipped S&P 500 list (source and date in the file's header comment)."""
    return pd.read_csv(path, comment="#")["symbol"].astype(str).tolist()


def parse_symbols(text: str) -> tuple[str, ...]:
    """"AAPL MSFT", "AAPL,MSFT" or "sp500" -> symbols, duplicates removed, order kept."""
    words = [w for w in re.split(r"[\s,]+", text.strip()) if w]
    symbols: list[str] = []
    for word in words:
        symbols += load_constituents() if word.lower() == "sp500" else [word.upper()]
    return tuple(dict.fromkeys(symbols))


def wanted_sessions(now: pd.Timestamp, days: int) -> tuple[list[dt.date], bool]:
    """The last `days` weekdays up to the last complete session, within the lookback; and whether capped."""
    local = now.tz_convert(EXCHANGE_TZ)
    last = local.date() if local.time() >= SESSION_DONE else local.date() - dt.timedelta(days=1)
    oldest = local.date() - dt.timedelta(days=LOOKBACK_DAYS)
    sessions = []
    day = last
    while len(sessions) < days and day >= oldest:
        if day.weekday() < 5:
            sessions.append(day)
        day -= dt.timedelta(days=1)
    return sorted(sessions), len(sessions) < days


def request_chunks(days: list[dt.date], span: int = CHUNK_DAYS) -> list[tuple[dt.date, dt.date]]:
    """Group sorted days into [start, end) requests of at most `span` calendar days each."""
    chunks = []
    for day in days:
        if chunks and (day - chunks[-1][0]).days < span:
            chunks[-1] = (chunks[-1][0], day + dt.timedelta(days=1))
        else:
            chunks.append((day, day + dt.timedelta(days=1)))
    return chunks


def to_contract(frame: pd.DataFrame) -> pd.DataFrame:
    """yfinance's frame -> the input contract's columns, UTC timestamps with +00:00, sorted, NaN bars out."""
    if len(frame) == 0:
        return pd.DataFrame(columns=COLUMNS)
    index = pd.DatetimeIndex(frame.index)
    if index.tz is None:
        raise ValueError("bars without a time zone")  # yfinance always localises; anything else is wrong
    named = {c.lower(): c for c in frame.columns}
    missing = [c for c in COLUMNS[1:] if c not in named]
    if missing:
        raise ValueError(f"response lacks column(s) {', '.join(missing)}")
    out = pd.DataFrame({c: frame[named[c]].to_numpy() for c in COLUMNS[1:]})
    out.insert(0, "timestamp", index.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S+00:00"))
    out = out.dropna(subset=["open", "high", "low", "close"], how="all")
    out["volume"] = out["volume"].fillna(0).astype("int64")
    return out.sort_values("timestamp", kind="stable").reset_index(drop=True)


def session_dates(timestamps: pd.Series) -> pd.Series:
    """Exchange-time dates of contract timestamps."""
    return pd.to_datetime(timestamps, utc=True).dt.tz_convert(EXCHANGE_TZ).dt.date


@dataclass
class DownloadResult:
    """What a run did: per-symbol new rows, skipped (complete) symbols, failures, capped lookback."""

    written: dict[str, int] = field(default_factory=dict)   # symbol -> rows added
    up_to_date: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)    # symbol -> one-line reason
    sessions: list[dt.date] = field(default_factory=list)
    capped: bool = False
    requests: int = 0

    def failure_table(self) -> str:
        """The per-symbol failure table (empty string when nothing failed)."""
        if not self.failed:
            return ""
        width = max(6, *(len(s) for s in self.failed))
        lines = [f"download failures ({len(self.failed)} of "
                 f"{len(self.failed) + len(self.written) + len(self.up_to_date)} symbols):",
                 f"  {'symbol':<{width}}  reason"]
        lines += [f"  {s:<{width}}  {r}" for s, r in sorted(self.failed.items())]
        return "\n".join(lines)


class Throttle:
    """Space calls by at least `pause_s` seconds (the politeness part of rate limiting)."""

    def __init__(self, pause_s: float, sleep: Callable[[float], None], clock: Callable[[], float]):
        self.pause_s, self.sleep, self.clock = pause_s, sleep, clock
        self.last: float | None = None

    def wait(self) -> None:
        if self.last is not None:
            remaining = self.pause_s - (self.clock() - self.last)
            if remaining > 0:
                self.sleep(remaining)
        self.last = self.clock()


def download(config: DownloadConfig, *, now: pd.Timestamp | None = None, fetch=None,
             sleep: Callable[[float], None] = time.sleep, progress: bool = False) -> DownloadResult:
    """Fetch the missing sessions of every symbol into config.out; see the module docstring.

    Raises UserError for a network failure (files already completed stay; nothing half-written).
    """
    fetch = fetch or fetch_bars
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    sessions, capped = wanted_sessions(now if now is not None else utc_now(), config.days)
    result = DownloadResult(sessions=sessions, capped=capped)
    state_path = out / STATE_FILE
    state = _read_state(state_path)
    throttle = Throttle(config.pause_s, sleep, time.monotonic)
    for symbol in _bar(config.symbols, progress):
        path = out / f"{symbol}.csv"
        existing = _read_existing(path)
        have = set(session_dates(existing["timestamp"])) if len(existing) else set()
        empty = set(state.get(symbol, {}).get("empty_days", [])) if path.exists() else set()
        missing = [d for d in sessions if d not in have and d.isoformat() not in empty]
        if not missing:
            result.up_to_date.append(symbol)
            continue
        try:
            fetched = _fetch_days(symbol, missing, fetch, throttle, config, sleep, result)
        except NetworkError as err:
            raise UserError(f"cannot reach Yahoo Finance while fetching {symbol} ({err}); "
                            f"{len(result.written)} symbols written, nothing half-written; rerun to "
                            f"resume") from None
        except Exception as err:  # yfinance's per-symbol errors: delisted, no data, bad response
            result.failed[symbol] = _one_line(err)
            continue
        if len(fetched):
            fetched = fetched[session_dates(fetched["timestamp"]).isin(missing).to_numpy()]
        new = fetched
        if len(new) == 0:
            if have:  # only holidays at the ends of the range were missing
                result.up_to_date.append(symbol)
            else:
                result.failed[symbol] = f"no 1-minute bars for {missing[0]} .. {missing[-1]}"
            continue
        got = set(session_dates(new["timestamp"])) if len(new) else set()
        # A weekday without bars between days with bars is a holiday: remember it, so a rerun skips it.
        holidays = {d.isoformat() for d in missing if d not in got and got and min(got) < d < max(got)}
        merged = pd.concat([existing, new]) if len(existing) else new
        merged = merged.drop_duplicates("timestamp", keep="first").sort_values("timestamp", kind="stable")
        write_atomic(path, merged.to_csv(index=False, columns=list(COLUMNS)))
        if holidays:
            state.setdefault(symbol, {})["empty_days"] = sorted(empty | holidays)
            write_json_atomic(state_path, state)
        result.written[symbol] = len(new)
    return result


def _fetch_days(symbol: str, days: list[dt.date], fetch, throttle: Throttle, config: DownloadConfig,
                sleep: Callable[[float], None], result: DownloadResult) -> pd.DataFrame:
    """All bars of `days` for one symbol, one request per chunk, retrying rate-limit answers."""
    frames = []
    for start, end in request_chunks(days):
        for attempt in range(config.retries + 1):
            throttle.wait()
            result.requests += 1
            try:
                frames.append(to_contract(_call(fetch, yahoo_symbol(symbol), start, end)))
                break
            except RateLimited:
                if attempt == config.retries:
                    raise RuntimeError(f"rate limited {config.retries + 1} times; rerun later to resume") \
                        from None
                sleep(config.retry_wait_s * 2 ** attempt)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def _call(fetch, symbol: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Call `fetch`, sorting its errors into network failures, rate limits and per-symbol problems."""
    try:
        return fetch(symbol, start, end)
    except Exception as err:
        if type(err).__name__ == "YFRateLimitError":
            raise RateLimited() from None
        if isinstance(err, OSError):  # requests' and curl_cffi's connection errors are OSErrors
            raise NetworkError(_one_line(err)) from None
        raise


def _read_existing(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    try:
        frame = pd.read_csv(path, dtype={"timestamp": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path} exists but is not a readable CSV ({_one_line(err)}); move it away") from None
    if list(frame.columns) != list(COLUMNS):
        raise UserError(f"{path} exists with columns {', '.join(map(str, frame.columns))}, not "
                        f"{', '.join(COLUMNS)}; move it away or use another --out")
    return frame


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("ignoring unreadable %s", path)
        return {}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _bar(items, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="download", unit="symbol", file=sys.stderr)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = DownloadConfig(symbols=("X",), out=Path("."))
    parser = argparse.ArgumentParser(prog="python -m preprocess.download",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", required=True,
                        help='symbols separated by spaces or commas ("AAPL MSFT"), or sp500 for the shipped '
                             'S&P 500 list (preprocess/data/sp500_constituents.csv)')
    parser.add_argument("--days", type=int, default=defaults.days,
                        help=f"weekdays back from the last complete session (Yahoo keeps {LOOKBACK_DAYS + 1} "
                             f"days of 1-minute bars)")
    parser.add_argument("--out", type=Path, required=True, help="output directory of <SYMBOL>.csv files")
    parser.add_argument("--pause", type=float, default=defaults.pause_s,
                        help="minimum seconds between two requests")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: only when stderr is a terminal)")
    return parser.parse_args(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    config = DownloadConfig(symbols=parse_symbols(args.symbols), out=args.out, days=args.days,
                            pause_s=args.pause)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = download(config, progress=progress)
    if result.capped:
        log.warning("only %d weekdays lie within Yahoo's %d-day window of 1-minute bars; fetched those",
                    len(result.sessions), LOOKBACK_DAYS + 1)
    span = f"{result.sessions[0]} .. {result.sessions[-1]}" if result.sessions else "-"
    print(f"download: {len(result.written)} symbols updated ({sum(result.written.values()):,} bars), "
          f"{len(result.up_to_date)} already complete, {len(result.failed)} failed; sessions {span}; "
          f"{result.requests} requests -> {config.out}")
    if result.failed:
        print(result.failure_table(), file=sys.stderr)
        if not result.written and not result.up_to_date:
            raise UserError("no symbol could be downloaded (see the table above)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (`python -m preprocess.download`)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
