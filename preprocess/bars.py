"""Raw minute bars of one ticker -> a clean (session, minute) grid of the regular session.

Pure functions over pandas/numpy; no file is written here. A problem confined to one ticker raises
`TickerSkipped` with a one-line reason naming the file and the row (the file's line number, header = 1;
for Parquet the 1-based row); normal vendor mess (unsorted rows, exact duplicates, pre/post-market bars,
skipped minutes) is handled and counted in `TickerSeries.row_counts`. Each series also carries an
`InputCheck`: how its times were read and whether they look like the regular US session (the time-zone
and bar-label checks of preprocess.inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from preprocess import formats, timestamps
from preprocess.preprocess_config import PRICE_FEATURES, PreprocessConfig

EXCHANGE_TZ = "America/New_York"   # NYSE/Nasdaq: sessions are calendar days in this zone
SESSION_OPEN_MINUTE = 9 * 60 + 30  # 09:30 exchange time, minutes after midnight
SESSION_MINUTES = 390              # 09:30 .. 15:59, bars stamped at the minute start
# Time-zone check (docs/data.md, "Time-zone safety"): regular US minute bars of liquid stocks cover
# nearly every session minute, and the day's heaviest trading is at the open and the close.
LOW_COVERAGE = 0.6                 # share of regular-session minutes present below which to warn
EDGE_MINUTES = 30                  # the volume peak should lie within this many minutes of open/close
PEAK_BLOCK = 5                     # minutes summed when locating the volume peak (smooths noise)
EDGE_CLOCK_MINUTES = (-1, 0, SESSION_MINUTES - 1, SESSION_MINUTES)  # 09:29, 09:30, 15:59, 16:00

# Kept for callers of earlier versions; the column rules live in preprocess.formats.
TICKER_ALIASES = formats.TICKER_ALIASES
file_sha256 = formats.file_sha256


class TickerSkipped(Exception):
    """One ticker's input is unusable; the message is the one-line reason (names the file and row)."""


@dataclass
class InputCheck:
    """How one ticker's input was understood, and what its bars look like (for the summary and warnings).

    Counts are over distinct (session, minute) bars of the regular session, before gap filling.
    """

    time: str                         # time column(s) and how they were read
    zone: str                         # the zone applied (--tz) or where the zone came from
    bar_label: str                    # "start" or "end" (as configured)
    regular_minutes: int              # session minutes with a bar
    sessions: int                     # sessions with at least one regular-session bar
    volume_profile: np.ndarray | None = None  # (390,) share of this ticker's session volume per minute
    # Sessions with a bar at each minute around the open and close (as read, after --bar-label):
    # start-labelled regular bars run 09:30-15:59; end-labelled ones 09:31-16:00.
    edge_sessions: dict = field(default_factory=dict)   # {"09:29": n, "09:30": n, "15:59": n, "16:00": n}
    alternative: dict | None = None   # the same check with naive times read in another zone (see below)

    @property
    def coverage(self) -> float:
        return self.regular_minutes / (SESSION_MINUTES * self.sessions) if self.sessions else 0.0


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
    check: InputCheck | None = None


def read_ticker_csv(path: Path, config: PreprocessConfig) -> pd.DataFrame:
    """Read one ticker's file (CSV, .csv.gz or Parquet) into canonical columns (row numbers as index)."""
    try:
        return formats.read_frame(path, config)
    except formats.SourceSkipped as err:
        raise TickerSkipped(str(err)) from None


