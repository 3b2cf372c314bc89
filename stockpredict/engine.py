"""The distributed operations the trainer needs, behind one small interface (`Engine`).

The epoch loop (stockpredict/loop.py), checkpoints, the preemption protocol, metrics and timing call
only these methods, so both engines run the same loop: `HorovodEngine` here (every Horovod-specific
line marked `# Horovod:`) and `TfEngine` in stockpredict/engine_tf.py (tf.distribute's
MultiWorkerMirroredStrategy, lines marked `# tf.distribute:`). `make_engine(name)` picks one.

tf.distribute needs two things Horovod does not: variables created inside `strategy.scope()` and the
train step called through `strategy.run`. Hence `scope()` and `run()`; for Horovod they are a no-op
context and a plain call. `apply_gradients` exists because a Keras optimizer under a strategy would
sum the (already averaged) gradients again.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .config import ENGINES


class Engine(Protocol):
    """What a rank knows about the job and the collectives it may call (all ranks call each one)."""

    name: str

    def init(self) -> None:
        """Join the job: after this, rank/size/local_rank are known. Call before TensorFlow's first op."""

    @property
    def rank(self) -> int:
        """This process's index among the ranks, 0 .. size-1 (rank 0 writes the files)."""

    @property
    def size(self) -> int:
        """The number of ranks."""

    @property
    def local_rank(self) -> int:
        """This process's index among the ranks on its node (GPU pinning)."""

    def initialized_rank(self) -> int | None:
        """The rank if init() succeeded, else None (for error reporting before or after init)."""

    def scope(self) -> Any:
        """A context manager in which the model's and optimizer's variables are created."""

    def run(self, fn: Callable, *args: Any) -> Any:
        """Call the train step `fn(*args)` as the engine needs it (inside a tf.function); its result."""

    def gradient_tape(self, tape: Any) -> Any:
        """Wrap a tf.GradientTape so that tape.gradient() returns gradients averaged over the ranks."""

    def apply_gradients(self, optimizer: Any, grads_and_vars: Any) -> Any:
        """optimizer.apply_gradients for gradients that gradient_tape() already averaged."""

    def broadcast_variables(self, variables: Sequence[Any], root_rank: int = 0) -> None:
        """Overwrite every rank's `variables` with root_rank's values."""

    def allreduce_sum(self, values: Sequence[float]) -> np.ndarray:
        """Element-wise sum of a small float64 vector over all ranks."""

    def allgather_object(self, obj: Any) -> list:
        """Every rank's picklable `obj`, in rank order, on every rank."""

    def barrier(self) -> None:
        """Return once every rank has arrived."""

    def versions(self) -> dict[str, str | None]:
        """The timing log's engine entries of run_start.versions: {"horovod": ..., "mpi": ...}."""


# Open MPI's MCA parameter (as an environment variable) that makes a waiting rank yield its core.
MPI_YIELD_VARIABLE = "OMPI_MCA_mpi_yield_when_idle"


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


def make_engine(name: str) -> Engine:
    """The engine called `name` (imports TensorFlow, and Horovod for "horovod": seconds)."""
    if name == "horovod":
        return HorovodEngine()
    if name == "tf":
        from .engine_tf import TfEngine

        return TfEngine()
    raise ValueError(f"unknown engine {name!r}; valid: {', '.join(ENGINES)}")


def mpi_version() -> str | None:
    """The MPI library's name and version ("Open MPI 4.1.4"), from `mpirun --version`; None if unknown."""
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(([^)]+)\)\s+(\S+)", out)
    return f"{match.group(1)} {match.group(2)}" if match else (out.splitlines() or [None])[0]
