"""The sequences file: atomic creation and the HDF5 layout (schema_version 3 by default, 2 on request; see
docs/data.md and stockpredict/common/layout.py for schema 3).

Layout, per split in SPLITS (a split may hold n = 0 windows; its datasets still exist):
    /<split>/x           float32 (n, seq_len, n_features)   inputs in the file's representation
    /<split>/y           float32 (n,)                       target (close at e + horizon) in it
    /<split>/ticker      int32   (n,)                       index into /tickers
    /<split>/window_end  int64   (n,)                       UTC epoch seconds of minute e
    /<split>/last_close  float64 (n,)                       close at minute e, price units (schema 2)
    /tickers             variable-length UTF-8 strings
Root attributes are written by the pipeline (schema_version, config, representation, transform, ...).
Schema 2 extends schema 1: the same datasets and attributes, plus last_close, representation, transform
and optimum.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from stockpredict.common import layout
from stockpredict.common.errors import UserError
from stockpredict.common.files import DiskFull, disk_full_cause
from stockpredict.common.layout import SCHEMA_VERSION as SCHEMA_VERSION  # re-exported for the pipeline
from stockpredict.common.layout import SPLITS

TEMP_SUFFIX = ".tmp"
# gzip (deflate) is in every HDF5 build, so any HDF5 reader opens the file; level 4 measured best on
# size and chunk-aligned read speed at an affordable write cost (docs/data.md, "HDF5 codecs").
GZIP_LEVEL = 4


def temp_path_for(out: Path, pid: int | None = None) -> Path:
    """The temporary file next to `out` that a run with process id `pid` writes before renaming."""
    return out.parent / f".{out.name}.{pid or os.getpid()}{TEMP_SUFFIX}"


def check_output_path(out: Path, force: bool) -> None:
    """Fail early (before any work) when the output cannot or must not be written."""
    if out.is_dir():
        raise UserError(f"output path {out} is a directory; give a file name such as {out / 'sequences.h5'}")
    if out.exists() and not force:
        raise UserError(f"output {out} already exists; pass --force to overwrite it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {out.parent}: {err.strerror}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise UserError(f"output directory {out.parent} is not writable")


class AtomicOutput:
    """A temporary path next to the output, and a check the writer calls between units of work.

    SIGINT and SIGTERM only set a flag while the file is written; `check()` turns it into
    KeyboardInterrupt / SystemExit(143) at a point where unwinding is safe (a Python signal handler
    that raises can fire inside h5py or a weakref callback, where the exception would be swallowed).
    """

    def __init__(self, path: Path):
        self.path = path
        self.signal: int | None = None

    def _on_signal(self, signum, frame) -> None:
        self.signal = signum

    def check(self) -> None:
        """Raise if SIGINT (KeyboardInterrupt) or SIGTERM (SystemExit 143) arrived."""
        if self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is not None:
            raise SystemExit(128 + self.signal)


@contextlib.contextmanager
def atomic_output(out: Path, force: bool) -> Iterator[AtomicOutput]:
    """Yield an AtomicOutput in out's directory; rename its file to `out` only if the block completes.

    On an exception, SIGINT or SIGTERM the temporary file is removed and `out` is untouched (a full disk
    becomes DiskFull: one line naming `out` and the cause). After a
    SIGKILL the temporary file stays behind (nothing can run), never at `out`; the next run removes
    temporary files of processes that no longer exist.
    """
    check_output_path(out, force)
    _remove_stale_temps(out)
    output = AtomicOutput(temp_path_for(out))
    previous = _install_handlers(output._on_signal)
    try:
        yield output
        output.check()
        with open(output.path, "rb+") as handle:  # data on disk before the rename makes it visible
            os.fsync(handle.fileno())
        if out.exists() and not force:  # another run finished first while we worked
            raise UserError(f"output {out} already exists; pass --force to overwrite it")
        os.replace(output.path, out)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            output.path.unlink()
        cause = disk_full_cause(err) if isinstance(err, Exception) else None
        if cause is not None:  # one line naming the output, never a traceback; nothing was written
            raise DiskFull(out, cause) from None
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def codec_options(compression: str) -> dict:
    """h5py filter arguments of a --compression value."""
    return {"none": {}, "lzf": {"compression": "lzf"},
            "gzip": {"compression": "gzip", "compression_opts": GZIP_LEVEL}}[compression]


def create_layout(h5: h5py.File, counts: dict[str, int], seq_len: int, n_features: int,
                  tickers: list[str], chunk_windows: int, compression: str) -> None:
    """Create every dataset of schema 2 with its final shape, chunked along n."""
    codec = codec_options(compression)
    for split in SPLITS:
        n = counts[split]
        chunk = max(1, min(chunk_windows, n))
        group = h5.create_group(split)
        group.create_dataset("x", shape=(n, seq_len, n_features), dtype=np.float32,
                             chunks=(chunk, seq_len, n_features), maxshape=(None, seq_len, n_features),
                             **codec)
        for name, dtype in (("y", np.float32), ("ticker", np.int32), ("window_end", np.int64),
                            ("last_close", np.float64)):
            group.create_dataset(name, shape=(n,), dtype=dtype, chunks=(max(chunk, 1),), maxshape=(None,),
                                 **codec)
    h5.create_dataset("tickers", data=np.array(tickers, dtype=object), dtype=h5py.string_dtype("utf-8"))


def create_layout_3(h5: h5py.File, n_features: int, tickers: list[str], chunk_windows: int,
                    compression: str) -> None:
    """Create every dataset of schema 3 empty and resizable (the series' length is known only at the end),
    chunked along the first axis: series in layout.SERIES_CHUNK_MINUTES minutes, the rest in windows."""
    codec = codec_options(compression)
    # The series and y are float32 noise to deflate: gzip-4 kept 92% of their bytes and tripled their
    # write time (503 x 21 days, docs/data.md), so they are stored without a filter; the integer columns
    # and last_close (prices with 4 decimals) shrink 2 to 100x and keep the codec.
    for split in SPLITS:
        group = h5.create_group(split)
        group.create_dataset(layout.SERIES, shape=(0, n_features), dtype=np.float32,
                             chunks=(layout.SERIES_CHUNK_MINUTES, n_features), maxshape=(None, n_features))
        group.create_dataset(layout.Y, shape=(0,), dtype=np.float32, chunks=(chunk_windows,),
                             maxshape=(None,))
        for name, dtype in ((layout.START, np.int64), (layout.TICKER, np.int32),
                            (layout.WINDOW_END, np.int64), (layout.LAST_CLOSE, np.float64),
                            (layout.SEGMENT_START, np.int64), (layout.SEGMENT_TICKER, np.int32)):
            group.create_dataset(name, shape=(0,), dtype=dtype, chunks=(chunk_windows,), maxshape=(None,),
                                 **codec)
    h5.create_dataset(layout.TICKERS, data=np.array(tickers, dtype=object), dtype=h5py.string_dtype("utf-8"))


class Appender:
    """Appends rows to a resizable dataset chunked along its first axis, writing whole chunks only (so no
    chunk is compressed twice); `length` counts the rows appended so far, written or pending."""

    def __init__(self, dataset: h5py.Dataset):
        self.dataset = dataset
        self.chunk = dataset.chunks[0]
        self.written = 0
        self.pending: list[np.ndarray] = []
        self.pending_n = 0

    @property
    def length(self) -> int:
        return self.written + self.pending_n

    def append(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        self.pending.append(rows)
        self.pending_n += len(rows)
        if self.pending_n >= self.chunk:
            self._write(whole_chunks_only=True)

    def close(self) -> None:
        self._write(whole_chunks_only=False)

    def _write(self, whole_chunks_only: bool) -> None:
        if not self.pending:
            return
        rows = np.concatenate(self.pending)
        take = (len(rows) // self.chunk) * self.chunk if whole_chunks_only else len(rows)
        self.dataset.resize(self.written + take, axis=0)
        self.dataset[self.written:self.written + take] = rows[:take]
        self.written += take
        self.pending = [rows[take:]] if take < len(rows) else []
        self.pending_n = len(rows) - take


class SplitWriter3:
    """One split of schema 3: ticker-sessions' series and their windows, appended in (ticker, time) order."""

    WINDOW_NAMES = (layout.Y, layout.TICKER, layout.WINDOW_END, layout.LAST_CLOSE)

    def __init__(self, group: h5py.Group):
        self.series = Appender(group[layout.SERIES])
        self.windows = {name: Appender(group[name])
                        for name in (layout.START, *self.WINDOW_NAMES, layout.SEGMENT_START,
                                     layout.SEGMENT_TICKER)}

    def append(self, series: np.ndarray, segment_start: np.ndarray, ticker: int, start: np.ndarray,
               y: np.ndarray, window_end: np.ndarray, last_close: np.ndarray) -> None:
        """One ticker's segments: series rows and window starts relative to this call's series."""
        if len(series) == 0:
            return
        offset = self.series.length
        self.series.append(series)
        self.windows[layout.SEGMENT_START].append(segment_start + offset)
        self.windows[layout.SEGMENT_TICKER].append(np.full(len(segment_start), ticker, np.int32))
        self.windows[layout.START].append(start + offset)
        self.windows[layout.Y].append(y)
        self.windows[layout.TICKER].append(np.full(len(y), ticker, np.int32))
        self.windows[layout.WINDOW_END].append(window_end)
        self.windows[layout.LAST_CLOSE].append(last_close)

    def close(self) -> None:
        for appender in (self.series, *self.windows.values()):
            appender.close()


class SplitWriter:
    """Appends windows to one split's datasets in whole chunks, so no chunk is compressed twice."""

    NAMES = ("x", "y", "ticker", "window_end", "last_close")

    def __init__(self, group: h5py.Group, chunk_windows: int):
        self.group = group
        self.chunk = group["x"].chunks[0] if group["x"].chunks else chunk_windows
        self.offset = 0
        self.pending: list[tuple[np.ndarray, ...]] = []
        self.pending_n = 0

    def append(self, x: np.ndarray, y: np.ndarray, ticker: np.ndarray, window_end: np.ndarray,
               last_close: np.ndarray) -> None:
        if len(x) == 0:
            return
        self.pending.append((x, y, ticker, window_end, last_close))
        self.pending_n += len(x)
        if self.pending_n >= self.chunk:
            self._write(whole_chunks_only=True)

    def close(self) -> None:
        self._write(whole_chunks_only=False)
        expected = self.group["x"].shape[0]
        if self.offset != expected:
            raise RuntimeError(f"wrote {self.offset} windows to /{self.group.name}, expected {expected}")

    def _write(self, whole_chunks_only: bool) -> None:
        if not self.pending:
            return
        arrays = [np.concatenate(parts) for parts in zip(*self.pending)]
        n = len(arrays[0])
        take = (n // self.chunk) * self.chunk if whole_chunks_only else n
        for name, array in zip(self.NAMES, arrays):
            self.group[name][self.offset:self.offset + take] = array[:take]
        self.offset += take
        self.pending = [tuple(a[take:] for a in arrays)] if take < n else []
        self.pending_n = n - take


def _install_handlers(handler) -> dict:
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: leave signal handling to the caller
            pass
    return previous


def _remove_stale_temps(out: Path) -> None:
    for path in out.parent.glob(f".{out.name}.*{TEMP_SUFFIX}"):
        pid = path.name[len(out.name) + 2: -len(TEMP_SUFFIX)]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
