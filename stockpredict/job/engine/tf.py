"""The `tf` engine: tf.distribute's MultiWorkerMirroredStrategy with the trainer's custom loop.

One worker process per rank (one GPU each, or one per node on CPU), started by plain `srun` (no MPI).
The cluster comes from the Slurm step's variables (stockpredict/job/engine/tfcluster.py builds TF_CONFIG), or
from
a TF_CONFIG already set, or is a single worker. Collectives: NCCL on GPU, TensorFlow's ring
implementation on CPU. Every tf.distribute-specific line is marked `# tf.distribute:`.

The strategy is created on first use (engine.scope()), after loop.configure_tensorflow has set the
threads and the visible GPU: TensorFlow's runtime cannot be reconfigured once a strategy started it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from typing import Any, Callable, Sequence

import numpy as np

from stockpredict.job.engine.tfcluster import WorkerCluster, slurm_cluster, tf_config_cluster


class _AveragingTape:
    """tape.gradient() returning the gradients averaged over all replicas (as Horovod's tape does)."""

    def __init__(self, tape, tf):
        self._tape, self._tf = tape, tf

    def gradient(self, target, sources):
        grads = self._tape.gradient(target, sources)
        context = self._tf.distribute.get_replica_context()  # tf.distribute: inside strategy.run
        # tf.distribute: one batched all-reduce (mean) of every gradient, ring on CPU, NCCL on GPU.
        return context.all_reduce(self._tf.distribute.ReduceOp.MEAN, grads)


class TfEngine:
    """MultiWorkerMirroredStrategy workers; ranks and ports from the srun step (see tfcluster)."""

    name = "tf"

    def __init__(self):
        import tensorflow as tf

        self.tf = tf
        self.cluster: WorkerCluster | None = None
        self._strategy = None
        self._reduce: Callable | None = None  # compiled all-reduce sum, built on first use
        self._stall_timeout = 0  # seconds; set_stall_timeout

    def set_stall_timeout(self, seconds: int) -> None:
        """Let the trainer's stall watchdog name a stopped worker before TensorFlow gives up on it.

        tf.distribute's coordination service aborts every collective 10 s (its default heartbeat timeout)
        after a worker stops sending heartbeats, with an UnavailableError traceback naming only
        /job:worker/task:N. With a stall timeout the heartbeat timeout becomes that + 60 s, so the
        watchdog (job/watchdog.py) ends the job first, naming the rank and host; the service stays the
        backstop. Call before the strategy starts (engine.scope())."""
        self._stall_timeout = int(seconds)

    def init(self) -> None:
        # tf.distribute: TF_CONFIG as the user set it, else built from the srun step, else one worker.
        if os.environ.get("TF_CONFIG"):
            self.cluster = tf_config_cluster(os.environ["TF_CONFIG"])
        else:
            self.cluster = slurm_cluster()
            if self.cluster is not None:
                os.environ["TF_CONFIG"] = self.cluster.tf_config()
        if self.cluster is None:
            self.cluster = WorkerCluster(workers=("localhost:0",), index=0, local_rank=0)

    @property
    def rank(self) -> int:
        return self.cluster.index

    @property
    def size(self) -> int:
        return self.cluster.size

    @property
    def local_rank(self) -> int:
        return self.cluster.local_rank

    def initialized_rank(self) -> int | None:
        return self.cluster.index if self.cluster is not None else None

    def _collectives(self) -> str:
        """NCCL with a visible GPU, else TensorFlow's ring: a CommunicationImplementation member name."""
        return "NCCL" if self.tf.config.get_visible_devices("GPU") else "RING"

    @property
    def strategy(self):
        if self._strategy is None:
            tf = self.tf
            implementation = getattr(tf.distribute.experimental.CommunicationImplementation,
                                     self._collectives())
            if self._stall_timeout and self.size > 1:
                self._configure_coordination(heartbeat_seconds=self._stall_timeout + 60)
            # tf.distribute: reads TF_CONFIG, starts this worker's gRPC server, joins the others.
            self._strategy = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=tf.distribute.experimental.CommunicationOptions(
                    implementation=implementation))
            if self._strategy.num_replicas_in_sync != self.size:
                raise RuntimeError(f"tf.distribute sees {self._strategy.num_replicas_in_sync} replicas, "
                                   f"the cluster has {self.size} workers: one replica per worker expected")
        return self._strategy

    def _configure_coordination(self, heartbeat_seconds: int) -> None:
        """tf.distribute: the coordination service MultiWorkerMirroredStrategy would configure itself
        (it does only when none is configured), with a longer heartbeat timeout."""
        from tensorflow.python.distribute import collective_all_reduce_strategy as mwms
        from tensorflow.python.eager import context

        coordination_config_pb2 = mwms.coordination_config_pb2  # where this TF version keeps it

        if context.context().coordination_service is not None:
            return
        context.context().configure_coordination_service(
            service_type="standalone", service_leader="/job:worker/replica:0/task:0",
            coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=self.size)],
            heartbeat_timeout_in_ms=heartbeat_seconds * 1000)

    def scope(self):
        return self.strategy.scope()  # tf.distribute: variables created here are mirrored on all workers

    def run(self, fn: Callable, *args: Any) -> Any:
        # tf.distribute: call fn in this worker's replica context; one local replica, so one result.
        result = self.strategy.run(fn, args=args)
        return self.strategy.experimental_local_results(result)[0]

    def gradient_tape(self, tape: Any) -> Any:
        return _AveragingTape(tape, self.tf)

    def apply_gradients(self, optimizer: Any, grads_and_vars: Any) -> Any:
        # tf.distribute: the gradients are already averaged; the Keras optimizer must not sum them again.
        return optimizer.apply_gradients(grads_and_vars, skip_gradients_aggregation=True)

    def _sum(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum over all workers of a float64 array of any shape (one compiled function)."""
        if self._reduce is None:
            tf, strategy = self.tf, self.strategy

            def replica_fn(value):
                context = tf.distribute.get_replica_context()
                # tf.distribute: ring sum. tf.identity places the input on this replica's device (an
                # argument passed in as is has none, and all_reduce then fails: "destinations can not
                # be empty").
                return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(value))

            # One trace for every shape, so the stop checks, metrics and gathers never retrace.
            @tf.function(input_signature=[tf.TensorSpec(None, tf.float64)])
            def reduce(value):
                return strategy.run(replica_fn, args=(value,))

            self._reduce = reduce
        result = self._reduce(self.tf.constant(np.asarray(array, np.float64)))
        return self.strategy.experimental_local_results(result)[0].numpy()

    def broadcast_variables(self, variables: Sequence[Any], root_rank: int = 0) -> None:
        # tf.distribute: a sum to which only the root contributes is the root's values, bit for bit
        # (float32 weights and int64 step counters are exact in float64). One collective for all.
        values = [np.asarray(v.numpy()) for v in variables]
        flat = np.concatenate([v.astype(np.float64).ravel() for v in values]) if values else np.zeros(0)
        summed = self._sum(flat if self.rank == root_rank else np.zeros_like(flat))
        offset = 0
        for variable, value in zip(variables, values):
            variable.assign(summed[offset:offset + value.size].reshape(value.shape).astype(value.dtype))
            offset += value.size

    def allreduce_sum(self, values: Sequence[float]) -> np.ndarray:
        return self._sum(np.asarray(values, np.float64))

    def allgather_object(self, obj: Any) -> list:
        # tf.distribute: each worker fills its own row of a zero matrix with its pickled bytes; the
        # sum then holds every row (bytes are exact in float64).
        data = np.frombuffer(pickle.dumps(obj), np.uint8)
        lengths = self._sum(np.eye(self.size)[self.rank] * len(data)).astype(np.int64)
        rows = np.zeros((self.size, int(lengths.max())))
        rows[self.rank, :len(data)] = data
        gathered = self._sum(rows)
        return [pickle.loads(gathered[r, :lengths[r]].astype(np.uint8).tobytes()) for r in range(self.size)]

    def barrier(self) -> None:
        self.allreduce_sum([0.0])  # tf.distribute: every worker must join the all-reduce

    def versions(self) -> dict[str, str | None]:
        versions: dict[str, str | None] = {"tf_keras": None, "collectives": None}
        with contextlib.suppress(ImportError, AttributeError):
            import tf_keras  # noqa: F401 -- TF >= 2.16 with TF_USE_LEGACY_KERAS=1

            versions["tf_keras"] = tf_keras.__version__
        if versions["tf_keras"] is None:
            versions["tf_keras"] = getattr(self.tf.keras, "__version__", None)
        versions["collectives"] = self._collectives()
        return versions
