"""Allreduce microbenchmark, recorded like a training run: what one step's gradient allreduce costs.

    horovodrun -np 2 -H localhost:2 --gloo python -m stockpredict.allreduce_bench --run-dir results/runs/ar-n2
    srun --mpi=pmix -N 2 python -m stockpredict.allreduce_bench --run-dir "$PWD/results/runs/ar-n2"

Launched like the trainer (Horovod on p ranks), it allreduces (average) tensors shaped like the model's
gradients, one hvd.allreduce per trainable variable inside one tf.function, as DistributedGradientTape
does in the trainer, `--iterations` times per "epoch", for `--epochs` epochs. Rank 0 writes
`<run-dir>/timing.jsonl` in the trainer's schema (stockpredict/common/timing.py):

- `run_start` with `kind: "allreduce"`, `gradient_bytes` (4 x trainable parameters), batch sizes 0,
  `mode` and `dataset` null;
- one `epoch` per epoch: `train_seconds` = wall time of its allreduces on rank 0, `steps` = `samples` =
  allreduces, `samples_per_second` = allreduces per second, losses 0 / null. The first epoch (graph
  building, Horovod's first negotiation) is warm-up, excluded by the report like a trainer's;
- `run_end` completed.

Then rank 0 writes `<run-dir>/allreduce.json` (rundir.ALLREDUCE_SUMMARY): the milliseconds per allreduce
of every epoch, written last, so a batch script can tell a finished benchmark from one that never ran
(the done marker of `submit allreduce` jobs, stockpredict/control/jobscript.py).

The report (stockpredict/report/scaling.py) reads such a run as MeasuredPoint(kind="allreduce") and adds
it to the scaling model of every key with the same engine and gradient size. docs/scaling.md explains.
The model's shapes are computed here without TensorFlow (gradient_shapes), from --data's feature count
or --n-features.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import socket
import time
from pathlib import Path
from typing import Sequence

from stockpredict.common import rundir, timing
from stockpredict.common.benchmarks import BYTES_PER_PARAMETER, BenchConfig
from stockpredict.common.checkout import toolkit_provenance
from stockpredict.common.errors import UserError, run_cli
from stockpredict.common.files import write_atomic
from stockpredict.common.hardware import affinity_summary


def _parse_args(argv: Sequence[str] | None) -> BenchConfig:
    defaults = BenchConfig(run_dir="")
    parser = argparse.ArgumentParser(prog="python -m stockpredict.allreduce_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="directory for timing.jsonl (created if missing)")
    parser.add_argument("--iterations", type=int, default=defaults.iterations,
                        help="allreduces per epoch (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help="epochs; the first is warm-up (default %(default)s)")
    parser.add_argument("--data", help="sequences file: take the feature count from it")
    parser.add_argument("--n-features", type=int, default=defaults.n_features,
                        help="features per minute without --data (default %(default)s)")
    parser.add_argument("--lstm-units", type=int, default=defaults.lstm_units)
    parser.add_argument("--dense-units", type=int, default=defaults.dense_units)
    parser.add_argument("--single-buffer-bytes", type=int,
                        help="allreduce one buffer of this many bytes instead of the model's tensors")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="TensorFlow intra-op threads per rank (default %(default)s)")
    args = parser.parse_args(argv)
    return BenchConfig(run_dir=args.run_dir, iterations=args.iterations, epochs=args.epochs, data=args.data,
                       n_features=args.n_features, lstm_units=args.lstm_units, dense_units=args.dense_units,
                       single_buffer_bytes=args.single_buffer_bytes, threads=args.threads)


def _main(argv: Sequence[str] | None) -> int:
    config = _parse_args(argv)
    shapes = config.shapes()                  # bad --data fails here, on every rank, before Horovod
    size = BYTES_PER_PARAMETER * sum(math.prod(s) for s in shapes)
    log_path = Path(config.run_dir) / rundir.TIMING_LOG
    if log_path.exists():                     # checked by every rank before the first collective
        raise UserError(f"{log_path} exists: give the benchmark a fresh run directory")

    import horovod
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()  # Horovod: rank and size from horovodrun (Gloo) or srun/PMIx (MPI), as for the trainer
    tf.config.threading.set_intra_op_parallelism_threads(config.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tensors = [tf.fill(shape, float(hvd.rank() + 1)) for shape in shapes]

    @tf.function
    def allreduce_all(*grads):
        # Horovod: one allreduce per gradient tensor, averaged, as DistributedGradientTape does.
        return [hvd.allreduce(g, op=hvd.Average, name=f"gradient_{i}") for i, g in enumerate(grads)]

    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    hosts = sorted(set(hvd.allgather_object(node)))  # Horovod: every rank's node
    root = hvd.rank() == 0
    if root:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        timing.append_event(log_path, timing.make_event(
            "run_start", time=timing.utc_now_iso(), job_id=os.environ.get("SLURM_JOB_ID"), attempt=0,
            resumed_from_epoch=None, ranks=hvd.size(), nodes=len(hosts), gpus_per_node=0, hosts=hosts,
            batch_size_per_rank=0, global_batch_size=0, learning_rate=None, epochs=config.epochs, mode=None,
            dataset=None, windows={},
            versions={"python": platform.python_version(), "tensorflow": tf.__version__,
                      "horovod": horovod.__version__, "mpi": None},
            config={**dataclasses.asdict(config), "tensors": len(shapes),
                    "mpi_enabled": bool(hvd.mpi_enabled())},
            hardware=affinity_summary(), engine=timing.DEFAULT_ENGINE, gradient_bytes=size, kind="allreduce",
            toolkit=toolkit_provenance()))
    started = time.perf_counter()
    ms_per_allreduce = []
    for epoch in range(1, config.epochs + 1):
        hvd.allreduce(tf.constant(0.0), op=hvd.Sum).numpy()  # Horovod: start every epoch together
        begin = time.perf_counter()
        for _ in range(config.iterations):
            result = allreduce_all(*tensors)
        expected = (hvd.size() + 1) / 2                       # the mean of 1..size
        if abs(float(result[-1].numpy().ravel()[0]) - expected) > 1e-5:
            raise RuntimeError(f"allreduce returned {result[-1].numpy().ravel()[0]}, expected {expected}")
        seconds = time.perf_counter() - begin
        ms_per_allreduce.append(round(seconds / config.iterations * 1e3, 6))
        if root:
            timing.append_event(log_path, timing.make_event(
                "epoch", epoch=epoch, train_seconds=round(seconds, 6), val_seconds=0.0,
                steps=config.iterations, samples=config.iterations,
                samples_per_second=config.iterations / seconds, train_loss=0.0, val_loss=None,
                resumed=False))
            print(f"epoch {epoch}: {config.iterations} allreduces of {size:,} bytes on {hvd.size()} ranks "
                  f"in {seconds:.3f} s ({seconds / config.iterations * 1e3:.3f} ms each)"
                  + (" [warm-up]" if epoch == 1 else ""), flush=True)
    if root:
        timing.append_event(log_path, timing.make_event(
            "run_end", status="completed", total_seconds=round(time.perf_counter() - started, 3), test=None))
        summary = {"ranks": hvd.size(), "nodes": len(hosts), "gradient_bytes": size, "tensors": len(shapes),
                   "iterations": config.iterations, "ms_per_allreduce": ms_per_allreduce, "warmup_epochs": 1}
        write_atomic(Path(config.run_dir) / rundir.ALLREDUCE_SUMMARY, json.dumps(summary, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
