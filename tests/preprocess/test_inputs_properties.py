"""Generated hostile raw bar files through the real preprocessing stage: CSV, .csv.gz and Parquet files
with any header (aliases, duplicate or missing columns, a BOM, another encoding), any cell (NaN, inf,
extreme or negative numbers, huge and negative epoch times, text where numbers belong, control
characters), cut short, overwritten with garbage, empty, as a one-ticker file, a many-ticker file or a
directory mixing them with a good file. Every case ends in a sequences file or a one-line UserError,
never another exception, and leaves nothing at the output path after an error and no temporary file
beside it."""

from __future__ import annotations

import csv
import gzip
import io
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import hypothesis_settings
from preprocess.pipeline import build_dataset
from preprocess.preprocess_config import PreprocessConfig
from stockpredict.common.errors import UserError
from stockpredict.common.sequences import read_sequences_info

REPO = Path(__file__).resolve().parents[2]
# Tiny windows, so a few minutes of bars make a file: every generated case builds a real HDF5 file.
CONFIG = PreprocessConfig(seq_len=3, horizon=1, chunk_windows=16)
SESSION_OPEN_UTC = 1709562600  # 2024-03-04 09:30 New York (EST) in Unix seconds
DAY = 86400

# --- cells -------------------------------------------------------------------------------------------

sane_prices = st.floats(min_value=0.01, max_value=1000, allow_nan=False)
odd_numbers = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e308, -1e308, 5e-324, 2.0**63,
                               -(2.0**63), 1e-300, 9007199254740993.0])
odd_text = st.one_of(st.sampled_from(["", " ", "nan", "NaN", "inf", "-", "1,5", "1e400", "0x10", "١٢٣", "٣",
                                      "\x00", "\ufeff1", "NULL", "None", "true", "1_000", "\u00a0 3 ",
                                      "'; DROP TABLE", "=1+1", "2024-03-04"]),
                     st.text(max_size=12))
values = st.one_of(sane_prices, sane_prices, sane_prices, odd_numbers, st.floats(),
                   st.integers(-(2**70), 2**70), odd_text)
odd_times = st.one_of(st.sampled_from([0, -1, 2**63 - 1, -(2**63), 10**11, -(10**11), 10**14, 10**17,
                                       9 * 10**18, 253402300800, -62135596800, 1.5, math.nan, math.inf]),
                      st.integers(-(2**66), 2**66), odd_text,
                      st.sampled_from(["2024-03-04T09:30:00", "2024-02-30 09:30", "9999-12-31T23:59:59Z",
                                       "0001-01-01", "2024-03-04T25:61:00+00:00", "2024-03-04 09:30:00+99:99",
                                       "1677-09-21 00:12:43", "2262-04-11 23:47:17", "09:30", "930"]))

TIME_FORMS = ("iso_utc", "iso_z", "naive_ny", "epoch_s", "epoch_ms", "epoch_ns", "date_time", "date_hhmm")
TIME_NAMES = {"iso_utc": "timestamp", "iso_z": "datetime", "naive_ny": "Date Time", "epoch_s": "ts",
              "epoch_ms": "window_start", "epoch_ns": "TIMESTAMP", "date_time": ("date", "time"),
              "date_hhmm": ("Day", "ToD")}


def time_cells(form: str, utc_seconds: int) -> list:
    """The cell(s) of one bar time written the way `form` says."""
    from datetime import datetime, timedelta, timezone

    utc = datetime.fromtimestamp(utc_seconds, tz=timezone.utc)
    ny = (utc - timedelta(hours=5)).replace(tzinfo=None)  # EST: March 4-8, 2024 is before the DST switch
    return {"iso_utc": [utc.isoformat()], "iso_z": [utc.strftime("%Y-%m-%dT%H:%M:%SZ")],
            "naive_ny": [ny.strftime("%Y-%m-%d %H:%M:%S")], "epoch_s": [utc_seconds],
            "epoch_ms": [utc_seconds * 1000], "epoch_ns": [utc_seconds * 10**9],
            "date_time": [ny.strftime("%Y-%m-%d"), ny.strftime("%H:%M")],
            "date_hhmm": [int(ny.strftime("%Y%m%d")), int(ny.strftime("%H%M"))]}[form]


