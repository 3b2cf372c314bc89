"""The distributed operations the trainer needs, behind one small interface (`Engine`).

The epoch loop (stockpredict/job/loop.py), checkpoints, the preemption protocol, metrics and timing call
only these methods, so both engines run the same loop: `HorovodEngine` (every Horovod-specific
line marked `# Horovod:`, in horovod.py) and `TfEngine` in tf.py (tf.distribute's
MultiWorkerMirroredStrategy, lines marked `# tf.distribute:`). `make_engine(name)` picks one.

tf.distribute needs two things Horovod does not: variables created inside `strategy.scope()` and the
train step called through `strategy.run`. Hence `scope()` and `run()`; for Horovod they are a no-op
context and a plain call. `apply_gradients` exists because a Keras optimizer under a strategy would
sum the (already averaged) gradients again.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np

from stockpredict.common.train_config import ENGINES


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

    def set_stall_timeout(self, seconds: int) -> None:
        """The trainer's --stall-timeout (seconds; 0: off), before scope(): an engine whose runtime gives
        up on a silent peer by itself (tf.distribute) waits longer, so the watchdog names the peer."""

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


def make_engine(name: str) -> Engine:
    """The engine called `name` (imports TensorFlow, and Horovod for "horovod": seconds)."""
    if name == "horovod":
        from stockpredict.job.engine.horovod import HorovodEngine

        return HorovodEngine()
    if name == "tf":
        from stockpredict.job.engine.tf import TfEngine

        return TfEngine()
    raise ValueError(f"unknown engine {name!r}; valid: {', '.join(ENGINES)}")
