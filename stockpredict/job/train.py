"""Train the seed's LSTM on the preprocessed sequences file with Horovod or tf.distribute.

The same command runs as one process, under horovodrun (Gloo) and under Slurm's srun (MPI via PMIx);
with --engine tf, under plain srun (one worker per task, TF_CONFIG built from the step):

    python -m stockpredict.train --data data/processed/sequences.h5 --run-dir results/runs/r1
    horovodrun -np 2 -H localhost:2 --gloo python -m stockpredict.train --data ... --run-dir ...
    srun --mpi=pmix python -m stockpredict.train --data ... --run-dir ... --resume   # in a batch job
    srun python -m stockpredict.train --engine tf --data ... --run-dir ... --resume  # tf.distribute

Outputs in --run-dir (rank 0 only): config.json, timing.jsonl (the report's input, schema in
stockpredict/common/timing.py), train.log, checkpoints/, and at the end metrics.json and model.keras.

Preemption: SIGUSR2 or SIGUSR1 (the time-limit warning) or SIGTERM (Slurm preempting the job) on any
rank -> all ranks agree at the next check, finish the step, rank 0 writes a mid-epoch checkpoint and
`run_end` "preempted", and every rank exits 75 (EX_TEMPFAIL) so the batch script requeues the job;
`--resume` then continues exactly where it stopped. See docs/training.md.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Sequence

from stockpredict.common.errors import EXIT_USER_ERROR, UserError
from stockpredict.common.train_config import parse_args
from stockpredict.job import preemption
from stockpredict.job.preemption import EXIT_PREEMPTED

# Before anything imports TensorFlow (seconds): USR1 and USR2 would kill the process by default. SIGTERM
# too when run as a program (main() installs it for console-script and in-process callers).
# The heavy modules (loop, engine) are imported inside main(), after this line has run.
preemption.install_stop_handler(sigterm=__name__ == "__main__")


def main(argv: Sequence[str] | None = None, *, exit_now_when_preempted: bool = True) -> int:
    """Console entry point: `stockpredict-train` / `python -m stockpredict.train`.

    After a preemption (checkpoint written, ranks past the final barrier) the process leaves at once
    with status 75, skipping interpreter teardown: the launcher kills the remaining tasks as soon as
    the first exits non-zero, and a rank still tearing down TensorFlow would then report "killed"
    instead of 75, so srun's status would not say "requeue". Tests calling main() in-process pass
    exit_now_when_preempted=False. The same immediate exit ends a run that fails after the ranks started
    (e.g. rank 0 finds the disk full): a clean interpreter exit could block in the engine's shutdown
    while the other ranks wait in a collective.
    """
    preemption.install_stop_handler(sigterm=True)
    engine = None
    try:
        config = parse_args(argv, description=__doc__)
        from stockpredict.job.engine import make_engine  # TensorFlow (and Horovod): seconds to import
        from stockpredict.job.loop import run_training

        engine = make_engine(config.engine)
        status = run_training(config, engine)
        if status == EXIT_PREEMPTED and exit_now_when_preempted:
            _exit_now(EXIT_PREEMPTED)
        return status
    except UserError as err:
        rank = engine.initialized_rank() if engine is not None else None
        if (rank if rank is not None else rank_from_env()) == 0:  # only rank 0 reports; all exit non-zero
            print(f"error: {err}", file=sys.stderr)
        else:
            # The launcher kills the other ranks once one exits non-zero; give rank 0 time to print.
            # (No barrier here: a rank that failed before the first collective must never wait on one.)
            time.sleep(2)
        if rank is not None and exit_now_when_preempted:
            _exit_now(EXIT_USER_ERROR)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        if not exit_now_when_preempted:
            preemption.restore_sigterm()  # in-process caller: SIGTERM kills it again


def _exit_now(status: int) -> None:
    """Leave at once with `status`, skipping interpreter teardown (see main)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def rank_from_env(environ=os.environ) -> int:
    """This process's rank as its launcher set it, before the engine started (0 for one process)."""
    # Horovod: horovodrun sets HOROVOD_RANK; mpirun OMPI_COMM_WORLD_RANK; srun PMIX_RANK / SLURM_PROCID.
    for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
