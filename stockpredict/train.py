"""Train the seed's LSTM on the preprocessed sequences file with Horovod (ring-allreduce).

The same command runs as one process, under horovodrun (Gloo) and under Slurm's srun (MPI via PMIx):

    python -m stockpredict.train --data data/processed/sequences.h5 --run-dir results/runs/r1
    horovodrun -np 2 -H localhost:2 --gloo python -m stockpredict.train --data ... --run-dir ...
    srun --mpi=pmix python -m stockpredict.train --data ... --run-dir ... --resume   # in a batch job

Outputs in --run-dir (rank 0 only): config.json, timing.jsonl (the report's input, schema in
stockpredict/timing.py), train.log, checkpoints/, and at the end metrics.json and model.keras.

Preemption: SIGUSR1 on any rank -> all ranks agree at the next check, finish the step, rank 0 writes a
mid-epoch checkpoint and `run_end` "preempted", and every rank exits 75 (EX_TEMPFAIL) so the batch
script requeues the job; `--resume` then continues exactly where it stopped. See docs/training.md.
"""

from __future__ import annotations

import signal

# The stop flag is set by SIGUSR1 and read between training steps. Open MPI, PMIx and NCCL leave USR1
# alone, while SIGTERM is what Slurm and mpirun use to kill tasks.
STOP_SIGNAL = signal.SIGUSR1
_stop_requested = False
_sigterm_before_preempt = signal.SIG_DFL


def _request_stop(signum, frame):  # noqa: ARG001 -- signal handler signature
    global _stop_requested
    _stop_requested = True


def install_stop_handler() -> None:
    """Route SIGUSR1 to a flag (no work in the handler: it may interrupt anything)."""
    signal.signal(STOP_SIGNAL, _request_stop)


# Before the slow TensorFlow import: USR1's default action would kill the process.
install_stop_handler()


import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Mapping, Sequence  # noqa: E402

import horovod.tensorflow as hvd  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from . import timing  # noqa: E402
from .cli import EXIT_USER_ERROR, LOG_LEVEL_ENV, UserError, get_logger, reject_unknown_keys  # noqa: E402
from .files import write_json_atomic  # noqa: E402

EXIT_PREEMPTED = 75  # EX_TEMPFAIL from sysexits.h: "try again later"; the batch script requeues on it
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_STATE = "state.json"
CHECKPOINTS_KEPT = 2
CHECKPOINT_NAME_RE = re.compile(r"^ckpt-e(\d{4,})-s(\d{7,})$")
MODEL_FILE = "model.keras"
DEFAULT_WARMUP_EPOCHS = 5  # Goyal et al. 2017 warm up over 5 epochs; capped at half the run

log = get_logger("stockpredict.train")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as config.json and in every checkpoint)."""

    data: str                         # the preprocessing stage's HDF5 sequences file
    run_dir: str                      # outputs, checkpoints and logs of this run
    epochs: int = 10                  # passes over the training split
    batch_size: int = 32              # windows per step PER RANK (global batch = this x ranks)
    lr: float = 1e-4                  # Adam learning rate of one rank; scaled linearly by the ranks
    warmup_epochs: float | None = None  # linear ramp from lr to lr x ranks; None: 0 on one rank,
    #                                     else min(5, epochs / 2) (Goyal et al. 2017)
    lstm_units: int = 50              # the seed's model
    dropout: float = 0.3
    dense_units: int = 32
    seed: int = 0                     # initial weights, dropout masks and the per-epoch shuffle
    resume: bool = False              # continue from the latest checkpoint in run_dir if there is one
    mode: str | None = None           # "strong" or "weak": a label for the scaling report only
    threads: int | None = None        # TensorFlow intra-op threads; None: $SLURM_CPUS_PER_TASK or TF's
    stop_check_steps: int = 20        # steps between the ranks' stop agreements (~2 ms each, 2 ranks)
    max_steps: int | None = None      # cap on steps per epoch (benchmarks, smoke runs); None: all

    def __post_init__(self):
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "lstm_units": self.lstm_units, "dense_units": self.dense_units,
                    "stop_check_steps": self.stop_check_steps}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, not {value!r}")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, not {self.lr!r}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), not {self.dropout!r}")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise UserError(f"--warmup-epochs must be >= 0, not {self.warmup_epochs!r}")
        if self.mode not in (None, "strong", "weak"):
            raise UserError(f"--mode must be strong or weak, not {self.mode!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be a positive integer, not {self.max_steps!r}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be a positive integer, not {self.threads!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a dict (e.g. a saved config.json); unknown keys fail listing the valid ones."""
        reject_unknown_keys(cls, values, "train config key")
        return cls(**values)


