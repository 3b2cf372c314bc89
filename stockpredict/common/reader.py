"""The one reader of windows, for every schema of the sequences file. numpy and h5py only (no TensorFlow), so
the trainer (job/data.py), evaluation, the measuring programs, the benchmarks and the tests all build their
(batch, seq_len, n_features) windows here, and a file's schema changes nothing but the speed.

    windows = SplitWindows(path, "train", start, stop)    # rows [start, stop) of a split, in memory
    x, y = windows.batch(rows)                             # rows relative to start, any order
    for x, y in iter_batches(windows, epoch_order(len(windows), seed, epoch, rank), 256): ...
    arrays = load_split(path, "test")                      # x, y, ticker, window_end, last_close

Schema 3 stores each ticker-session's minutes once (/<split>/series) and each window's first row
(/<split>/start); a window is series[start : start + seq_len] with the representation's per-window shift
(the returns representation subtracts the window's last stored close from its price columns, see
common/transform.py). Gathering 60 consecutive rows of 8 bytes (2 float32 features) per window is one
numpy fancy index on a sliding-window view: millions of windows per second on one core. Schemas 1 and 2
store every window; their rows are read whole into memory, so both layouts serve any order of rows and
the shuffle below gives the same batches from either.

The shuffle: one uniform permutation of the rank's shard per epoch, from numpy's generator seeded with
(seed, epoch, rank). Defined on window indices, never on storage, so a schema-2 and a schema-3 file of
the same input train on the same batches. Why not the earlier two-level block shuffle (16 random blocks
of 2,048 consecutive windows, permuted in a buffer): consecutive windows share 59 of 60 minutes, so each
buffer's batches came from only 16 stretches of the data; with random access now cheap every batch
draws from the whole shard.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from stockpredict.common import layout
from stockpredict.common import transform as transforms
from stockpredict.common.errors import UserError

# Windows per contiguous piece when a whole split is read (evaluation, load_split).
EVAL_BATCH_WINDOWS = 8192
# Windows loaded into memory at a time when a split is walked in order (iter_split): 262,144 schema-2
# windows of 60 x 2 float32 are 126 MB, so evaluating a large schema-2 file keeps memory bounded.
LOAD_WINDOWS = 262144
# numpy integer types whose itemsize is one minute of n_features float32, for the fast gather.
_ROW_TYPES = {4: np.uint32, 8: np.uint64, 16: np.complex128}


def shard_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [start, stop) of an n-row split owned by `rank` of `size`; shards differ by at most 1 row."""
    return rank * n // size, (rank + 1) * n // size


def steps_per_epoch(n_train: int, batch_size: int, size: int) -> int:
    """floor(n_train / global batch): the same on every rank, so no rank waits in an allreduce for
    another that ran out of data. The smallest shard (n_train // size rows) always has enough."""
    return n_train // (batch_size * size)


