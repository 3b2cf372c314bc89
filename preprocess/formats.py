"""Input files: which files a `--raw` path names, how each is read, and how their rows reach one ticker.

Accepted (docs/data.md, "Input formats"): CSV (`.csv`), gzip-compressed CSV (`.csv.gz`) and Parquet
(`.parquet`, `.pq`, read with pyarrow). A file either holds one ticker, named by the file (`AAPL.csv`,
`BRK.B.parquet`), or many, in a ticker column (`ticker`, `symbol`, ...), as vendors' per-day "flat files"
do; a directory may hold either kind. Rows of one ticker spread over several files are joined.

Readers return frames with canonical column names (`timestamp`, or `date` + `time`; the features;
`ticker`) whose index is the row number a user sees: the file line for CSV (header = 1), the 1-based row
for Parquet. `frame.attrs["columns"]` keeps the file's own names for messages and the summary.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from preprocess.preprocess_config import PreprocessConfig
from stockpredict.common.errors import UserError
from stockpredict.common.files import file_sha256
from stockpredict.common.logs import get_logger

log = get_logger("stockpredict.preprocess")

# Longest first, so "x.csv.gz" is not taken for a ".gz" of something else.
SUFFIXES = {".csv.gz": "csv.gz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# Header names are matched after lower-casing and mapping spaces/dashes to "_"; first alias wins.
TIMESTAMP_ALIASES = ("timestamp", "datetime", "date_time", "time_stamp", "ts", "window_start")
DATE_ALIASES = ("date", "day", "trade_date", "trading_date")
TIME_ALIASES = ("time", "tod", "time_of_day", "timeofday", "hhmm", "hhmmss")
FEATURE_ALIASES = {
    "close": ("close", "close_price", "closeprice", "last", "c"),
    "volume": ("volume", "vol", "v"),
    "open": ("open", "open_price", "o"),
    "high": ("high", "high_price", "h"),
    "low": ("low", "low_price", "l"),
}
TICKER_ALIASES = ("ticker", "symbol", "sym", "name")
CSV_HEADER_LINES = 1


class SourceSkipped(Exception):
    """One file (or one ticker of it) is unusable; the message is the one-line reason naming it."""


def input_kind(path: Path) -> str | None:
    """"csv", "csv.gz" or "parquet" by the file name's ending (case-insensitive); None if not an input."""
    name = path.name.lower()
    return next((kind for suffix, kind in SUFFIXES.items() if name.endswith(suffix)), None)


def ticker_from_path(path: Path) -> str:
    """The ticker a one-ticker file names: its name without the input suffix (`BRK.B.csv.gz` -> BRK.B)."""
    name = path.name
    suffix = next(s for s in SUFFIXES if name.lower().endswith(s))
    return name[: len(name) - len(suffix)]


