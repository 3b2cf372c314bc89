"""Raw minute bars of one ticker -> a clean (session, minute) grid of the regular session.

Pure functions over pandas/numpy; no file is written here. A problem confined to one ticker raises
`TickerSkipped` with a one-line reason naming the file and the row (the file's line number, header = 1);
normal vendor mess (unsorted rows, exact duplicates, pre/post-market bars, skipped minutes) is handled
and counted in `TickerSeries.row_counts`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from preprocess.config import PRICE_FEATURES, PreprocessConfig

EXCHANGE_TZ = "America/New_York"   # NYSE/Nasdaq: sessions are calendar days in this zone
SESSION_OPEN_MINUTE = 9 * 60 + 30  # 09:30 exchange time, minutes after midnight
SESSION_MINUTES = 390              # 09:30 .. 15:59, bars stamped at the minute start

# Header names are matched after lower-casing and mapping spaces/dashes to "_".
COLUMN_ALIASES = {
    "timestamp": ("timestamp", "datetime", "date_time", "time_stamp", "ts", "date", "time"),
    "close": ("close", "close_price", "closeprice", "last", "c"),
    "volume": ("volume", "vol", "v"),
    "open": ("open", "open_price", "o"),
    "high": ("high", "high_price", "h"),
    "low": ("low", "low_price", "l"),
}
TICKER_ALIASES = ("ticker", "symbol", "sym", "name")
HEADER_LINES = 1
_OFFSET_RE = r"(?:[zZ]|[+-]\d\d:?\d\d)\s*$"


class TickerSkipped(Exception):
    """One ticker's input is unusable; the message is the one-line reason (names the file and row)."""


@dataclass
class TickerSeries:
    """One ticker's regular-session minutes on a dense grid.

    values[s, m, f] is feature f (config order) at session minute m (0 = 09:30) of session s;
    NaN where the vendor wrote NaN. present[s, m] says whether a bar exists (or was gap-filled).
    """

    ticker: str
    sessions: np.ndarray            # datetime64[D], exchange-time dates, sorted ascending
    values: np.ndarray              # float64 (n_sessions, 390, n_features)
    present: np.ndarray             # bool (n_sessions, 390)
    row_counts: dict = field(default_factory=dict)  # duplicate_rows, out_of_session_rows, ...


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_columns(header: list[str], wanted: tuple[str, ...]) -> dict[str, str]:
    """Map canonical names (timestamp, close, ...) to the file's header names; aliases in priority order."""
    normalised = {re.sub(r"[\s\-]+", "_", str(h).strip().lower()): h for h in header}
    found = {}
    for name in wanted:
        for alias in COLUMN_ALIASES[name]:
            if alias in normalised:
                found[name] = normalised[alias]
                break
    return found