def epoch_order(n: int, seed: int, epoch: int, rank: int) -> np.ndarray:
    """The order in which a rank visits its n-window shard in one epoch (1-based): a permutation of
    0..n-1, deterministic in (seed, epoch, rank)."""
    return np.random.default_rng([seed, epoch, rank]).permutation(n)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SplitWindows:
    """Rows [start, stop) of one split of a sequences file (any readable schema), held in memory.

    Memory: schema 3 about 10 bytes per window of series (one ticker-session's 385 minutes serve its 326
    windows) + 12 (start, y) + 20 with `extras`; schemas 1 and 2 the stored windows, 480 bytes each for
    60 x 2 features. `extras` also loads ticker, window_end and last_close (evaluation, predictions);
    training needs only x and y.
    """

    def __init__(self, path: str | Path, split: str, start: int = 0, stop: int | None = None,
                 extras: bool = True):
        self.path, self.split = str(path), split
        try:
            handle = h5py.File(path, "r")
        except OSError as err:
            raise UserError(f"{path} is not a readable HDF5 file ({err})") from None
        with handle:
            try:
                self._read(handle, split, start, stop, extras)
            except (OSError, KeyError, RuntimeError) as err:  # h5py: a chunk, a dataset or an attribute
                detail = " ".join(str(err).split())[:200]
                raise UserError(f"{path}: cannot read /{split} ({detail}); the file is damaged or cut "
                                f"short, re-run preprocessing") from None

    def _read(self, handle, split: str, start: int, stop: int | None, extras: bool) -> None:
        path = self.path
        attrs = handle.attrs
        self.schema = int(attrs.get(layout.ATTR_SCHEMA_VERSION, 0))
        if self.schema not in layout.READABLE_SCHEMAS:
            raise UserError(f"{path}: schema_version is {self.schema}, this reader reads schema_version "
                            f"{' or '.join(map(str, layout.READABLE_SCHEMAS))}; re-run preprocessing "
                            f"(make preprocess) with this version of the toolkit")
        self.transform = transforms.from_attrs(attrs)
        self.close_index = self.transform.close_index
        group = handle[split]
        n = group[layout.Y].shape[0]
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"rows [{start}, {stop}) outside /{split} ({n} windows)")
        self.start, self.stop = start, stop
        self.y = group[layout.Y][start:stop]
        self.ticker = self.window_end = self.last_close = None
        if extras or self.schema == 3:
            self.ticker = group[layout.TICKER][start:stop]
        if self.schema == 3:
            self.seq_len = int(attrs[layout.ATTR_SEQ_LEN])
            self._load_series(group, start, stop)
        else:
            self._x = group[layout.X][start:stop]
            self.seq_len = self._x.shape[1]
        if extras:
            if layout.WINDOW_END in group:
                self.window_end = group[layout.WINDOW_END][start:stop]
            if layout.LAST_CLOSE in group:
                self.last_close = group[layout.LAST_CLOSE][start:stop]
            else:  # schema 1: the last close from the stored (min-max scaled) window
                last = self._x[:, -1:, :]
                self.last_close = self.transform.inputs_inverse(last, None, self.ticker)[:, -1,
                                                                                        self.close_index]
        if not extras and self.schema == 3:
            self.ticker = None

    def _load_series(self, group, start: int, stop: int) -> None:
        """The series rows this shard's windows cover, and their starts relative to them; checks every
        window lies inside its own ticker-session (a damaged file is a one-line error)."""
        series = group[layout.SERIES]
        m, n_features = series.shape
        starts = group[layout.START][start:stop].astype(np.int64)
        L = self.seq_len
        where = f"{self.path}: /{self.split}/{layout.START}"
        if starts.size:
            segments = group[layout.SEGMENT_START][()].astype(np.int64)
            seg_ticker = group[layout.SEGMENT_TICKER][()]
            if starts.min() < 0 or starts.max() + L > m:
                bad = int(np.flatnonzero((starts < 0) | (starts + L > m))[0])
                raise UserError(f"{where}[{start + bad}] = {int(starts[bad])}: the window's {L} minutes lie "
                                f"outside /{self.split}/{layout.SERIES} ({m} minutes); the file is damaged, "
                                f"re-run preprocessing")
            seg = np.searchsorted(segments, starts, side="right") - 1
            ends = np.append(segments[1:], m)
            wrong = (seg < 0) | (starts + L > ends[np.maximum(seg, 0)]) | (
                seg_ticker[np.maximum(seg, 0)] != self.ticker)
            if wrong.any():
                bad = int(np.flatnonzero(wrong)[0])
                raise UserError(f"{where}[{start + bad}] = {int(starts[bad])}: the window crosses the end of "
                                f"its ticker-session or names another ticker; the file is damaged, re-run "
                                f"preprocessing")
            low, high = int(starts.min()), int(starts.max()) + L
        else:
            low = high = 0
        self._series = np.ascontiguousarray(series[low:high], dtype=np.float32)
        self._starts = starts - low
        row_type = _ROW_TYPES.get(4 * n_features)
        if row_type is not None and len(self._series) >= L:
            rows = self._series.view(row_type).reshape(len(self._series))
            self._windows = np.lib.stride_tricks.sliding_window_view(rows, L)
        else:
            self._windows = None
        self._offsets = np.arange(L)
        self.n_features = n_features
        self._relative = tuple(self.transform.relative_columns)

    def __len__(self) -> int:
        return self.stop - self.start

    def x(self, rows) -> np.ndarray:
        """float32 (len(rows), seq_len, n_features) model inputs of rows (relative to start; an index
        array or a slice), in the file's representation."""
        if self.schema != 3:
            return self._x[rows]
        starts = self._starts[rows]
        if self._windows is not None:
            x = self._windows[starts].view(np.float32).reshape(len(starts), self.seq_len, self.n_features)
        else:
            x = self._series[starts[:, None] + self._offsets]
        if self._relative and len(starts):
            last = x[:, -1, self.close_index].copy()[:, None]
            for j in self._relative:
                x[:, :, j] -= last
        return x

    def batch(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of rows (relative to start)."""
        return self.x(rows), self.y[rows]


def iter_batches(windows: SplitWindows, order: np.ndarray, batch_size: int, first: int = 0,
                 stop: int | None = None, threads: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches first..stop-1 of `order` (rows of `windows`), batch_size rows each, in order.

    threads > 1 builds batches on that many threads (numpy's gather and subtraction release the GIL),
    a few batches ahead; the batches and their order are the same for any thread count.
    """
    stop = len(order) // batch_size if stop is None else stop
    build = lambda i: windows.batch(order[i * batch_size:(i + 1) * batch_size])  # noqa: E731
    if threads <= 1:
        for i in range(first, stop):
            yield build(i)
        return
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="windows") as pool:
        ahead = 4 * threads
        pending = [pool.submit(build, i) for i in range(first, min(first + ahead, stop))]
        following = first + len(pending)
        while pending:
            yield pending.pop(0).result()
            if following < stop:
                pending.append(pool.submit(build, following))
                following += 1


def iter_split(path: str | Path, split: str, start: int = 0, stop: int | None = None,
               batch: int = EVAL_BATCH_WINDOWS) -> Iterator[tuple[np.ndarray, ...]]:
    """Rows [start, stop) of a split in order, as (x, y, ticker, last_close) pieces of `batch` windows.

    last_close is the close at the window's last minute in PRICE units (float64): /<split>/last_close
    (schemas 2, 3), or for a schema-1 file x[:, -1, close] de-normalised with its min-max statistics.
    """
    if stop is None:
        with h5py.File(path, "r") as handle:
            stop = int(handle[f"{split}/{layout.Y}"].shape[0])
    for first in range(start, stop, LOAD_WINDOWS):
        windows = SplitWindows(path, split, first, min(first + LOAD_WINDOWS, stop))
        for a in range(0, len(windows), batch):
            rows = slice(a, min(a + batch, len(windows)))
            yield windows.x(rows), windows.y[rows], windows.ticker[rows], windows.last_close[rows]


def load_split(path: str | Path, split: str) -> dict[str, np.ndarray]:
    """A whole split as arrays, whatever the schema: x (n, seq_len, n_features) float32, y, ticker,
    window_end (None for a file without it) and last_close. For tests, benchmarks and small files."""
    windows = SplitWindows(path, split)
    return {"x": windows.x(slice(None)), "y": windows.y, "ticker": windows.ticker,
            "window_end": windows.window_end, "last_close": windows.last_close}