def list_input_files(directory: Path) -> list[Path]:
    """Input files of a directory, sorted by name; hidden files and other endings are ignored."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.startswith(".") and input_kind(p) is not None)


def read_header(path: Path) -> list[str]:
    """Column names of an input file. Raises SourceSkipped for an empty or unreadable file."""
    try:
        if input_kind(path) == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return [str(h) for h in pd.read_csv(path, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise SourceSkipped(f"{path.name}: empty file") from None
    except ImportError:
        raise UserError("reading Parquet needs pyarrow: .venv/bin/pip install pyarrow") from None
    except Exception as err:  # parsers raise many types (ParserError, ArrowInvalid, OSError, gzip's)
        raise SourceSkipped(f"{path.name}: not a readable {input_kind(path)} file ({_first_line(err)})") \
            from None


def normalise_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def resolve_columns(label: str, header: list[str], features: Iterable[str],
                    with_ticker: bool = False) -> dict[str, str]:
    """Map canonical names to the file's header names.

    The time is one `timestamp` column when the header has one (TIMESTAMP_ALIASES), else a `date` and a
    `time` column joined, else a lone date or time column (checked later for holding times of day).
    Raises SourceSkipped listing the accepted names when a required column is missing.
    """
    normalised = {}
    for h in header:
        normalised.setdefault(normalise_name(h), h)

    def first(aliases):
        return next((normalised[a] for a in aliases if a in normalised), None)

    found: dict[str, str] = {}
    stamp, date, time = first(TIMESTAMP_ALIASES), first(DATE_ALIASES), first(TIME_ALIASES)
    if stamp is not None:
        found["timestamp"] = stamp
    elif date is not None and time is not None:
        found["date"], found["time"] = date, time
    elif date is not None or time is not None:
        found["timestamp"] = date if date is not None else time
    missing = [] if found else ["timestamp"]
    for name in features:
        column = first(FEATURE_ALIASES[name])
        if column is None:
            missing.append(name)
        else:
            found[name] = column
    if with_ticker:
        found["ticker"] = first(TICKER_ALIASES)
    if missing:
        shown = ", ".join(str(h) for h in header[:8]) or "(none)"
        accepted = "; ".join(f"{m}: " + ", ".join(
            (TIMESTAMP_ALIASES + DATE_ALIASES + TIME_ALIASES) if m == "timestamp" else FEATURE_ALIASES[m])
            for m in missing)
        raise SourceSkipped(f"{label}: no usable {'/'.join(missing)} column (header: {shown}; accepted "
                            f"names: {accepted})")
    return found


def has_ticker_column(header: list[str]) -> bool:
    """Whether a header names a ticker/symbol column (a file holding many tickers)."""
    return any(normalise_name(h) in TICKER_ALIASES for h in header)


def read_frame(path: Path, config: PreprocessConfig, with_ticker: bool = False,
               header: list[str] | None = None) -> pd.DataFrame:
    """Read the time, feature (and ticker) columns of one file, renamed to canonical names.

    Index: row numbers as a user sees them. Raises SourceSkipped for an unusable file.
    """
    header = read_header(path) if header is None else header
    columns = resolve_columns(path.name, header, config.features, with_ticker)
    wanted = list(dict.fromkeys(columns.values()))
    try:
        if input_kind(path) == "parquet":
            frame = _decode_binary_columns(pd.read_parquet(path, columns=wanted, engine="pyarrow"))
            frame.index = np.arange(1, len(frame) + 1)
        else:
            frame = read_csv_columns(path, wanted, columns["ticker"] if with_ticker else None)
            frame.index = frame.index + CSV_HEADER_LINES + 1  # file lines, as in an editor
    except Exception as err:  # see read_header
        raise SourceSkipped(f"{path.name}: not a readable {input_kind(path)} file ({_first_line(err)})") \
            from None
    frame = frame.rename(columns={v: k for k, v in columns.items()})
    frame.attrs["columns"] = columns
    frame.attrs["kind"] = input_kind(path)
    return frame


def _decode_binary_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet binary columns arrive as bytes objects, which pandas' text operations cannot take (and
    may not be UTF-8): decode them, an undecodable byte becoming U+FFFD, so the checks name the row."""
    for j in range(frame.shape[1]):
        column = frame.iloc[:, j]
        first = column.first_valid_index()
        if column.dtype == object and first is not None and isinstance(column.loc[first], bytes):
            frame.isetitem(j, column.map(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes)
                                         else v))
    return frame


def read_csv_columns(path: Path, usecols: list[str], ticker: str | None = None) -> pd.DataFrame:
    """Some columns of a CSV (.gz) file. pyarrow's reader parses about twice as fast as pandas' and turns
    ISO 8601 columns into datetimes; on anything it rejects, pandas' reader runs instead, so a bad file
    gets the same one-line reason (naming the row) either way."""
    dtype = {ticker: str} if ticker else None
    try:
        return pd.read_csv(path, usecols=usecols, dtype=dtype, engine="pyarrow")
    except Exception:  # pyarrow's errors name no row; pandas' parser or our checks will
        return pd.read_csv(path, usecols=usecols, dtype=dtype, low_memory=False)