def clean_bars(frame: pd.DataFrame, ticker: str, label: str, config: PreprocessConfig) -> TickerSeries:
    """Parse times, keep the regular session, sort, de-duplicate and grid one ticker's bars.

    `frame` has canonical columns (see preprocess.formats: `timestamp` or `date` + `time`, one column per
    configured feature, optionally `source` naming each row's file), indexed by row number.
    Raises TickerSkipped for problems that make this ticker unusable.
    """
    if len(frame) == 0:
        raise TickerSkipped(f"{label}: empty file (header only)")
    where = _row_namer(frame, label)
    features = list(config.features)
    numeric = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        numeric[:, j] = _numeric_column(frame[name], name, where)

    columns = frame.attrs.get("columns") or {c: c for c in ("timestamp", "date", "time") if c in frame}
    if "timestamp" in frame and "date" in frame:
        # One ticker's rows joined from flat files whose time columns differ (`timestamp` in one,
        # `date` + `time` in another): neither reading fits every row.
        raise TickerSkipped(f"{label}: its files give the bar times in different columns (a timestamp "
                            f"column in some, date and time in others); use one layout for every file")
    try:
        reading = timestamps.read_times(frame, columns, where, config.tz, config.bar_label)
    except timestamps.TimeError as err:
        raise TickerSkipped(str(err)) from None
    utc_ns = reading.utc_ns
    _reject_dates_without_times(reading, columns, label)
    local_minutes = _exchange_minutes(utc_ns)
    day = local_minutes // 1440
    minute = local_minutes % 1440 - SESSION_OPEN_MINUTE
    in_session = (minute >= 0) & (minute < SESSION_MINUTES) & (utc_ns != timestamps.NAT)
    counts = {"out_of_session_rows": int((~in_session).sum()),
              "unsorted_files": int(np.any(np.diff(utc_ns) < 0))}
    valid = utc_ns != timestamps.NAT
    check = InputCheck(time=reading.description, zone=reading.zone, bar_label=config.bar_label,
                       regular_minutes=0, sessions=0,
                       edge_sessions={clock(m): len(np.unique(day[valid & (minute == m)]))
                                      for m in EDGE_CLOCK_MINUTES})

    all_numeric = numeric  # every row, for the alternative time-zone reading below
    lines = np.arange(len(frame))[in_session]
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
            rows = _rows(where, lines[i - 1], lines[i])
            raise TickerSkipped(f"{rows}: conflicting bars for the same minute")
        keep = np.ones(len(key), dtype=bool)
        keep[repeat] = False
        counts["duplicate_rows"] = int(repeat.size)
        day, minute, numeric = day[keep], minute[keep], numeric[keep]
    else:
        counts["duplicate_rows"] = 0

    days, session_index = np.unique(day, return_inverse=True)
    check.regular_minutes, check.sessions = len(day), len(days)
    if "volume" in features:
        check.volume_profile = volume_profile(minute, numeric[:, features.index("volume")])
    if reading.wall_ns is not None and looks_shifted(check):
        check.alternative = _alternative_reading(reading.wall_ns, config.tz, all_numeric, features)

    window_minutes = config.seq_len + config.horizon
    if len(day) < window_minutes:
        raise TickerSkipped(f"{label}: only {len(day)} regular-session minutes, fewer than one window "
                            f"(seq_len + horizon = {window_minutes})")

    values = np.full((len(days), SESSION_MINUTES, len(features)), np.nan)
    present = np.zeros((len(days), SESSION_MINUTES), dtype=bool)
    values[session_index, minute] = numeric
    present[session_index, minute] = True
    prices = [j for j, f in enumerate(features) if f in PRICE_FEATURES]
    counts["filled_minutes"] = fill_gaps(values, present, config.fill_gaps, price_columns=prices)
    return TickerSeries(ticker=ticker, sessions=days.astype("datetime64[D]"), values=values,
                        present=present, row_counts=counts, check=check)


def volume_profile(minute: np.ndarray, volume: np.ndarray) -> np.ndarray | None:
    """(390,) share of the total volume traded at each session minute (NaN counts as 0); None if none."""
    weights = np.where(np.isfinite(volume) & (volume > 0), volume, 0.0)
    profile = np.bincount(minute, weights=weights, minlength=SESSION_MINUTES)[:SESSION_MINUTES]
    total = profile.sum()
    return profile / total if total > 0 else None


