"""Horovod's ring-allreduce behind the Engine interface (every Horovod-specific line marked `# Horovod:`)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from typing import Any, Callable, Sequence

import numpy as np

from stockpredict.job.engine import MPI_YIELD_VARIABLE


class HorovodEngine:
    """Horovod ring-allreduce: ranks from horovodrun (Gloo) or srun/mpirun (MPI)."""

    name = "horovod"

    def __init__(self):
        import horovod.tensorflow as hvd  # Horovod: imported here so `import stockpredict.engine` stays light
        import tensorflow as tf

        self.hvd, self.tf = hvd, tf

    def init(self) -> None:
        # Open MPI busy-polls while Horovod's background thread waits in an allreduce. When the rank's
        # TensorFlow threads fill the cores it owns (CPU training, one core per rank), that poll takes
        # the core from the next step's compute: 2 pinned ranks at batch 128 under srun measured
        # 34.8-41.2 ms per step spinning, 27.9-33.6 yielding (docs/scaling.md, "MPI polling").
        # Yielding costs a sched_yield per poll when the core is otherwise idle (a GPU run), so it is
        # the default; a user's own setting wins. Read by MPI_Init inside hvd.init(): set it before.
        os.environ.setdefault(MPI_YIELD_VARIABLE, "1")
        self.hvd.init()  # Horovod: rank and size come from horovodrun (Gloo) or srun/PMIx (MPI)

    @property
    def rank(self) -> int:
        return self.hvd.rank()  # Horovod: this rank

    @property
    def size(self) -> int:
        return self.hvd.size()  # Horovod: the number of ranks

    @property
    def local_rank(self) -> int:
        return self.hvd.local_rank()  # Horovod: the rank among this node's ranks

    def set_stall_timeout(self, seconds: int) -> None:
        """Nothing to change: Horovod's own stall check only warns (after 60 s, naming ranks, not hosts)
        unless HOROVOD_STALL_SHUTDOWN_TIME_SECONDS is set; the trainer's watchdog ends the job."""

    def initialized_rank(self) -> int | None:
        try:
            return self.hvd.rank()  # Horovod: raises ValueError before hvd.init()
        except ValueError:
            return None

    def scope(self) -> Any:
        return contextlib.nullcontext()  # every rank owns ordinary variables; broadcast syncs them

    def run(self, fn: Callable, *args: Any) -> Any:
        return fn(*args)

    def gradient_tape(self, tape: Any) -> Any:
        # Horovod: average the gradients over all ranks (ring-allreduce).
        return self.hvd.DistributedGradientTape(tape)

    def apply_gradients(self, optimizer: Any, grads_and_vars: Any) -> Any:
        return optimizer.apply_gradients(grads_and_vars)

    def broadcast_variables(self, variables: Sequence[Any], root_rank: int = 0) -> None:
        self.hvd.broadcast_variables(variables, root_rank=root_rank)  # Horovod: rank 0's values everywhere

    def allreduce_sum(self, values: Sequence[float]) -> np.ndarray:
        tensor = self.tf.constant(np.asarray(values, np.float64))
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, name=None).numpy()  # Horovod: sum over ranks

    def allgather_object(self, obj: Any) -> list:
        return self.hvd.allgather_object(obj)  # Horovod: pickled objects of every rank

    def barrier(self) -> None:
        # Horovod: a one-scalar allreduce as the barrier, as the trainer has always used (Gloo and MPI).
        self.allreduce_sum([0.0])

    def versions(self) -> dict[str, str | None]:
        import horovod

        # Horovod: the MPI library's version when Horovod runs on MPI (rank 0 asks; others report None).
        mpi = mpi_version() if self.hvd.mpi_enabled() and self.rank == 0 else None
        return {"horovod": horovod.__version__, "mpi": mpi}


def mpi_version() -> str | None:
    """The MPI library's name and version ("Open MPI 4.1.4"), from `mpirun --version`; None if unknown."""
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(([^)]+)\)\s+(\S+)", out)
    return f"{match.group(1)} {match.group(2)}" if match else (out.splitlines() or [None])[0]