def split_by_ticker(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{ticker: its rows} of a frame with a `ticker` column (dropped from the parts), tickers sorted."""
    tickers = frame.pop("ticker").astype(str).str.strip()
    parts = {}
    for ticker, group in frame.groupby(tickers.to_numpy(), sort=True):
        group.attrs["columns"] = frame.attrs["columns"]
        parts[str(ticker)] = group
    return parts


def join_parts(parts: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """One ticker's rows from several files, in file order, with a `source` column naming each row's file
    (so a message can say `2024-03-05.csv.gz row 17`)."""
    if len(parts) == 1:
        return parts[0][1]
    joined = pd.concat([frame for _, frame in parts])
    joined["source"] = pd.Categorical(np.repeat([name for name, _ in parts], [len(f) for _, f in parts]))
    joined.attrs["columns"] = parts[0][1].attrs["columns"]
    return joined


def plan_inputs(raw: Path) -> tuple[list[Path], list[tuple[Path, list[str]]]]:
    """Sort the input files of `raw` into (one-ticker files, [(many-ticker file, header)]).

    A single file must hold many tickers. Raises UserError when `raw` names no input at all.
    """
    if not raw.exists():
        raise UserError(f"input {raw} does not exist")
    if raw.is_file():
        if input_kind(raw) is None:
            raise UserError(f"input file {raw} is not .csv, .csv.gz or .parquet")
        try:
            header = read_header(raw)
        except SourceSkipped as err:
            raise UserError(str(err)) from None
        if not has_ticker_column(header):
            raise UserError(f"input file {raw} has no ticker/symbol column (a single file must hold all "
                            f"tickers; otherwise pass a directory of <TICKER>.csv files)")
        return [], [(raw, header)]
    files = list_input_files(raw)
    if not files:
        raise UserError(f"input directory {raw} has no <TICKER>.csv files (nor .csv.gz, .parquet, or "
                        f"files with a ticker column)")
    one, many = [], []
    for path in files:
        try:
            header = read_header(path)
        except SourceSkipped:
            one.append(path)  # reported by the reader, with the ticker the file names
            continue
        if has_ticker_column(header):
            many.append((path, header))
        else:
            one.append(path)
    return one, many


TaskRunner = Callable[[list], Iterable]


def read_many_ticker_file(path: Path, config: PreprocessConfig, header: list[str]):
    """Task: (file name, sha256, {ticker: frame} or a skip reason)."""
    digest = file_sha256(path)
    try:
        frame = read_frame(path, config, with_ticker=True, header=header)
    except SourceSkipped as err:
        return path.name, digest, str(err)
    if len(frame) == 0:
        return path.name, digest, f"{path.name}: empty file (header only)"
    return path.name, digest, split_by_ticker(frame)


def gather_tickers(many: list[tuple[Path, list[str]]], config: PreprocessConfig, run: TaskRunner,
                   single_file: bool
                   ) -> tuple[dict[str, tuple[str, pd.DataFrame]], dict[str, str], dict[str, str]]:
    """Read files holding many tickers (in parallel through `run`) and join each ticker's rows.

    Returns ({ticker: (label, frame)}, {file: skip reason}, {file: sha256}); a label names where the rows
    came from: "all.csv (AAPL)", or "AAPL (44 files)". With `single_file` (the `--raw` path is that file)
    a problem with it is a UserError, as there is nothing else to read.
    """
    parts: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    skipped, hashes = {}, {}
    tasks = [(read_many_ticker_file, (path, config, header)) for path, header in many]
    for name, digest, result in run(tasks):
        hashes[name] = digest
        if isinstance(result, str):
            if single_file:
                raise UserError(result if "empty" not in result else f"input file {name} has no rows")
            log.warning("skipping %s", result)
            skipped[name] = result
            continue
        for ticker, frame in result.items():
            parts.setdefault(ticker, []).append((name, frame))
    groups = {}
    for ticker, ticker_parts in sorted(parts.items()):
        label = (f"{ticker_parts[0][0]} ({ticker})" if len(ticker_parts) == 1
                 else f"{ticker} ({len(ticker_parts)} files)")
        groups[ticker] = (label, join_parts(ticker_parts))
    return groups, skipped, hashes


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