def resolve_config(config: TrainConfig, ranks: int, environ: Mapping[str, str] = os.environ) -> TrainConfig:
    """Fill the automatic defaults (warm-up, threads) for a run on `ranks` ranks."""
    warmup = config.warmup_epochs
    if warmup is None:
        warmup = 0.0 if ranks == 1 else min(float(DEFAULT_WARMUP_EPOCHS), config.epochs / 2)
    threads = config.threads
    if threads is None and environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        threads = int(environ["SLURM_CPUS_PER_TASK"])
    return dataclasses.replace(config, warmup_epochs=float(warmup), threads=threads)


def choose_gpu(visible_gpus: int, local_rank: int) -> int | None:
    """Index (among the visible GPUs) this rank should use, or None on a CPU-only node.

    Horovod's examples use `local_rank`; but when Slurm binds one GPU per task (--gpus-per-task,
    or one task per node with --gpus-per-node=1) each rank sees a single device, index 0.
    """
    if visible_gpus <= 0:
        return None
    if visible_gpus == 1:
        return 0
    return local_rank % visible_gpus


def parse_args(argv: Sequence[str] | None) -> TrainConfig:
    defaults = TrainConfig(data="", run_dir="")
    parser = argparse.ArgumentParser(prog="python -m stockpredict.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="HDF5 sequences file from preprocessing")
    parser.add_argument("--run-dir", required=True, help="directory for this run's outputs")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="windows per step per rank")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="base learning rate (one rank)")
    parser.add_argument("--warmup-epochs", type=float, default=None,
                        help="LR warm-up epochs (default: 0 on one rank, else min(5, epochs/2))")
    parser.add_argument("--lstm-units", type=int, default=defaults.lstm_units)
    parser.add_argument("--dropout", type=float, default=defaults.dropout)
    parser.add_argument("--dense-units", type=int, default=defaults.dense_units)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in RUN_DIR/checkpoints if any")
    parser.add_argument("--mode", choices=("strong", "weak"), default=None, help="scaling-study label")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: $SLURM_CPUS_PER_TASK if set)")
    parser.add_argument("--stop-check-steps", type=int, default=defaults.stop_check_steps,
                        help="steps between the ranks' check for a stop signal")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="cap on steps per epoch (benchmarks and smoke runs; default: the whole shard)")
    args = parser.parse_args(argv)
    return TrainConfig.from_mapping(vars(args))


# --- checkpoints ---------------------------------------------------------------------------------