@st.composite
def bar_tables(draw, ticker_column: bool):
    """(header, rows) of one file: mostly whole sessions' worth of sane bars, then generated damage."""
    form = draw(st.sampled_from(TIME_FORMS))
    time_header = TIME_NAMES[form]
    time_header = list(time_header) if isinstance(time_header, tuple) else [time_header]
    features = [draw(st.sampled_from(["close", "Close", "CLOSE", "last", "c", "close_price"])),
                draw(st.sampled_from(["volume", "Volume", "vol", "v"]))]
    extra = draw(st.lists(st.sampled_from(["open", "high", "low", "note", "close", "volume", "timestamp", "",
                                           "ticker", "Unnamed: 0"]), max_size=2))
    header = time_header + features + extra + (["symbol"] if ticker_column else [])
    header = draw(st.permutations(header))
    tickers = draw(st.lists(st.sampled_from(["AAA", "BBB", "a b", "ü", "", "1"]), min_size=1, max_size=2,
                            unique=True)) if ticker_column else ["-"]
    # One level per feature (a sane price, or NaN, inf, text, ... for the whole column) and one filler for
    # the extra columns keep the draws per case few; the damage below then hits single cells.
    levels = [draw(st.one_of(sane_prices, sane_prices, sane_prices, values)) for _ in features]
    filler = draw(values)
    rows = []
    for ticker in tickers:
        days = draw(st.sampled_from([2, 3, 1]))
        minutes = draw(st.sampled_from([8, 6, 9, 0, 3]))
        first = draw(st.sampled_from([0, 0, 0, 385, -3, 700]))  # 700: after the close; -3: before the open
        for day in range(days):
            for minute in range(first, first + minutes):
                stamp = SESSION_OPEN_UTC + day * DAY + minute * 60
                cells = {}
                for name, cell in zip(time_header, time_cells(form, stamp)):
                    cells[name] = cell
                for name, level in zip(features, levels):
                    cells[name] = level + 0.01 * len(rows) if isinstance(level, float) else level
                for name in extra:
                    cells.setdefault(name, filler)
                cells["symbol"] = ticker
                rows.append([cells.get(h, "") for h in header])
    n_odd = draw(st.sampled_from([0, 1, 0, 2, 5]))
    for _ in range(n_odd):  # damage some cells: odd times, odd values, rows of the wrong length
        if not rows:
            break
        row = draw(st.integers(0, len(rows) - 1))
        what = draw(st.sampled_from(["time", "value", "short", "long", "duplicate", "swap"]))
        at = header.index(time_header[0]) if what == "time" else draw(st.integers(0, len(header) - 1))
        if what in ("time", "value") and at < len(rows[row]):
            rows[row][at] = draw(odd_times if what == "time" else values)
        elif what == "short":
            rows[row] = rows[row][: draw(st.integers(0, len(header) - 1))]
        elif what == "long":
            rows[row] = rows[row] + [draw(values)]
        elif what == "duplicate":
            copy = list(rows[row])
            if header.index(features[0]) < len(copy):
                copy[header.index(features[0])] = draw(values)
            rows.insert(row, copy)
        else:
            other = draw(st.integers(0, len(rows) - 1))
            rows[row], rows[other] = rows[other], rows[row]
    return header, rows


# --- files -------------------------------------------------------------------------------------------

ENCODINGS = ("utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252", "utf-32")


def csv_bytes(header: list[str], rows: list[list], encoding: str, terminator: str = "\n") -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator=terminator)
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode(encoding, errors="replace")


