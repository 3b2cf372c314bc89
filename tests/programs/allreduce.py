"""Smoke program for the stack: every Horovod rank contributes rank+1; the allreduced sum must be
size*(size+1)/2. Prints one JSON line per rank (what the tests parse) and exits non-zero on a mismatch.

Runs unchanged under `srun --mpi=pmix` (MPI controller) and `horovodrun --gloo` (Gloo controller).
"""

import json
import os
import socket
import sys

import horovod.tensorflow as hvd
import tensorflow as tf

hvd.init()  # Horovod: one process per rank; rank/size come from PMIx (srun) or horovodrun.
total = float(hvd.allreduce(tf.constant(float(hvd.rank() + 1)), op=hvd.Sum).numpy())
expected = hvd.size() * (hvd.size() + 1) / 2
print(json.dumps({
    "rank": hvd.rank(),
    "size": hvd.size(),
    "local_rank": hvd.local_rank(),
    "sum": total,
    "expected": expected,
    "controller": "mpi" if hvd.mpi_enabled() else ("gloo" if hvd.gloo_enabled() else "unknown"),
    "host": socket.gethostname(),
    "slurm_node": os.environ.get("SLURMD_NODENAME"),
    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
}), flush=True)
sys.exit(0 if total == expected else 1)