def checkpoint_name(epochs_done: int, step: int) -> str:
    """Directory name of the checkpoint taken after `epochs_done` epochs plus `step` steps."""
    return f"ckpt-e{epochs_done:04d}-s{step:07d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, int, Path]]:
    """Complete checkpoints of a run as (epochs_done, step, dir), oldest first.

    Checkpoints are written into a hidden temporary directory and renamed into place, so any
    directory matching the name pattern is complete.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            match = CHECKPOINT_NAME_RE.match(entry.name)
            if match and (entry / CHECKPOINT_STATE).is_file():
                found.append((int(match.group(1)), int(match.group(2)), entry))
    return sorted(found)


# --- the run -------------------------------------------------------------------------------------

class TrainingRun:
    """One attempt of a training run on this rank: set up, train, checkpoint, score, write outputs."""

    def __init__(self, config: TrainConfig):
        self.tf, self.hvd = tf, hvd
        self.wall_start = time.monotonic()
        self.rank, self.size = hvd.rank(), hvd.size()  # Horovod: this rank and the number of ranks
        self.config = resolve_config(config, self.size)
        self.run_dir = Path(self.config.run_dir)
        self.is_root = self.rank == 0

    # Everything that can fail because of user input happens here, identically on every rank and
    # before the first collective, so all ranks exit together with one message from rank 0.
    def validate(self) -> None:
        from .data import read_sequences_info, steps_per_epoch

        cfg = self.config
        self.info = read_sequences_info(cfg.data)
        n_train = self.info.windows["train"]
        self.steps = steps_per_epoch(n_train, cfg.batch_size, self.size)
        if self.steps == 0:
            raise UserError(f"--batch-size {cfg.batch_size} x {self.size} ranks = global batch "
                            f"{cfg.batch_size * self.size} exceeds the {n_train} training windows "
                            f"(each rank's shard holds about {n_train // self.size}); use a smaller batch")
        if cfg.max_steps is not None:
            self.steps = min(self.steps, cfg.max_steps)
        checkpoints = list_checkpoints(self.run_dir)
        self.resume_state = None
        self.resume_dir = None
        if checkpoints and not cfg.resume:
            raise UserError(f"{self.run_dir} already holds checkpoints of a run; pass --resume to "
                            f"continue it, or use a new --run-dir")
        if checkpoints:
            self.resume_dir = checkpoints[-1][2]
            self.resume_state = json.loads((self.resume_dir / CHECKPOINT_STATE).read_text())
            saved = self.resume_state
            if (saved["seq_len"], saved["n_features"], saved["features"]) != (
                    self.info.seq_len, self.info.n_features, list(self.info.features)):
                raise UserError(
                    f"checkpoint {self.resume_dir.name} was trained on windows of {saved['seq_len']} min x "
                    f"{saved['features']}, but {cfg.data} holds {self.info.seq_len} min x "
                    f"{list(self.info.features)}; use the original data file or a new --run-dir")
            model_keys = ("lstm_units", "dropout", "dense_units")
            if any(saved["config"][k] != getattr(cfg, k) for k in model_keys):
                raise UserError(f"checkpoint {self.resume_dir.name} has model "
                                f"{ {k: saved['config'][k] for k in model_keys} }, the command line asks for "
                                f"{ {k: getattr(cfg, k) for k in model_keys} }")

    def setup(self) -> None:
        from .model import build_model, dropout_generators

        tf, hvd, cfg = self.tf, self.hvd, self.config
        # Same seed on every rank: identical initial weights (broadcast makes sure anyway) and a
        # reproducible run; the dropout generators are then re-seeded per rank below.
        tf.keras.utils.set_random_seed(cfg.seed)
        self.model = build_model(self.info.seq_len, self.info.n_features, cfg.lstm_units, cfg.dropout,
                                 cfg.dense_units)
        self.dropout_rngs = dropout_generators(self.model)
        for i, rng in enumerate(self.dropout_rngs):
            # Independent dropout masks per rank, reproducible from --seed.
            rng.reset_from_seed(cfg.seed * 1_000_003 + self.rank * 101 + i)
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps))
        # Horovod: scale the learning rate by the number of ranks (Goyal et al. 2017), with a warm-up.
        self.schedule = WarmupSchedule(cfg.lr, self.size, self.warmup_steps)
        self.optimizer = tf.keras.optimizers.Adam(learning_rate=self.schedule)
        self.optimizer.build(self.model.trainable_variables)  # create slots now so they can be broadcast
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
        self.epochs_done, self.skip_steps, self.carried_loss_sum = 0, 0, 0.0
        if self.resume_state is not None:
            state = self.resume_state
            self.checkpoint.read(str(self.resume_dir / "weights")).expect_partial()
            self.epochs_done, self.skip_steps = state["epochs_done"], state["step"]
            self.carried_loss_sum = state["partial_loss_sum"]
            if state["ranks"] == self.size:
                for rng, rng_state in zip(self.dropout_rngs, state["dropout_rng_states"][self.rank]):
                    rng.state.assign(np.asarray(rng_state, np.int64))
            else:
                log.warning("checkpoint %s was written by %d ranks, this run has %d: the data order and "
                            "dropout masks differ from an uninterrupted run", self.resume_dir.name,
                            state["ranks"], self.size)
                if self.skip_steps:
                    done = self.skip_steps * state["batch_size"] * state["ranks"]
                    self.skip_steps = min(self.steps, -(-done // (cfg.batch_size * self.size)))
        # Horovod: start every rank from rank 0's weights and optimizer state.
        hvd.broadcast_variables(self.model.variables, root_rank=0)
        hvd.broadcast_variables(self.optimizer.variables, root_rank=0)

        model, optimizer, loss_fn = self.model, self.optimizer, tf.keras.losses.MeanSquaredError()

        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)  # this rank, this epoch
        loss_sum = self.loss_sum

        # Several steps per call, looping inside the graph (like Keras' steps_per_execution): Python
        # runs once per --stop-check-steps steps, not once per step.
        @tf.function
        def train_steps(iterator, n_steps):
            for _ in tf.range(n_steps):
                x, y = next(iterator)
                with tf.GradientTape() as tape:
                    pred = model(x, training=True)
                    loss = loss_fn(y[:, None], pred)
                # Horovod: average the gradients over all ranks (ring-allreduce).
                tape = hvd.DistributedGradientTape(tape)
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables))
                loss_sum.assign_add(tf.cast(loss, tf.float64))

        @tf.function
        def predict(x):
            return model(x, training=False)[:, 0]

        self.train_steps, self.predict = train_steps, predict

    def collective_sum(self, values) -> np.ndarray:
        """Horovod: element-wise sum of a small float64 vector over all ranks."""
        tensor = self.tf.constant(np.asarray(values, np.float64))
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, name=None).numpy()  # Horovod: sum over ranks

    def stop_agreed(self) -> bool:
        """Horovod: True on every rank if any rank got the stop signal (one tiny allreduce)."""
        if self.size == 1:
            return _stop_requested  # nothing to agree on; skips a ~1 ms Horovod cycle
        return bool(self.collective_sum([1.0 if _stop_requested else 0.0])[0] > 0)

    def run_start_record(self) -> dict:
        import horovod
        tf, hvd, cfg = self.tf, self.hvd, self.config
        node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        # Horovod: every rank reports its node; virtual Slurm nodes share one hostname, so Slurm's
        # node name (when set) is what tells them apart.
        hosts = sorted(set(hvd.allgather_object(node)))
        gpu_devices = [d.name for d in tf.config.list_physical_devices("GPU")]
        gpus = len(gpu_devices)
        return timing.make_event(
            "run_start", time=timing.utc_now_iso(), job_id=os.environ.get("SLURM_JOB_ID"),
            attempt=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            resumed_from_epoch=self.epochs_done if self.resume_state is not None else None,
            ranks=self.size, nodes=len(hosts), gpus_per_node=gpus, hosts=hosts,
            batch_size_per_rank=cfg.batch_size, global_batch_size=cfg.batch_size * self.size,
            learning_rate=cfg.lr * self.size, epochs=cfg.epochs, mode=cfg.mode,
            dataset=os.path.abspath(cfg.data), windows=dict(self.info.windows),
            versions={"python": platform.python_version(), "tensorflow": tf.__version__,
                      "horovod": horovod.__version__,
                      "mpi": mpi_version() if hvd.mpi_enabled() and self.is_root else None},
            config=dataclasses.asdict(cfg), hardware=hardware_summary(gpu_devices))

    def write_checkpoint(self, epochs_done: int, step: int, loss_sum: float) -> None:
        """All ranks call this (it gathers dropout states); rank 0 writes checkpoints/ckpt-eE-sS/."""
        states = [[rng.state.numpy().tolist() for rng in self.dropout_rngs]]
        # Horovod: collect every rank's dropout generator state so a resume restores each rank's masks.
        all_states = self.hvd.allgather_object(states[0])
        if not self.is_root:  # Horovod: only rank 0 writes files
            return
        cfg = self.config
        root = self.run_dir / CHECKPOINT_DIR
        root.mkdir(parents=True, exist_ok=True)
        name = checkpoint_name(epochs_done, step)
        tmp = root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.checkpoint.write(str(tmp / "weights"))
        write_json_atomic(tmp / CHECKPOINT_STATE, {
            "epochs_done": epochs_done, "step": step, "partial_loss_sum": loss_sum,
            "steps_per_epoch": self.steps, "ranks": self.size, "batch_size": cfg.batch_size,
            "seed": cfg.seed, "seq_len": self.info.seq_len, "n_features": self.info.n_features,
            "features": list(self.info.features), "config": dataclasses.asdict(cfg),
            "dropout_rng_states": all_states, "time": timing.utc_now_iso(),
        })
        final = root / name
        if final.exists():  # the same point reached again after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic: a checkpoint directory is either complete or absent
        for _, _, old in list_checkpoints(self.run_dir)[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old, ignore_errors=True)

    def evaluate(self, split: str, with_metrics: bool = False) -> np.ndarray:
        """This rank's share of a whole split, summed: [count, squared error] or metrics SUM_FIELDS."""
        from .data import iter_eval_shard
        from .metrics import SUM_FIELDS, shard_sums

        info = self.info
        sums = np.zeros(len(SUM_FIELDS) if with_metrics else 2)
        for x, y, tickers, last_close in iter_eval_shard(info.path, split, self.rank, self.size,
                                                         info.close_index):
            pred = self.predict(x).numpy()
            if with_metrics:
                sums += shard_sums(pred, y, last_close, tickers, info.norm_min, info.norm_max,
                                   info.close_index)
            else:
                sums += [y.size, float(np.sum((pred.astype(np.float64) - y) ** 2))]
        return self.collective_sum(sums)  # Horovod: sum each rank's share of the split

    def weights_checksum(self) -> str:
        digest = hashlib.sha256()
        for weight in self.model.get_weights():
            digest.update(np.ascontiguousarray(weight).tobytes())
        return digest.hexdigest()[:16]

    def train(self) -> int:
        """The epoch loop; returns the process exit status (0, or EXIT_PREEMPTED)."""
        from .data import train_dataset

        tf, cfg = self.tf, self.config
        timing_path = self.run_dir / timing.TIMING_FILE
        start = self.run_start_record()
        if self.is_root:  # Horovod: only rank 0 writes files
            write_json_atomic(self.run_dir / "config.json", {
                "train": dataclasses.asdict(cfg), "ranks": self.size,
                "global_batch_size": cfg.batch_size * self.size, "learning_rate": cfg.lr * self.size,
                "warmup_steps": self.warmup_steps, "steps_per_epoch": self.steps,
                "windows": dict(self.info.windows)})
            timing.append_event(timing_path, start)
        log.info("%s %d rank(s) on %s; global batch %d, lr %.3g (warm-up %d steps), %d steps/epoch",
                 "resuming from " + self.resume_dir.name if self.resume_dir else "starting fresh with",
                 self.size, ",".join(start["hosts"]), cfg.batch_size * self.size, cfg.lr * self.size,
                 self.warmup_steps, self.steps)
        if cfg.resume and self.resume_dir is None:
            log.info("--resume: no checkpoint in %s, starting fresh", self.run_dir / CHECKPOINT_DIR)

        first_epoch = True
        for epoch in range(self.epochs_done + 1, cfg.epochs + 1):
            skip = self.skip_steps if first_epoch else 0
            resumed = first_epoch and self.resume_state is not None
            loss_sum = self.loss_sum
            loss_sum.assign(0.0)
            dataset = train_dataset(self.info, cfg.batch_size, self.steps, cfg.seed, epoch, self.rank,
                                    self.size, skip_steps=skip)
            progress = make_progress(self.is_root, self.steps, skip, f"epoch {epoch}/{cfg.epochs}")
            t0 = time.perf_counter()
            iterator = iter(dataset)
            step = skip
            while step < self.steps:
                # Run up to the next multiple of stop_check_steps, where the ranks check for a stop.
                n = min(cfg.stop_check_steps - step % cfg.stop_check_steps, self.steps - step)
                self.train_steps(iterator, tf.constant(n, tf.int64))
                step += n
                progress.update(n)
                if step < self.steps and self.stop_agreed():
                    progress.close()
                    return self.preempt(epoch - 1, step, self.carried_loss_sum if first_epoch else 0.0,
                                        float(loss_sum.numpy()))
            train_seconds = time.perf_counter() - t0
            progress.close()
            t1 = time.perf_counter()
            val = self.evaluate("val")
            val_seconds = time.perf_counter() - t1
            carried = self.carried_loss_sum if first_epoch else 0.0
            # Horovod: mean training loss over all ranks and steps (incl. steps before a resume).
            total_loss = self.collective_sum([float(loss_sum.numpy())])[0] + carried
            train_loss = total_loss / (self.steps * self.size)
            val_loss = val[1] / val[0] if val[0] else None
            steps_run = self.steps - skip
            samples = steps_run * cfg.batch_size * self.size
            self.write_checkpoint(epoch, 0, 0.0)
            if self.is_root:
                timing.append_event(timing_path, timing.make_event(
                    "epoch", epoch=epoch, train_seconds=round(train_seconds, 4),
                    val_seconds=round(val_seconds, 4), steps=steps_run, samples=samples,
                    samples_per_second=round(samples / train_seconds, 2), train_loss=train_loss,
                    val_loss=val_loss, resumed=resumed))
            log.info("epoch %d/%d: train_loss %.6g val_loss %s, %.0f samples/s (%.1f s train, %.1f s val)",
                     epoch, cfg.epochs, train_loss, "n/a" if val_loss is None else f"{val_loss:.6g}",
                     samples / train_seconds, train_seconds, val_seconds)
            first_epoch = False
            if epoch < cfg.epochs and self.stop_agreed():
                return self.preempt(epoch, 0, 0.0, 0.0, checkpoint_written=True)
        return self.finish()

    def preempt(self, epochs_done: int, step: int, carried: float, local_loss_sum: float,
                checkpoint_written: bool = False) -> int:
        if not checkpoint_written:
            # Horovod: the partial epoch's loss, summed over ranks, travels in the checkpoint.
            loss_sum = self.collective_sum([local_loss_sum])[0] + carried
            self.write_checkpoint(epochs_done, step, float(loss_sum))
        log.warning("stop signal: checkpoint after %d epoch(s) + %d step(s) written; exiting %d for requeue",
                    epochs_done, step, EXIT_PREEMPTED)
        if self.is_root:
            timing.append_event(self.run_dir / timing.TIMING_FILE, timing.make_event(
                "run_end", status="preempted", total_seconds=self.elapsed(), test=None))
        # srun --kill-on-bad-exit and horovodrun SIGTERM the remaining ranks as soon as the first one
        # exits non-zero; a rank still on its way out would then end "Terminated" instead of 75 and
        # srun's status would not say "requeue". From here on SIGTERM is ignored (Slurm's SIGKILL
        # after KillWait still applies) and main() leaves with os._exit.
        global _sigterm_before_preempt
        _sigterm_before_preempt = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Horovod: wait for rank 0's files before anyone exits.
        self.collective_sum([0.0])
        return EXIT_PREEMPTED

    def elapsed(self) -> float:
        return round(time.monotonic() - self.wall_start, 3)

    def finish(self) -> int:
        from .metrics import metrics_from_sums

        test_sums = self.evaluate("test", with_metrics=True) if self.info.windows["test"] else None
        test = metrics_from_sums(test_sums) if test_sums is not None else None
        # Horovod: every rank's weights fingerprint, to prove the ranks stayed in sync.
        checksums = self.hvd.allgather_object(self.weights_checksum())
        # Horovod: every rank's peak resident memory (MB), for the memory goal per rank.
        peak_rss = self.hvd.allgather_object(round(peak_rss_mb(), 1))
        if len(set(checksums)) != 1:
            log.error("ranks ended with different weights: %s", checksums)
        if self.is_root:  # Horovod: only rank 0 writes files
            write_json_atomic(self.run_dir / "metrics.json", {
                "test": test, "windows": dict(self.info.windows), "weights_checksums": checksums,
                "peak_rss_mb": peak_rss})
            # Keras picks the format from the suffix, so the temporary name keeps ".keras". The model
            # is not compiled, so no optimizer state goes in (checkpoints/ hold that).
            tmp = self.run_dir / f".tmp-{os.getpid()}-{MODEL_FILE}"
            self.model.save(tmp)
            os.replace(tmp, self.run_dir / MODEL_FILE)
            timing.append_event(self.run_dir / timing.TIMING_FILE, timing.make_event(
                "run_end", status="completed", total_seconds=self.elapsed(), test=test))
        if test is not None:
            log.info("test: mse %.6g (persistence %.6g, skill %s), rmse %.4g / mae %.4g in price units, "
                     "direction accuracy %s", test["mse"], test["persistence_mse"],
                     _fmt(test["skill"]), test["rmse_price"], test["mae_price"],
                     _fmt(test["direction_accuracy"]))
        return 0


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports ru_maxrss in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


