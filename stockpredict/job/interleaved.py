"""1 rank against N ranks in one job, alternating every few steps: a strong-scaling speedup the host's
drift cannot bias. `make demo` runs it after its sweep (2 nodes); `benchmarks/bench_scaling.py
--interleaved ROUNDS` on its own.

Why: this VM's speed drifts by 20-40 % over tens of seconds (docs/scaling.md, "How noisy this machine
is"), so the 1-rank run and the 2-node run of a sweep, a minute or two apart, are timed on different
machines in effect. Here both are timed within the same second, round after round:

- "1 rank": rank 0 trains alone, through a Horovod process set of rank 0 only, which is what a 1-rank
  Horovod run does (its allreduce goes through Horovod's background thread, as in a 1-rank job), at
  the global batch. The other ranks sleep, so their cores idle as they do while a 1-rank job runs.
- "N ranks": every rank trains, Horovod averaging the gradients over all of them, at global / N each.

Both are the trainer's own replicas (`loop.build_replica`, the unrolled LSTM on CPU) fed by the trainer's
own reader (`data.epoch_batches`: HDF5, shuffled, read ahead), from the same sequences file; each round
times `--steps` steps of each. Rank 0 prints every round and writes the rounds and their medians to
--out (JSON). What it leaves out of an epoch: the epoch's start and end (the reader's first buffer,
the validation pass, the checkpoint), which a sweep's seconds per epoch include.

    srun --mpi=pmix -N 2 -n 2 --cpus-per-task=1 .venv/bin/python -m stockpredict.interleaved \\
        --data data/demo/sequences.h5 --rounds 15 --out /tmp/interleaved.json

The login-node side (the srun command, following rank 0's lines) is
stockpredict/control/interleaved_launch.py; TensorFlow and Horovod load inside `main`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from stockpredict.common.benchmarks import INTERLEAVED_PREFIX as PREFIX
from stockpredict.common.errors import UserError, run_cli


def summarise(one_rank_ms: list[float], n_rank_ms: list[float]) -> dict:
    """Medians of the rounds' ms per step, and the median of the per-round speedups (each round's two
    times are seconds apart, so their ratio is what the host's drift cannot reach)."""
    if not one_rank_ms or len(one_rank_ms) != len(n_rank_ms):
        raise ValueError("need the same number (>= 1) of 1-rank and N-rank rounds")
    ratios = [a / b for a, b in zip(one_rank_ms, n_rank_ms)]
    return {"one_rank_ms_per_step": statistics.median(one_rank_ms),
            "n_rank_ms_per_step": statistics.median(n_rank_ms),
            "speedup": statistics.median(ratios),
            "speedup_quartiles": statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the preprocessing stage's sequences file")
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (after one untimed)")
    parser.add_argument("--steps", type=int, default=20, help="steps of each kind per round")
    parser.add_argument("--out", help="JSON file for the rounds and their medians (rank 0 writes it)")
    ns = parser.parse_args(argv)
    if min(ns.rounds, ns.steps, ns.global_batch) < 1:
        parser.error("--rounds, --steps and --global-batch must be >= 1")

    if not Path(ns.data).is_file():
        raise UserError(f"no sequences file at {ns.data} (make preprocess writes one)")
    launched = next((os.environ[v] for v in ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")
                     if v in os.environ), "1")
    if not launched.isdigit() or int(launched) < 2:
        raise UserError("run it as 2 or more ranks, e.g. srun --mpi=pmix -N 2 -n 2 python -m "
                        "stockpredict.interleaved ... (or make demo, or bench_scaling.py --interleaved)")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import horovod.tensorflow as hvd
    import tensorflow as tf

    from stockpredict.common.files import write_json_atomic
    from stockpredict.common.train_config import TrainConfig
    from stockpredict.job import loop
    from stockpredict.job.data import epoch_batches
    from stockpredict.job.engine import MPI_YIELD_VARIABLE
    from stockpredict.job.engine.horovod import HorovodEngine

    os.environ.setdefault(MPI_YIELD_VARIABLE, "1")  # as the trainer's engine does (engine.py)
    alone = hvd.ProcessSet([0])  # Horovod: a process set of rank 0 only, for the 1-rank steps
    hvd.init(process_sets=[alone])  # Horovod: ranks from srun/PMIx, as for the trainer
    engine = HorovodEngine()  # hvd is initialised: its rank, size, broadcast and barrier work as in a run
    size, rank = engine.size, engine.rank
    if size < 2 or ns.global_batch % size:
        raise SystemExit(f"{PREFIX} needs >= 2 ranks dividing --global-batch {ns.global_batch}, has {size}")

    class OneRank:
        """The engine of a 1-rank run: Horovod over rank 0's process set only."""

        def __getattr__(self, name):
            return getattr(engine, name)

        size = 1

        def gradient_tape(self, tape):
            return hvd.DistributedGradientTape(tape, process_set=alone)  # Horovod: rank 0 alone

    tf.keras.backend.experimental.enable_tf_random_generator()
    kinds = {"n": (engine, ns.global_batch // size, size, rank)}
    if rank == 0:
        kinds["1"] = (OneRank(), ns.global_batch, 1, 0)
    replicas, readers = {}, {}
    for kind, (eng, batch, ranks, shard) in kinds.items():
        # Threads as the trainer resolves them: one intra-op thread per core Slurm gave the task.
        config = loop.resolve_config(TrainConfig(data=ns.data, run_dir="/nonexistent", batch_size=batch),
                                     ranks)
        if not replicas:
            loop.configure_tensorflow(config, 0)
            threads = config.threads
        plan = loop.plan_run(config, ranks)
        if plan.steps < ns.steps:
            raise SystemExit(f"{PREFIX} an epoch of {plan.steps} steps at batch {batch} is shorter than "
                             f"--steps {ns.steps}: use fewer --steps or more data")
        replicas[kind] = (loop.build_replica(plan, eng), plan, batch, ranks, shard)

    def take(kind: str):
        """The next --steps batches of this kind's shard, a new epoch's shuffle when one runs out."""
        _, plan, batch, ranks, shard = replicas[kind]
        reader = readers.get(kind)
        if reader is None or reader[1] + ns.steps > plan.steps:
            if reader is not None:
                reader[0].close()
            epoch = reader[2] + 1 if reader else 1
            reader = readers[kind] = [epoch_batches(plan.info, batch, plan.steps, 0, epoch, shard, ranks), 0,
                                      epoch]
        reader[1] += ns.steps
        return reader[0].take(ns.steps)

    def timed(kind: str) -> float:
        batches = take(kind)
        start = time.perf_counter()
        replicas[kind][0].train_steps(*batches)
        return (time.perf_counter() - start) / ns.steps * 1e3

    one, many, nap = [], [], 0.0
    for index in range(ns.rounds + 1):  # round 0 traces both and is not kept
        engine.barrier()
        if rank == 0:
            solo = timed("1")
        else:
            time.sleep(nap)  # an idle core, as in a 1-rank job; rank 0 finishes inside the nap
        # Every rank learns the nap for the next round: 1.5 x this round's 1-rank time.
        nap = 1.5 * float(engine.allreduce_sum([solo * ns.steps / 1e3 if rank == 0 else 0.0])[0])
        engine.barrier()
        dist = timed("n")
        if rank == 0 and index:
            one.append(solo)
            many.append(dist)
            print(f"{PREFIX} round {index}/{ns.rounds}: 1 rank {solo:.2f} ms/step, {size} ranks "
                  f"{dist:.2f} ms/step, speedup {solo / dist:.2f}x", flush=True)
    for reader in readers.values():
        reader[0].close()
    if rank == 0:
        summary = summarise(one, many)
        q1, _, q3 = summary["speedup_quartiles"]
        print(f"{PREFIX} {ns.rounds} rounds of {ns.steps} steps, global batch {ns.global_batch}: "
              f"1 rank {summary['one_rank_ms_per_step']:.2f} ms/step, {size} ranks "
              f"{summary['n_rank_ms_per_step']:.2f} ms/step; speedup {summary['speedup']:.2f}x "
              f"(quartiles {q1:.2f}-{q3:.2f})", flush=True)
        if ns.out:
            write_json_atomic(ns.out, {"ranks": size, "global_batch": ns.global_batch, "steps": ns.steps,
                                       "threads": threads, "one_rank_ms": one, "n_rank_ms": many, **summary})
    engine.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))  # a user mistake (a missing file): one line, no traceback
