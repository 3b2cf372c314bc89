"""Sharded streaming of the preprocessing stage's HDF5 sequences file to the trainer. TensorFlow-free.

Every rank reads only its own contiguous shard of `/train` (rank r of R owns rows
[r*n//R, (r+1)*n//R)), in contiguous blocks: an h5py read of a block of windows costs about as much
as one per-sample read, so per-sample (fancy-index) reads would starve the model.

Shuffling is two-level and fully determined by (seed, epoch, rank): the shard's blocks are visited in
a random order, a few blocks at a time are read into a buffer, and the buffer's rows are permuted.
Blocks are the file's own HDF5 chunks (SequencesInfo.block_windows, read from /train/x), so every
read decompresses whole chunks once. The whole file is never held in memory; peak memory is about
one buffer (block_windows * BLOCKS_PER_BUFFER windows) plus the prefetched batches.

File layout (schema_version 2, written by `preprocess`; docs/data.md):
`/{train,val,test}/{x,y,ticker,window_end,last_close}`, root attrs `features`, `target_feature`,
`seq_len`, `representation`, `transform`, `optimum`, `norm_min`, `norm_max`, ... Schema-1 files (no
last_close, no representation) are read as the seed representation: min-max from `norm_min`/`norm_max`.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import h5py
import numpy as np

from stockpredict.common import transform as transforms
from stockpredict.common.sequences import BLOCK_WINDOWS, SequencesInfo

# 16 blocks (common/sequences.py, BLOCK_WINDOWS) = a 16 MB shuffle buffer of 32,768 windows drawn
# from 16 random places of the shard.
BLOCKS_PER_BUFFER = 16
# Batches the background reader keeps ready (EpochBatches): 64 x 128 windows = 4 MB of float32.
PREFETCH_BATCHES = 64
# Windows per forward pass when scoring val/test (no gradients, so larger is cheaper).
EVAL_BATCH_WINDOWS = 8192


def shard_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [start, stop) of an n-row split owned by `rank` of `size`; shards differ by at most 1 row."""
    return rank * n // size, (rank + 1) * n // size


def steps_per_epoch(n_train: int, batch_size: int, size: int) -> int:
    """floor(n_train / global batch): the same on every rank, so no rank waits in an allreduce for
    another that ran out of data. The smallest shard (n_train // size rows) always has enough."""
    return n_train // (batch_size * size)


def epoch_buffers(start: int, stop: int, seed: int, epoch: int, rank: int,
                  block: int = BLOCK_WINDOWS, blocks_per_buffer: int = BLOCKS_PER_BUFFER,
                  ) -> list[tuple[list[tuple[int, int]], np.ndarray]]:
    """The shuffled read plan of one rank's shard [start, stop) for one epoch (1-based).

    Returns buffers in visiting order; each is (blocks, permutation): the contiguous row ranges to
    read and concatenate, and the row order to yield them in. Deterministic in (seed, epoch, rank).
    """
    rng = np.random.default_rng([seed, epoch, rank])
    # Block edges sit on multiples of `block` (= the preprocessing stage's HDF5 chunk length), so
    # no compressed chunk is read twice by one rank.
    edges = [start] + list(range((start // block + 1) * block, stop, block)) + [stop]
    blocks = [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    order = rng.permutation(len(blocks))
    plan = []
    for first in range(0, len(order), blocks_per_buffer):
        chosen = [blocks[i] for i in order[first:first + blocks_per_buffer]]
        rows = sum(b - a for a, b in chosen)
        plan.append((chosen, rng.permutation(rows)))
    return plan


def iter_train_batches(path: str, start: int, stop: int, batch_size: int, steps: int, seed: int,
                       epoch: int, rank: int, skip_steps: int = 0,
                       block: int = BLOCK_WINDOWS, blocks_per_buffer: int = BLOCKS_PER_BUFFER,
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield `steps - skip_steps` shuffled (x, y) batches of this rank's shard for one epoch.

    `skip_steps` resumes an epoch after a mid-epoch checkpoint: the batches already trained are
    skipped without reading them, and the rest come out exactly as in an uninterrupted epoch.
    """
    plan = epoch_buffers(start, stop, seed, epoch, rank, block, blocks_per_buffer)
    to_skip = skip_steps * batch_size           # rows of the epoch's order already trained
    to_yield = (steps - skip_steps) * batch_size
    pending_x, pending_y = [], []
    pending_rows = 0
    with h5py.File(path, "r") as handle:
        x_data, y_data = handle["train/x"], handle["train/y"]
        for blocks, perm in plan:
            if to_yield <= 0:
                break
            if to_skip >= perm.size:
                to_skip -= perm.size
                continue
            x = np.concatenate([x_data[a:b] for a, b in blocks])[perm]
            y = np.concatenate([y_data[a:b] for a, b in blocks])[perm]
            x, y = x[to_skip:], y[to_skip:]
            to_skip = 0
            pending_x.append(x)
            pending_y.append(y)
            pending_rows += len(y)
            if pending_rows < batch_size:
                continue
            x, y = np.concatenate(pending_x), np.concatenate(pending_y)
            full = min(len(y) // batch_size * batch_size, to_yield)
            for i in range(0, full, batch_size):
                yield x[i:i + batch_size], y[i:i + batch_size]
            to_yield -= full
            pending_x, pending_y = [x[full:]], [y[full:]]
            pending_rows = len(y) - full
    if to_yield > 0:
        raise RuntimeError(f"shard [{start}, {stop}) ran out of rows with {to_yield} still to train")


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
                  size: int, skip_steps: int = 0) -> EpochBatches:
    """This rank's shard for one epoch (1-based), steps - skip_steps batches, read ahead in the background."""
    start, stop = shard_range(info.windows["train"], rank, size)
    return EpochBatches(iter_train_batches(info.path, start, stop, batch_size, steps, seed, epoch, rank,
                                           skip_steps, block=info.block_windows))


def iter_eval_shard(path: str, split: str, rank: int, size: int, close_index: int,
                    batch: int = EVAL_BATCH_WINDOWS) -> Iterator[tuple[np.ndarray, ...]]:
    """This rank's contiguous share of a whole split, as (x, y, ticker, last_close) chunks.

    last_close is the close at the window's last minute in PRICE units (float64): /<split>/last_close
    (schema 2), or for a schema-1 file x[:, -1, close_index] de-normalised with its min-max statistics.
    Score with metrics.shard_sums(pred, y, last_close, ticker, info.transform).
    """
    with h5py.File(path, "r") as handle:
        group = handle[split]
        legacy = None if "last_close" in group else transforms.from_attrs(handle.attrs)
        start, stop = shard_range(group["y"].shape[0], rank, size)
        for a in range(start, stop, batch):
            b = min(a + batch, stop)
            x, ticker = group["x"][a:b], group["ticker"][a:b]
            if legacy is None:
                last_close = group["last_close"][a:b]
            else:
                last_close = legacy.inputs_inverse(x[:, -1:, :], None, ticker)[:, -1, close_index]
            yield x, group["y"][a:b], ticker, last_close