class _NoProgress:
    def update(self, n):
        pass

    def close(self):
        pass


def make_progress(is_root: bool, total: int, initial: int, desc: str):
    """A tqdm bar on rank 0 when stderr is a terminal; a no-op otherwise (batch logs stay clean)."""
    if not (is_root and sys.stderr.isatty()):
        return _NoProgress()
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False)


def hardware_summary(gpu_devices: Sequence[str]) -> dict:
    """What rank 0 ran on: CPU model, logical CPUs, memory (GiB), the GPUs TensorFlow sees and the GPUs
    Slurm bound (CUDA_VISIBLE_DEVICES). On the local test cluster Slurm binds a fake GPU while
    TensorFlow (CPU build) sees none: both are recorded so the report never claims a GPU run."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "memory_gib": memory_gib,
            "tensorflow_gpus": list(gpu_devices), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def mpi_version() -> str | None:
    """The MPI library's name and version ("Open MPI 4.1.4"), from `mpirun --version`; None if unknown."""
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(([^)]+)\)\s+(\S+)", out)
    return f"{match.group(1)} {match.group(2)}" if match else (out.splitlines() or [None])[0]


class WarmupSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = base_lr * (1 + (ranks - 1) * min(step / warmup_steps, 1)): from the one-rank rate
    to ranks x that rate, linearly over the warm-up (Goyal et al. 2017, gradual warm-up). Driven by
    the optimizer's step counter, which checkpoints restore."""

    def __init__(self, base_lr: float, ranks: int, warmup_steps: int):
        self.base_lr, self.ranks, self.warmup_steps = float(base_lr), int(ranks), int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        progress = 1.0 if self.warmup_steps <= 0 else tf.minimum(step / self.warmup_steps, 1.0)
        return self.base_lr * (1.0 + (self.ranks - 1) * progress)

    def get_config(self):
        return {"base_lr": self.base_lr, "ranks": self.ranks, "warmup_steps": self.warmup_steps}