def read_ticker_csv(path: Path, config: PreprocessConfig) -> pd.DataFrame:
    """Read one ticker file into columns `timestamp` + the configured features (file lines as index)."""
    label = path.name
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise TickerSkipped(f"{label}: empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise TickerSkipped(f"{label}: not a readable CSV ({_first_line(err)})") from None
    columns = _require_columns(label, header, config)
    try:
        frame = pd.read_csv(path, usecols=list(columns.values()), low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise TickerSkipped(f"{label}: not a readable CSV ({_first_line(err)})") from None
    frame = frame.rename(columns={v: k for k, v in columns.items()})
    frame.index = frame.index + HEADER_LINES + 1  # line numbers as a user sees them in an editor
    return frame


def split_long_frame(path: Path, config: PreprocessConfig) -> dict[str, pd.DataFrame]:
    """Read one long file with a ticker column into {ticker: frame} (file lines as index)."""
    label = path.name
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        return {}
    normalised = {str(h).strip().lower(): h for h in header}
    ticker_col = next((normalised[a] for a in TICKER_ALIASES if a in normalised), None)
    if ticker_col is None:
        return {}
    columns = _require_columns(label, header, config)
    frame = pd.read_csv(path, usecols=list(columns.values()) + [ticker_col], low_memory=False,
                        dtype={ticker_col: str})
    frame = frame.rename(columns={v: k for k, v in columns.items()})
    frame.index = frame.index + HEADER_LINES + 1
    tickers = frame.pop(ticker_col)
    return {str(t): group for t, group in frame.groupby(tickers, sort=True)}


def has_ticker_column(path: Path) -> bool:
    """Whether a CSV header names a ticker/symbol column (the one-long-file input form)."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError):
        return False
    return any(str(h).strip().lower() in TICKER_ALIASES for h in header)


def clean_bars(frame: pd.DataFrame, ticker: str, label: str, config: PreprocessConfig) -> TickerSeries:
    """Parse timestamps, keep the regular session, sort, de-duplicate and grid one ticker's bars.

    `frame` has a `timestamp` column and one column per configured feature, indexed by file line.
    Raises TickerSkipped for problems that make this ticker unusable.
    """
    if len(frame) == 0:
        raise TickerSkipped(f"{label}: empty file (header only)")
    features = list(config.features)
    numeric = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        numeric[:, j] = _numeric_column(frame[name], name, label)

    utc_ns = parse_timestamps(frame["timestamp"], label, config.tz)
    local_minutes = _exchange_minutes(utc_ns)
    day = local_minutes // 1440
    minute = local_minutes % 1440 - SESSION_OPEN_MINUTE
    in_session = (minute >= 0) & (minute < SESSION_MINUTES) & (utc_ns != np.iinfo(np.int64).min)
    counts = {"out_of_session_rows": int((~in_session).sum()),
              "unsorted_files": int(np.any(np.diff(utc_ns) < 0))}

    lines = frame.index.to_numpy()[in_session]
    day, minute, numeric = day[in_session], minute[in_session], numeric[in_session]
    key = day * SESSION_MINUTES + minute
    order = np.argsort(key, kind="stable")
    key, lines, day, minute, numeric = key[order], lines[order], day[order], minute[order], numeric[order]

    repeat = np.flatnonzero(key[1:] == key[:-1]) + 1
    if repeat.size:
        a, b = numeric[repeat], numeric[repeat - 1]
        same = np.all((a == b) | (np.isnan(a) & np.isnan(b)), axis=1)
        if not same.all():
            i = repeat[np.argmin(same)]
            raise TickerSkipped(f"{label} rows {lines[i - 1]} and {lines[i]}: conflicting bars for the same "
                                f"minute")
        keep = np.ones(len(key), dtype=bool)
        keep[repeat] = False
        counts["duplicate_rows"] = int(repeat.size)
        day, minute, numeric = day[keep], minute[keep], numeric[keep]
    else:
        counts["duplicate_rows"] = 0

    window_minutes = config.seq_len + config.horizon
    if len(day) < window_minutes:
        raise TickerSkipped(f"{label}: only {len(day)} regular-session minutes, fewer than one window "
                            f"(seq_len + horizon = {window_minutes})")

    days, session_index = np.unique(day, return_inverse=True)
    values = np.full((len(days), SESSION_MINUTES, len(features)), np.nan)
    present = np.zeros((len(days), SESSION_MINUTES), dtype=bool)
    values[session_index, minute] = numeric
    present[session_index, minute] = True
    counts["filled_minutes"] = fill_gaps(values, present, config.fill_gaps,
                                         price_columns=[j for j, f in enumerate(features) if f in PRICE_FEATURES])
    return TickerSeries(ticker=ticker, sessions=days.astype("datetime64[D]"), values=values,
                        present=present, row_counts=counts)


def parse_timestamps(column: pd.Series, label: str, tz: str) -> np.ndarray:
    """Timestamps -> int64 UTC nanoseconds. Offset-carrying strings are exact; naive ones are read in `tz`.

    Integer columns are Unix epoch seconds (or milliseconds when above 1e11). Naive local times that do
    not exist or are ambiguous (DST switches, always outside the session) become NaT (int64 min).
    """
    if pd.api.types.is_integer_dtype(column.dtype):
        raw = column.to_numpy(dtype=np.int64)
        unit = "ms" if raw.size and np.abs(raw).max() > 1e11 else "s"
        return pd.to_datetime(raw, unit=unit, utc=True).as_unit("ns").asi8
    text = column.astype(str).str.strip()
    with_offset = text.str.contains(_OFFSET_RE, regex=True).to_numpy()
    if with_offset.any() and not with_offset.all():
        i = int(np.argmin(with_offset)) if with_offset[0] else int(np.argmax(with_offset))
        if pd.isna(pd.to_datetime(text.iloc[i], errors="coerce")):
            raise TickerSkipped(f"{label} row {column.index[i]}: unparsable timestamp {column.iloc[i]!r}")
        raise TickerSkipped(f"{label} row {column.index[i]}: mixes timestamps with and without a UTC offset "
                            f"({text.iloc[0]!r} vs {text.iloc[i]!r})")
    aware = bool(with_offset.all())
    parsed = _to_datetime(text, aware)
    bad = parsed.isna().to_numpy() | column.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise TickerSkipped(f"{label} row {column.index[i]}: unparsable timestamp {column.iloc[i]!r}")
    if not aware:
        parsed = parsed.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    return pd.DatetimeIndex(parsed).as_unit("ns").asi8


def fill_gaps(values: np.ndarray, present: np.ndarray, max_gap: int, price_columns: list[int]) -> int:
    """Forward-fill interior runs of at most `max_gap` missing minutes, in place; returns minutes filled.

    A filled minute had no trades: prices repeat the previous bar, volume is 0. Runs at the start or end
    of a session (nothing before or after them in that session) are never filled.
    """
    if max_gap <= 0:
        return 0
    filled = 0
    volume_columns = [j for j in range(values.shape[2]) if j not in price_columns]
    for s in range(present.shape[0]):
        missing = ~present[s]
        if not missing.any():
            continue
        edges = np.diff(np.concatenate(([0], missing.astype(np.int8), [0])))
        for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            if start == 0 or stop == SESSION_MINUTES or stop - start > max_gap:
                continue
            values[s, start:stop, price_columns] = values[s, start - 1, price_columns]
            values[s, start:stop, volume_columns] = 0.0
            present[s, start:stop] = True
            filled += int(stop - start)
    return filled


def _to_datetime(text: pd.Series, aware: bool) -> pd.Series:
    # ISO 8601 has a fast C parser; anything else falls back to pandas' format inference.
    for fmt in ("ISO8601", None):
        try:
            parsed = pd.to_datetime(text, format=fmt, utc=aware, errors="coerce")
        except (ValueError, TypeError):
            continue
        if not parsed.isna().any() or fmt is None:
            return parsed
    return pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]" if aware else "datetime64[ns]")


def _exchange_minutes(utc_ns: np.ndarray) -> np.ndarray:
    """UTC nanoseconds -> minutes since the Unix epoch in exchange wall-clock time (DST-aware)."""
    valid = utc_ns != np.iinfo(np.int64).min
    local = np.zeros_like(utc_ns)
    if valid.any():
        index = pd.DatetimeIndex(utc_ns[valid].view("datetime64[ns]"), tz="UTC").tz_convert(EXCHANGE_TZ)
        local[valid] = index.tz_localize(None).asi8
    return local // 60_000_000_000


def _numeric_column(column: pd.Series, name: str, label: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    coerced = pd.to_numeric(column, errors="coerce")
    bad = (coerced.isna() & column.notna()).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise TickerSkipped(f"{label} row {column.index[i]}: non-numeric {name} {column.iloc[i]!r}")
    return coerced.to_numpy(dtype=np.float64, na_value=np.nan)


def _require_columns(label: str, header: list[str], config: PreprocessConfig) -> dict[str, str]:
    wanted = ("timestamp",) + tuple(config.features)
    columns = canonical_columns(header, wanted)
    missing = [name for name in wanted if name not in columns]
    if missing:
        shown = ", ".join(str(h) for h in header[:8]) or "(none)"
        raise TickerSkipped(f"{label}: no usable {'/'.join(missing)} column (header: {shown}; "
                            f"accepted names: {', '.join(a for m in missing for a in COLUMN_ALIASES[m])})")
    return columns


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