def volume_peak_minute(profile: np.ndarray) -> int:
    """Session minute (0 = 09:30) starting the PEAK_BLOCK-minute block with the most volume."""
    blocks = profile[: SESSION_MINUTES // PEAK_BLOCK * PEAK_BLOCK].reshape(-1, PEAK_BLOCK).sum(axis=1)
    return int(np.argmax(blocks)) * PEAK_BLOCK


def peak_near_open_or_close(minute: int) -> bool:
    """Whether a session minute lies within EDGE_MINUTES of the open or the close."""
    return minute < EDGE_MINUTES or minute >= SESSION_MINUTES - EDGE_MINUTES


def looks_shifted(check: InputCheck) -> bool:
    """Few regular-session minutes, or the volume peak away from open and close: a time-zone suspect."""
    if check.coverage < LOW_COVERAGE:
        return True
    return check.volume_profile is not None and not peak_near_open_or_close(
        volume_peak_minute(check.volume_profile))


def alternative_zone(tz: str) -> str:
    """The zone a wrong --tz is most likely confused with: UTC for exchange time, and vice versa."""
    return "UTC" if tz != "UTC" else EXCHANGE_TZ


def clock(minute: int) -> str:
    """Session minute (0 = 09:30) -> "HH:MM" exchange time."""
    total = SESSION_OPEN_MINUTE + minute
    return f"{total // 60:02d}:{total % 60:02d}"


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


def _alternative_reading(wall_ns: np.ndarray, tz: str, numeric: np.ndarray, features: list[str]) -> dict:
    """Coverage and volume peak of the same naive times read in alternative_zone(tz) instead of tz."""
    zone = alternative_zone(tz)
    local = _exchange_minutes(timestamps.localize(wall_ns, zone))
    minute = local % 1440 - SESSION_OPEN_MINUTE
    in_session = (minute >= 0) & (minute < SESSION_MINUTES)
    key, first = np.unique((local // 1440 * SESSION_MINUTES + minute)[in_session], return_index=True)
    sessions = len(np.unique(key // SESSION_MINUTES))
    result = {"tz": zone, "regular_minutes": int(len(key)), "sessions": int(sessions), "volume_profile": None}
    if "volume" in features:
        result["volume_profile"] = volume_profile(minute[in_session][first],
                                                  numeric[in_session][first, features.index("volume")])
    return result


def _reject_dates_without_times(reading: timestamps.TimeReading, columns: dict, label: str) -> None:
    """A date-only column (every bar at 00:00) would put every bar outside the session: say so."""
    stamps = reading.wall_ns if reading.wall_ns is not None else reading.utc_ns
    valid = stamps[reading.utc_ns != timestamps.NAT]
    if len(valid) < 2:
        return
    minute_of_day = valid // timestamps.NS_PER_MINUTE % 1440
    if (minute_of_day == minute_of_day[0]).all():
        at = f"{minute_of_day[0] // 60:02d}:{minute_of_day[0] % 60:02d}"
        names = " + ".join(columns.get(c, c) for c in ("timestamp", "date", "time") if c in columns)
        raise TickerSkipped(f"{label}: all {len(valid)} bars are at {at} ({names} holds no time of day); "
                            f"name the time-of-day column one of: {', '.join(formats.TIME_ALIASES)}")


def _exchange_minutes(utc_ns: np.ndarray) -> np.ndarray:
    """UTC nanoseconds -> minutes since the Unix epoch in exchange wall-clock time (DST-aware)."""
    valid = utc_ns != timestamps.NAT
    local = np.zeros_like(utc_ns)
    if valid.any():
        index = pd.DatetimeIndex(utc_ns[valid].view("datetime64[ns]"), tz="UTC").tz_convert(EXCHANGE_TZ)
        local[valid] = index.tz_localize(None).asi8
    return local // timestamps.NS_PER_MINUTE


def _row_namer(frame: pd.DataFrame, label: str):
    """Row position -> "AAPL.csv row 12" (or "ALL (2024-03-05.csv.gz row 12)" for rows joined from files)."""
    index = frame.index.to_numpy()
    if "source" in frame:
        source = frame["source"].to_numpy()
        return lambda i: f"{label}: {source[i]} row {index[i]}"
    return lambda i: f"{label} row {index[i]}"


def _rows(where, i: int, j: int) -> str:
    first, second = where(i), where(j)
    prefix, _, number = first.rpartition(" row ")
    if second.startswith(prefix + " row "):
        return f"{prefix} rows {number} and {second.rpartition(' row ')[2]}"
    return f"{first} and {second}"


def _numeric_column(column: pd.Series, name: str, where) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    coerced = pd.to_numeric(column, errors="coerce")
    bad = (coerced.isna() & column.notna()).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise TickerSkipped(f"{where(i)}: non-numeric {name} {timestamps.shown(column.iloc[i])}")
    return coerced.to_numpy(dtype=np.float64, na_value=np.nan)