def configure_tensorflow(config: TrainConfig, local_rank: int) -> None:
    """Threads and GPU pinning; must run before TensorFlow executes its first op."""
    if config.threads:
        tf.config.threading.set_intra_op_parallelism_threads(config.threads)
        tf.config.threading.set_inter_op_parallelism_threads(config.threads)
    gpus = tf.config.list_physical_devices("GPU")
    index = choose_gpu(len(gpus), local_rank)
    if index is not None:
        # Horovod: pin one GPU per rank (device 0 when Slurm already bound one GPU to the task).
        tf.config.set_visible_devices(gpus[index], "GPU")
        tf.config.experimental.set_memory_growth(gpus[index], True)


def setup_logging(run_dir: Path, is_root: bool) -> logging.Handler | None:
    """Rank 0 logs INFO to stderr and run_dir/train.log; other ranks only warnings and errors."""
    if not is_root:
        log.setLevel(logging.WARNING)
        return None
    if log.level == logging.NOTSET:  # the host application configured logging (e.g. pytest)
        log.setLevel(os.environ.get(LOG_LEVEL_ENV, "INFO").upper())
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return handler


def train(config: TrainConfig) -> int:
    """Run (or continue) one training run on this rank; returns the exit status (0 or 75)."""
    hvd.init()  # Horovod: rank and size come from horovodrun (Gloo) or srun/PMIx (MPI)
    resolved = resolve_config(config, hvd.size())  # Horovod: warm-up default depends on the ranks
    configure_tensorflow(resolved, hvd.local_rank())  # Horovod: GPU pinning by local rank
    tf.keras.backend.experimental.enable_tf_random_generator()  # dropout RNG state we can checkpoint
    run = TrainingRun(config)
    run.validate()
    handler = setup_logging(run.run_dir, run.is_root)
    try:
        run.setup()
        return run.train()
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def main(argv: Sequence[str] | None = None, *, exit_now_when_preempted: bool = True) -> int:
    """Console entry point: `stockpredict-train` / `python -m stockpredict.train`.

    After a preemption (checkpoint written, ranks past the final barrier) the process leaves at once
    with status 75, skipping interpreter teardown: the launcher kills the remaining tasks as soon as
    the first exits non-zero, and a rank still tearing down TensorFlow would then report "killed"
    instead of 75, so srun's status would not say "requeue". Tests calling main() in-process pass
    exit_now_when_preempted=False.
    """
    install_stop_handler()
    try:
        config = parse_args(argv)
        status = train(config)
        if status == EXIT_PREEMPTED and not exit_now_when_preempted:
            signal.signal(signal.SIGTERM, _sigterm_before_preempt)  # in-process caller: undo preempt()
        elif status == EXIT_PREEMPTED:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_PREEMPTED)
        return status
    except UserError as err:
        if _rank_from_env() == 0:  # Horovod: only rank 0 reports; every rank exits non-zero
            print(f"error: {err}", file=sys.stderr)
        else:
            # The launcher kills the other ranks once one exits non-zero; give rank 0 time to print.
            # (No barrier here: a rank that failed before the first collective must never wait on one.)
            time.sleep(2)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _rank_from_env() -> int:
    """This process's rank before or after hvd.init() (0 for a single process)."""
    try:
        return hvd.rank()
    except ValueError:  # hvd.init() not called yet
        pass
    for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