def parquet_bytes(header: list[str], rows: list[list], types: list[str]) -> bytes:
    """A Parquet file of the table, each column converted to a type of `types` (cells that do not fit it
    become nulls), duplicate names kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for j, kind in enumerate(types):
        cells = [row[j] if j < len(row) else None for row in rows]
        arrays.append(_arrow_column(cells, kind, pa))
    table = pa.Table.from_arrays(arrays, names=[str(h) for h in header])
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _arrow_column(cells, kind, pa):
    def number(cell):
        try:
            value = float(cell)
        except (TypeError, ValueError):
            return None
        return value

    if kind == "float":
        return pa.array([number(c) for c in cells], type=pa.float64())
    if kind == "int":
        return pa.array([int(v) if v is not None and math.isfinite(v) and abs(v) < 2**63 else None
                         for v in map(number, cells)], type=pa.int64())
    if kind in ("timestamp_utc", "timestamp_naive"):
        ints = [int(v) if v is not None and math.isfinite(v) and abs(v) < 9 * 10**15 else None
                for v in map(number, cells)]
        return pa.array(ints, type=pa.int64()).cast(
            pa.timestamp("s", tz="UTC" if kind == "timestamp_utc" else None))
    if kind in ("binary", "binary_bad"):
        return pa.array([None if c is None else (b"\xff" if kind == "binary_bad" else b"") + str(c).encode()
                         for c in cells], type=pa.binary())
    if kind == "date32":
        return pa.array([int(v) // DAY if v is not None and math.isfinite(v) and abs(v) < 2**40 else None
                         for v in map(number, cells)], type=pa.int32()).cast(pa.date32())
    if kind == "bool":
        return pa.array([bool(c) if c is not None else None for c in cells], type=pa.bool_())
    return pa.array([None if c is None else str(c) for c in cells], type=pa.string())


@st.composite
def raw_files(draw, ticker_column: bool) -> tuple[str, bytes]:
    """(file suffix, bytes) of one generated input file."""
    header, rows = draw(bar_tables(ticker_column))
    container = draw(st.sampled_from(["csv", "csv.gz", "parquet"]))
    if container == "parquet":
        types = [draw(st.sampled_from(["float", "int", "string", "timestamp_utc", "timestamp_naive",
                                       "bool", "float", "int", "binary", "binary_bad", "date32",
                                       "string"])) for _ in header]
        data = parquet_bytes(header, rows, types)
        suffix = draw(st.sampled_from([".parquet", ".pq"]))
    else:
        data = csv_bytes(header, rows, draw(st.sampled_from(ENCODINGS)),
                         draw(st.sampled_from(["\n", "\n", "\r\n", "\r"])))
        if container == "csv.gz":
            data = gzip.compress(data, compresslevel=draw(st.integers(0, 9)))
        suffix = draw(st.sampled_from(["." + container] * 4 + [("." + container).upper()]))
    damage = draw(st.sampled_from(["none", "none", "none", "cut", "overwrite", "garbage", "empty", "bom"]))
    if damage == "cut":
        data = data[: int(draw(st.floats(0, 1)) * len(data))]
    elif damage == "overwrite" and data:
        at = draw(st.integers(0, len(data) - 1))
        noise = draw(st.binary(min_size=1, max_size=64))
        data = data[:at] + noise + data[at + len(noise):]
    elif damage == "garbage":
        data = draw(st.binary(max_size=300))
    elif damage == "empty":
        data = b""
    elif damage == "bom":
        data = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x1f\x8b", b"PAR1"])) + data
    return suffix, data


GOOD_CSV = "timestamp,close,volume\n" + "".join(
    f"2024-03-0{4 + d}T{14 + (30 + m) // 60}:{(30 + m) % 60:02d}:00+00:00,{10 + m * 0.01:.2f},{100 + m}\n"
    for d in range(2) for m in range(8))

layouts = st.sampled_from(["one", "one", "beside_good", "many_file", "many_in_dir", "several"])


@st.composite
def raw_inputs(draw) -> tuple[str, list[tuple[str, bytes]]]:
    """(layout, [(file name, bytes)]) of a --raw input: a directory, or (many_file) one file."""
    layout = draw(layouts)
    if layout == "many_file":
        suffix, data = draw(raw_files(ticker_column=True))
        return layout, [("all" + suffix, data)]
    names = ["AAA", "BRK.B", "ü", "a b", "X" * 60, "-x", "Z"]
    files = []
    counts = {"several": [2, 3], "many_in_dir": [2, 1]}  # many_in_dir: a ticker joined across flat files
    count = draw(st.sampled_from(counts[layout])) if layout in counts else 1
    for i in range(count):
        suffix, data = draw(raw_files(ticker_column=layout == "many_in_dir"))
        name = "day" if layout == "many_in_dir" else draw(st.sampled_from(names))
        files.append((f"{name}{i or ''}{suffix}", data))
    if layout == "beside_good":
        files.append(("GOOD.csv", GOOD_CSV.encode()))
    return layout, files


# --- the property ------------------------------------------------------------------------------------

def _assert_one_line(err: BaseException) -> None:
    message = str(err)
    assert message.strip() and "\n" not in message.strip() and "Traceback" not in message, message


def run_case(layout: str, files: list[tuple[str, bytes]], root: Path) -> None:
    raw = root / "raw"
    raw.mkdir()
    for name, data in files:
        (raw / name).write_bytes(data)
    out_dir = root / "out"
    out_dir.mkdir()
    out = out_dir / "seq.h5"
    source = raw / files[0][0] if layout == "many_file" else raw
    try:
        summary = build_dataset(source, out, CONFIG, workers=1, progress=False)
    except UserError as err:
        _assert_one_line(err)
        assert not out.exists(), "an error left a file at the output path"
        assert list(out_dir.iterdir()) == [], f"left behind: {list(out_dir.iterdir())}"
        return
    assert [p.name for p in out_dir.iterdir()] == ["seq.h5"]
    info = read_sequences_info(out)
    assert summary.window_counts["train"] > 0 and info.n_features == 2
    assert sum(summary.window_counts.values()) == sum(info.windows.values())


@hypothesis_settings(3000)
@given(case=raw_inputs())
def test_any_raw_bar_input_gives_a_sequences_file_or_a_one_line_error(case):
    layout, files = case
    with tempfile.TemporaryDirectory() as tmp:
        run_case(layout, files, Path(tmp))


def test_the_generator_reaches_both_outcomes():
    """The property above must see files that build and files that fail, or it tests nothing."""
    outcomes = set()

    @hypothesis_settings(60)
    @given(case=raw_inputs())
    def probe(case):
        layout, files = case
        with tempfile.TemporaryDirectory() as tmp:
            run_case(layout, files, Path(tmp))
            outcomes.add("file" if (Path(tmp) / "out" / "seq.h5").exists() else "error")

    probe()
    assert outcomes == {"file", "error"}, outcomes


# --- the command line: one line on stderr, exit 2, nothing written --------------------------------

def _cli_cases() -> dict[str, tuple[str, bytes]]:
    many = GOOD_CSV.replace("timestamp,", "symbol,timestamp,").replace("\n2024", "\nAAA,2024")
    good_gz = gzip.compress(many.encode())
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({"symbol": ["AAA"] * 4, "ts": [1709562600 + 60 * i for i in range(4)],
                             "close": [1.0] * 4, "volume": [1.0] * 4}), sink)
    return {"garbage bytes": ("all.csv", bytes(range(256)) * 4),
            "truncated gzip": ("all.csv.gz", good_gz[: len(good_gz) // 2]),
            "truncated parquet": ("all.parquet", sink.getvalue()[:-40]),
            "utf-16 with a BOM": ("all.csv", "symbol,ts,close,volume\nAAA,1,2,3\n".encode("utf-16")),
            "empty file": ("all.csv", b"")}


@pytest.mark.parametrize("case", sorted(_cli_cases()))
def test_the_command_line_reports_hostile_input_in_one_line_and_writes_nothing(case, tmp_path):
    name, data = _cli_cases()[case]
    raw = tmp_path / name
    raw.write_bytes(data)
    out_dir = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "preprocess", "--raw", str(raw), "--out",
                             str(out_dir / "seq.h5"), "--workers", "1", "--seq-len", "3", "--horizon", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


# --- what the generated search found (kept as fixed examples) --------------------------------------

def _parquet(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def _found_cases() -> dict[str, tuple[str, list[tuple[str, bytes]]]]:
    import pyarrow as pa

    minutes = [SESSION_OPEN_UTC + 60 * i for i in range(8)]
    flat = "time,close,date,volume,symbol\n" + "".join(f"09:3{i},1.0,2024-03-04,1.0,AAA\n" for i in range(5))
    return {
        # a row cut short leaves a ticker whose only date is missing: factorize's -1 indexed an empty array
        "date missing in the last row": ("many_file", [("all.csv", (flat + "09:35,1").encode())]),
        # Parquet seconds in the year 56143: pandas raised OutOfBoundsDatetime converting to nanoseconds
        "parquet time beyond 2262": ("one", [("AAA.parquet", _parquet({
            "window_start": pa.array([10**13 + m for m in minutes]).cast(pa.timestamp("s", tz="UTC")),
            "close": [1.0] * 8, "volume": [1.0] * 8}))]),
        "epoch seconds beyond 2262": ("one", [("AAA.csv", ("ts,close,volume\n" + "".join(
            f"{10**10 + m},1,1\n" for m in minutes)).encode())]),
        # a binary Parquet column: pandas' str conversion raised UnicodeDecodeError
        "parquet binary times": ("one", [("AAA.parquet", _parquet({
            "ts": [b"\xff"] * 8, "close": [1.0] * 8, "volume": [1.0] * 8}))]),
        # year 9999 text: the fast ISO parser's int64 nanoseconds wrapped around silently
        "ISO text in the year 9999": ("beside_good", [
            ("AAA.csv", ("timestamp,close,volume\n" + "".join(
                f"9999-03-04T14:3{i}:00+00:00,1,1\n" for i in range(8))).encode()),
            ("GOOD.csv", GOOD_CSV.encode())]),
        # one ticker in two flat files, one with date + time, one with a timestamp: KeyError 'timestamp'
        "a ticker's files with different time columns": ("many_in_dir", [
            ("day.csv", ("date,time,close,volume,symbol\n" + "".join(
                f"2024-03-04,09:3{i},1.0,1.0,AAA\n" for i in range(8))).encode()),
            ("day1.csv", ("timestamp,close,volume,symbol\n" + "".join(
                f"2024-03-05T14:3{i}:00+00:00,1.0,1.0,AAA\n" for i in range(8))).encode())]),
    }


@pytest.mark.parametrize("case", sorted(_found_cases()))
def test_inputs_the_search_found_are_a_file_or_a_one_line_error(case, tmp_path):
    layout, files = _found_cases()[case]
    run_case(layout, files, tmp_path)
