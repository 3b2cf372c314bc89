"""How fast one rank's reader delivers training windows: `make bench-reader DATA=<sequences file>
[BATCH=256] [THREADS=1]`.

Reads one rank's shard of /train for one epoch through the reader API (stockpredict/common/reader.py: the
trainer's own path, any schema) and prints as its last line

    reader: <N> windows/s (batch <B>, <T> thread(s), schema <S>)

N counts the epoch's windows over the epoch's seconds (building every batch: gather, per-window shift,
targets); loading the shard into memory happens once per run and is printed on its own line. With
--against <schema-2 file> it first times, in the same run, the reader that schema 2 had before schema 3
(kept below, unchanged: 16 random blocks of 2,048 chunk-aligned windows read, decompressed and permuted
per buffer), which decompresses inside the epoch. Numbers: README and docs/data.md, "Reader".
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: this checkout's stockpredict
from stockpredict.common import reader  # noqa: E402 -- after the path line
from stockpredict.common.errors import run_cli  # noqa: E402
from stockpredict.common.sequences import read_sequences_info  # noqa: E402


def block_reader(path: str, start: int, stop: int, batch_size: int, steps: int, seed: int, epoch: int,
                 rank: int, block: int, blocks_per_buffer: int = 16):
    """The schema-2 reader before schema 3 (stockpredict/job/data.py until then), for comparison."""
    import h5py

    rng = np.random.default_rng([seed, epoch, rank])
    edges = [start] + list(range((start // block + 1) * block, stop, block)) + [stop]
    blocks = [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    order = rng.permutation(len(blocks))
    plan = []
    for first in range(0, len(order), blocks_per_buffer):
        chosen = [blocks[i] for i in order[first:first + blocks_per_buffer]]
        plan.append((chosen, rng.permutation(sum(b - a for a, b in chosen))))
    to_yield = steps * batch_size
    pending_x, pending_y = [], []
    with h5py.File(path, "r") as handle:
        x_data, y_data = handle["train/x"], handle["train/y"]
        for chosen, perm in plan:
            if to_yield <= 0:
                break
            pending_x.append(np.concatenate([x_data[a:b] for a, b in chosen])[perm])
            pending_y.append(np.concatenate([y_data[a:b] for a, b in chosen])[perm])
            if sum(len(y) for y in pending_y) < batch_size:
                continue
            x, y = np.concatenate(pending_x), np.concatenate(pending_y)
            full = min(len(y) // batch_size * batch_size, to_yield)
            for i in range(0, full, batch_size):
                yield x[i:i + batch_size], y[i:i + batch_size]
            to_yield -= full
            pending_x, pending_y = [x[full:]], [y[full:]]


def _main(argv) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/bench_reader.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="sequences file (any schema)")
    parser.add_argument("--batch", type=int, default=256, help="windows per batch (per rank)")
    parser.add_argument("--threads", type=int, default=1, help="threads building batches")
    parser.add_argument("--ranks", type=int, default=1, help="ranks the split is sharded over")
    parser.add_argument("--rank", type=int, default=0, help="the rank whose shard is read")
    parser.add_argument("--epoch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--against", help="a schema-2 file: time the schema-2 block reader on it first")
    ns = parser.parse_args(argv)
    if ns.batch < 1 or ns.threads < 1 or not 0 <= ns.rank < ns.ranks:
        parser.error("need --batch >= 1, --threads >= 1 and 0 <= --rank < --ranks")
    info = read_sequences_info(ns.data)
    n = info.windows["train"]
    start, stop = reader.shard_range(n, ns.rank, ns.ranks)
    steps = reader.steps_per_epoch(n, ns.batch, ns.ranks)
    if steps == 0:
        parser.error(f"{ns.data}: {n} train windows make no batch of {ns.batch} x {ns.ranks} rank(s)")
    print(f"file: {ns.data} ({os.path.getsize(ns.data) / 1e6:,.1f} MB, schema {info.schema_version}); "
          f"rank {ns.rank} of {ns.ranks}: rows [{start:,}, {stop:,}), {steps:,} steps of {ns.batch}; "
          f"{os.cpu_count()} core(s) on the machine, load average {os.getloadavg()[0]:.2f}")
    if ns.against:
        old = read_sequences_info(ns.against)
        if old.schema_version != 2 or old.windows != info.windows:
            parser.error(f"--against needs a schema-2 file with the same windows as {ns.data}")
        t0 = time.perf_counter()
        count = sum(len(y) for _, y in block_reader(ns.against, start, stop, ns.batch, steps, ns.seed,
                                                     ns.epoch, ns.rank, old.block_windows))
        seconds = time.perf_counter() - t0
        print(f"schema-2 block reader ({ns.against}): {count / seconds:,.0f} windows/s "
              f"(batch {ns.batch}, 1 thread, schema 2; {seconds:.2f} s, decompression included)")
    t0 = time.perf_counter()
    windows = reader.SplitWindows(ns.data, "train", start, stop, extras=False)
    load = time.perf_counter() - t0
    order = reader.epoch_order(len(windows), ns.seed, ns.epoch, ns.rank)
    t1 = time.perf_counter()
    count = 0
    for _, y in reader.iter_batches(windows, order, ns.batch, stop=steps, threads=ns.threads):
        count += len(y)
    seconds = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"load: {load:.2f} s for {len(windows):,} windows ({len(windows) / load:,.0f} windows/s, once "
          f"per run); epoch: {seconds:.2f} s; including the load {count / (seconds + load):,.0f} windows/s; "
          f"peak RSS {peak:,.0f} MB")
    print(f"reader: {count / seconds:.0f} windows/s (batch {ns.batch}, {ns.threads} thread(s), "
          f"schema {info.schema_version})")
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
