"""Sharded, shuffled epochs of the sequences file for the trainer. TensorFlow-free.

Every rank reads only its own contiguous shard of `/train` (rank r of R owns rows
[r*n//R, (r+1)*n//R)), once per run, into memory through the one reader of windows
(stockpredict/common/reader.py, every schema: schema 3 builds each window from the stored minutes as it
is read). Each epoch visits the shard in one uniform permutation determined by (seed, epoch, rank)
(reader.epoch_order): defined on window indices, so a schema-2 and a schema-3 file of the same input
give the same batches, the same losses. A background thread builds the batches while the steps run.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from typing import Iterator

import numpy as np

from stockpredict.common.reader import (
    EVAL_BATCH_WINDOWS,
    SplitWindows,
    epoch_order,
    iter_batches,
    iter_split,
    shard_range,
    steps_per_epoch,
)
from stockpredict.common.sequences import SequencesInfo

__all__ = ["EVAL_BATCH_WINDOWS", "PREFETCH_BATCHES", "EpochBatches", "epoch_batches", "iter_eval_shard",
           "iter_train_batches", "shard_range", "shard_windows", "steps_per_epoch"]

# Batches the background reader keeps ready (EpochBatches): 64 x 128 windows = 4 MB of float32.
PREFETCH_BATCHES = 64


def shard_windows(path: str, start: int, stop: int) -> SplitWindows:
    """The train rows [start, stop) in memory (x and y only), loaded once per process and kept for
    every epoch (a run, or the interleaved program's two shards); a file rewritten in place (another
    modification time or size) is loaded again."""
    stat = os.stat(path)
    return _shard_windows(str(path), stat.st_mtime_ns, stat.st_size, start, stop)


@functools.lru_cache(maxsize=4)
def _shard_windows(path: str, mtime_ns: int, size: int, start: int, stop: int) -> SplitWindows:
    return SplitWindows(path, "train", start, stop, extras=False)


shard_windows.cache_clear = _shard_windows.cache_clear  # type: ignore[attr-defined]
shard_windows.cache_info = _shard_windows.cache_info  # type: ignore[attr-defined]


def iter_train_batches(path: str, start: int, stop: int, batch_size: int, steps: int, seed: int,
                       epoch: int, rank: int, skip_steps: int = 0, threads: int = 1,
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield `steps - skip_steps` shuffled (x, y) batches of this rank's shard for one epoch.

    `skip_steps` resumes an epoch after a mid-epoch checkpoint: the batches already trained are
    skipped without building them, and the rest come out exactly as in an uninterrupted epoch.
    """
    windows = shard_windows(path, start, stop)
    if steps * batch_size > len(windows):
        raise RuntimeError(f"shard [{start}, {stop}) ran out of rows: {len(windows)} rows for {steps} "
                           f"steps of {batch_size}")
    order = epoch_order(len(windows), seed, epoch, rank)
    yield from iter_batches(windows, order, batch_size, first=skip_steps, stop=steps, threads=threads)


class EpochBatches:
    """One epoch of this rank's training batches, read ahead by a background thread.

    `take(n)` returns the next n batches stacked, (n, batch, seq_len, features) and (n, batch), for one
    graph call of n steps. The thread reads HDF5 and shuffles while the steps run (TensorFlow releases
    the GIL while it executes the graph). It holds at most `depth` batches. Why not tf.data's
    `from_generator`: tearing down its iterator at the end of every epoch stalled for 1 to 10 s
    (measured; the stall grew after the validation pass), which landed in the timed epochs and made a
    short epoch's steps look several times slower than a long one's.
    """

    _END = object()

    def __init__(self, batches: Iterator[tuple[np.ndarray, np.ndarray]], depth: int = PREFETCH_BATCHES):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(batches,), name="epoch-batches",
                                        daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, batches) -> None:
        try:
            for batch in batches:
                if not self._put(batch):
                    return
            self._put(self._END)
        except BaseException as err:  # noqa: BLE001 - handed to the training thread, which raises it
            self._put(err)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # closes the HDF5 file even when stopped early

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _ in range(n):
            item = self._queue.get()
            if item is self._END:
                raise RuntimeError(f"the epoch's batches ran out after {len(xs)} of {n}")
            if isinstance(item, BaseException):
                raise item
            xs.append(item[0])
            ys.append(item[1])
        return np.stack(xs), np.stack(ys)

    def close(self) -> None:
        """Stop reading (a stop signal mid-epoch, or the epoch is over) and wait for the thread."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "EpochBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def epoch_batches(info: SequencesInfo, batch_size: int, steps: int, seed: int, epoch: int, rank: int,
                  size: int, skip_steps: int = 0, threads: int = 1) -> EpochBatches:
    """This rank's shard for one epoch (1-based), steps - skip_steps batches, read ahead in the background."""
    start, stop = shard_range(info.windows["train"], rank, size)
    return EpochBatches(iter_train_batches(info.path, start, stop, batch_size, steps, seed, epoch, rank,
                                           skip_steps, threads=threads))


def iter_eval_shard(path: str, split: str, rank: int, size: int, close_index: int | None = None,
                    batch: int = EVAL_BATCH_WINDOWS) -> Iterator[tuple[np.ndarray, ...]]:
    """This rank's contiguous share of a whole split, as (x, y, ticker, last_close) chunks
    (reader.iter_split). Score with metrics.shard_sums(pred, y, last_close, ticker, info.transform).
    close_index is read from the file; the argument stays for callers that pass it."""
    n = _split_length(path, split)
    start, stop = shard_range(n, rank, size)
    yield from iter_split(path, split, start, stop, batch)


def _split_length(path: str, split: str) -> int:
    import h5py

    with h5py.File(path, "r") as handle:
        return int(handle[f"{split}/y"].shape[0])
