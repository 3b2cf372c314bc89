"""One rank's training run: plan, build, restore, the epoch loop, then preempt or finish.

Each step is a function returning what the next one needs (RunPlan -> Replica -> Position -> exit
status). Nothing here names the distributed framework: every collective goes through an
`engine.Engine` (stockpredict/job/engine/__init__.py), so another engine runs the same loop, checkpoints,
preemption protocol, metrics and timing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from stockpredict.common import identity, rundir, slurmenv, timing
from stockpredict.common import transform as transforms
from stockpredict.common.checkout import toolkit_provenance
from stockpredict.common.errors import UserError
from stockpredict.common.files import reporting_disk_full, write_atomic, write_json_atomic
from stockpredict.common.hardware import affinity_summary
from stockpredict.common.logs import LOG_LEVEL_ENV, get_logger
from stockpredict.common.sequences import SequencesInfo
from stockpredict.common.train_config import TrainConfig, resolve_config
from stockpredict.job import checkpoints, preemption, watchdog
from stockpredict.job.checkpoints import ResumePoint
from stockpredict.job.engine import MPI_YIELD_VARIABLE, Engine
from stockpredict.job.tensorboard_events import EventLog

log = get_logger("stockpredict.train")
PROCESS_START = timing.process_start_time()  # run_start `process_start`: the cost split's zero


# --- 1. plan: everything that can fail because of user input --------------------------------------

@dataclass(frozen=True)
class RunPlan:
    """A validated run on a known number of ranks."""

    config: TrainConfig           # resolved: warm-up and threads filled in
    info: SequencesInfo
    steps: int                    # steps per epoch, the same on every rank
    warmup_steps: int
    resume: ResumePoint | None    # the checkpoint to continue from, or None

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)


def plan_run(config: TrainConfig, ranks: int) -> RunPlan:
    """Validate `config` against the data file and the run directory.

    Runs identically on every rank and before the first collective, so all ranks fail together
    with one message from rank 0.
    """
    from stockpredict.common.sequences import read_sequences_info
    from stockpredict.job.data import steps_per_epoch

    info = read_sequences_info(config.data)
    n_train = info.windows["train"]
    steps = steps_per_epoch(n_train, config.batch_size, ranks)
    if steps == 0:
        raise UserError(f"--batch-size {config.batch_size} x {ranks} ranks = global batch "
                        f"{config.batch_size * ranks} exceeds the {n_train} training windows "
                        f"(each rank's shard holds about {n_train // ranks}); use a smaller batch")
    if config.max_steps is not None:
        steps = min(steps, config.max_steps)
    resume = checkpoints.find_resume(config, info.seq_len, info.features)
    if resume is not None and resume.state.get("representation", "seed") != info.representation:
        # Same shapes, other units: resuming would silently train on a different target.
        raise UserError(f"checkpoint {resume.dir.name} was trained on the "
                        f"{resume.state.get('representation', 'seed')!r} representation, but {config.data} "
                        f"holds {info.representation!r}; use the original data file or a new --run-dir")
    return RunPlan(config=config, info=info, steps=steps, resume=resume,
                   warmup_steps=int(round(config.warmup_epochs * steps)))


# --- 2. build: model, optimizer, compiled steps ------------------------------------------------------

class WarmupSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = base_lr * (1 + (ranks - 1) * min(step / warmup_steps, 1)): from the one-rank rate
    to ranks x that rate, linearly over the warm-up (Goyal et al. 2017, gradual warm-up); then, with
    `total_steps`, a cosine decay from that peak to 0 at the last step (measured to settle the forecast's
    skill, docs/training.md "Accuracy"). Driven by the optimizer's step counter, which checkpoints
    restore, so a resumed run continues on the same curve."""

    def __init__(self, base_lr: float, ranks: int, warmup_steps: int, total_steps: int | None = None):
        self.base_lr, self.ranks, self.warmup_steps = float(base_lr), int(ranks), int(warmup_steps)
        self.total_steps = None if total_steps is None else int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        progress = 1.0 if self.warmup_steps <= 0 else tf.minimum(step / self.warmup_steps, 1.0)
        peak = self.base_lr * (1.0 + (self.ranks - 1) * progress)
        if self.total_steps is None or self.total_steps <= self.warmup_steps:
            return peak
        span = self.total_steps - self.warmup_steps
        decayed = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
        return peak * 0.5 * (1.0 + tf.cos(np.pi * decayed))

    def get_config(self):
        return {"base_lr": self.base_lr, "ranks": self.ranks, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


@dataclass(frozen=True)
class Replica:
    """This rank's copy of the model and what trains and scores it."""

    model: Any                     # tf.keras.Model
    optimizer: Any                 # tf.keras.optimizers.Adam on a WarmupSchedule
    checkpoint: Any                # tf.train.Checkpoint(model, optimizer)
    dropout_rngs: list             # tf.random.Generator per dropout layer, checkpointed per rank
    loss_sum: Any                  # tf.Variable: this rank's loss sum of the current epoch
    train_steps: Callable          # (xs, ys) stacked n batches -> None, n steps inside one graph call
    predict: Callable              # x -> predictions (n,)


def build_replica(plan: RunPlan, engine: Engine) -> Replica:
    """A fresh model and optimizer (same seed on every rank) and the compiled train/predict steps."""
    from stockpredict.job.model import build_model, dropout_generators, unroll_lstm

    cfg = plan.config
    # Same seed on every rank: identical initial weights (the broadcast makes sure anyway) and a
    # reproducible run; the dropout generators are then re-seeded per rank below.
    tf.keras.utils.set_random_seed(cfg.seed)
    with engine.scope():  # tf.distribute creates mirrored variables here; Horovod ordinary ones
        model = build_model(plan.info.seq_len, plan.info.n_features, cfg.lstm_units, cfg.dropout,
                            cfg.dense_units, representation=plan.info.representation,
                            unroll=unroll_lstm(tf.config.get_visible_devices("GPU")))
        dropout_rngs = dropout_generators(model)
        for i, rng in enumerate(dropout_rngs):
            # Independent dropout masks per rank, reproducible from --seed.
            rng.reset_from_seed(cfg.seed * 1_000_003 + engine.rank * 101 + i)
        # The learning rate scales with the number of ranks (Goyal et al. 2017), after a warm-up.
        total_steps = cfg.epochs * plan.steps if cfg.lr_decay == "cosine" else None
        optimizer = tf.keras.optimizers.Adam(
            learning_rate=WarmupSchedule(cfg.lr, engine.size, plan.warmup_steps, total_steps))
        optimizer.build(model.trainable_variables)  # create slots now so they can be broadcast
    # Per-window losses, averaged here: Keras refuses its default batch-mean reduction under a
    # tf.distribute strategy (it cannot know the global batch); the mean over this rank's batch is
    # what Horovod has always averaged, and what the tf engine's tape averages too.
    loss_fn = tf.keras.losses.MeanSquaredError(reduction=tf.keras.losses.Reduction.NONE)
    loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)  # this rank's own, outside the scope

    def train_step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = tf.reduce_mean(loss_fn(y[:, None], pred))
        tape = engine.gradient_tape(tape)  # gradients averaged over all ranks
        grads = tape.gradient(loss, model.trainable_variables)
        engine.apply_gradients(optimizer, zip(grads, model.trainable_variables))
        return loss

    # Several steps per call, looping inside the graph (like Keras' steps_per_execution): Python
    # runs once per --stop-check-steps steps, not once per step. The n batches come stacked
    # (data.EpochBatches.take); the signature's open first axis keeps it to one trace for every n.
    info = plan.info
    stacked = (tf.TensorSpec((None, cfg.batch_size, info.seq_len, info.n_features), tf.float32),
               tf.TensorSpec((None, cfg.batch_size), tf.float32))

    @tf.function(input_signature=stacked)
    def train_steps(xs, ys):
        for i in tf.range(tf.shape(xs)[0]):
            loss = engine.run(train_step, xs[i], ys[i])
            loss_sum.assign_add(tf.cast(loss, tf.float64))

    # One trace for every batch length (an eval shard's last batch is shorter): each retrace of the
    # (unrolled) model costs about a second.
    @tf.function(input_signature=[tf.TensorSpec((None, info.seq_len, info.n_features), tf.float32)])
    def predict(x):
        return model(x, training=False)[:, 0]

    return Replica(model=model, optimizer=optimizer, dropout_rngs=dropout_rngs, loss_sum=loss_sum,
                   checkpoint=tf.train.Checkpoint(model=model, optimizer=optimizer),
                   train_steps=train_steps, predict=predict)


# --- 3. restore: where this attempt starts ----------------------------------------------------------

@dataclass(frozen=True)
class Position:
    """Where the epoch loop starts: after `epochs_done` epochs plus `skip_steps` steps of the next."""

    epochs_done: int = 0
    skip_steps: int = 0
    carried_loss_sum: float = 0.0  # all ranks' loss sum of the steps skipped (from the checkpoint)


def restore(plan: RunPlan, replica: Replica, engine: Engine) -> Position:
    """Load the resume checkpoint if any, then start every rank from rank 0's weights and optimizer."""
    position = Position()
    if plan.resume is not None:
        state = plan.resume.state
        replica.checkpoint.read(plan.resume.weights).expect_partial()
        position = Position(state["epochs_done"], state["step"], state["partial_loss_sum"])
        if state["ranks"] == engine.size:
            for rng, rng_state in zip(replica.dropout_rngs, state["dropout_rng_states"][engine.rank]):
                rng.state.assign(np.asarray(rng_state, np.int64))
        else:
            log.warning("checkpoint %s was written by %d ranks, this run has %d: the data order and "
                        "dropout masks differ from an uninterrupted run", plan.resume.dir.name,
                        state["ranks"], engine.size)
            if position.skip_steps:
                done = position.skip_steps * state["batch_size"] * state["ranks"]
                skip = min(plan.steps, -(-done // (plan.config.batch_size * engine.size)))
                position = dataclasses.replace(position, skip_steps=skip)
    engine.broadcast_variables(replica.model.variables, root_rank=0)
    engine.broadcast_variables(replica.optimizer.variables, root_rank=0)
    return position


# --- 4. the epoch loop ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """What every step of the loop reads: the plan, this rank's replica, the engine, the clock."""

    plan: RunPlan
    replica: Replica
    engine: Engine
    wall_start: float             # time.monotonic() when this attempt started
    stall: Any = watchdog.NoWatchdog()  # progress() after each group of steps (job/watchdog.py)
    board: EventLog | None = None  # rank 0's TensorBoard events (tensorboard_events.py); None: not written

    @property
    def is_root(self) -> bool:
        return self.engine.rank == 0

    def elapsed(self) -> float:
        return round(time.monotonic() - self.wall_start, 3)


def stop_agreed(engine: Engine) -> bool:
    """True on every rank if any rank got the stop signal (one tiny allreduce)."""
    if engine.size == 1:
        return preemption.stop_requested()  # nothing to agree on; skips a ~1 ms collective
    return bool(engine.allreduce_sum([1.0 if preemption.stop_requested() else 0.0])[0] > 0)


def train_epochs(run: Run, position: Position) -> int:
    """The epoch loop from `position`; returns the process exit status (0, or EXIT_PREEMPTED)."""
    from stockpredict.job.data import epoch_batches

    plan, replica, engine, cfg = run.plan, run.replica, run.engine, run.plan.config
    size, steps = engine.size, plan.steps
    board = run.board or EventLog(plan.run_dir, enabled=False)
    timing_path = plan.run_dir / rundir.TIMING_LOG
    start = run_start_record(run, position)
    if run.is_root:  # only rank 0 writes files
        write_json_atomic(plan.run_dir / rundir.CONFIG, {
            "train": dataclasses.asdict(cfg), "ranks": size,
            "global_batch_size": cfg.batch_size * size, "learning_rate": cfg.lr * size,
            "warmup_steps": plan.warmup_steps, "steps_per_epoch": steps,
            "windows": dict(plan.info.windows)})
        timing.append_event(timing_path, start)
    log.info("%s %d rank(s) on %s; global batch %d, lr %.3g (warm-up %d steps), %d steps/epoch",
             "resuming from " + plan.resume.dir.name if plan.resume else "starting fresh with",
             size, ",".join(start["hosts"]), cfg.batch_size * size, cfg.lr * size, plan.warmup_steps, steps)
    if cfg.resume and plan.resume is None:
        log.info("--resume: no checkpoint in %s, starting fresh", plan.run_dir / rundir.CHECKPOINTS)
    for warning in plan.resume.fallback_warnings() if plan.resume is not None and run.is_root else ():
        log.warning("%s", warning)  # every rank skipped the same checkpoints; rank 0 says so

    first_epoch = True
    for epoch in range(position.epochs_done + 1, cfg.epochs + 1):
        skip = position.skip_steps if first_epoch else 0
        carried = position.carried_loss_sum if first_epoch else 0.0
        resumed = first_epoch and plan.resume is not None
        replica.loss_sum.assign(0.0)
        progress = make_progress(run.is_root, steps, skip, f"epoch {epoch}/{cfg.epochs}")
        t0 = time.perf_counter()
        step = skip
        board.start_epoch(skip)
        with epoch_batches(plan.info, cfg.batch_size, steps, cfg.seed, epoch, engine.rank, size,
                           skip_steps=skip) as batches:
            while step < steps:
                # Run up to the next multiple of stop_check_steps, where the ranks check for a stop.
                n = min(cfg.stop_check_steps - step % cfg.stop_check_steps, steps - step)
                if cfg.tensorboard_steps:  # the same on every rank: the stop checks are collectives
                    n = min(n, cfg.tensorboard_steps - step % cfg.tensorboard_steps)
                replica.train_steps(*batches.take(n))
                run.stall.progress()
                step += n
                if cfg.tensorboard_steps and step % cfg.tensorboard_steps == 0:
                    board.steps_done(step, replica.loss_sum, replica.optimizer)
                progress.update(n)
                if step < steps and stop_agreed(engine):
                    progress.close()
                    return preempt(run, epoch - 1, step, carried, float(replica.loss_sum.numpy()))
        train_seconds = time.perf_counter() - t0
        progress.close()
        t1 = time.perf_counter()
        val = evaluate(run, "val")
        val_seconds = time.perf_counter() - t1
        # Mean training loss over all ranks and steps (incl. steps before a resume).
        total_loss = engine.allreduce_sum([float(replica.loss_sum.numpy())])[0] + carried
        train_loss = total_loss / (steps * size)
        val_loss = val[1] / val[0] if val[0] else None
        steps_run = steps - skip
        samples = steps_run * cfg.batch_size * size
        t2 = time.perf_counter()
        save_checkpoint(run, epoch, 0, 0.0)
        checkpoint_seconds = time.perf_counter() - t2
        if run.is_root:
            timing.append_event(timing_path, timing.make_event(
                "epoch", epoch=epoch, train_seconds=round(train_seconds, 4),
                val_seconds=round(val_seconds, 4), steps=steps_run, samples=samples,
                samples_per_second=round(samples / train_seconds, 2), train_loss=train_loss,
                val_loss=val_loss, resumed=resumed, checkpoint_seconds=round(checkpoint_seconds, 4)))
        board.epoch(epoch, train_loss, val_loss, round(samples / train_seconds, 2), replica.optimizer)
        log.info("epoch %d/%d: train_loss %.6g val_loss %s, %.0f samples/s (%.1f s train, %.1f s val)",
                 epoch, cfg.epochs, train_loss, "n/a" if val_loss is None else f"{val_loss:.6g}",
                 samples / train_seconds, train_seconds, val_seconds)
        first_epoch = False
        if epoch < cfg.epochs and stop_agreed(engine):
            return preempt(run, epoch, 0, 0.0, 0.0, checkpoint_written=True)
    return finish(run)


def evaluate(run: Run, split: str, with_metrics: bool = False) -> np.ndarray:
    """A whole split scored by all ranks, each a contiguous share; returns the sums over all ranks:
    [count, squared error] or metrics.SUM_FIELDS."""
    from stockpredict.common.metrics import SUM_FIELDS, shard_sums
    from stockpredict.job.data import iter_eval_shard

    info, engine = run.plan.info, run.engine
    sums = np.zeros(len(SUM_FIELDS) if with_metrics else 2)
    for x, y, tickers, last_close in iter_eval_shard(info.path, split, engine.rank, engine.size,
                                                     info.close_index):
        pred = run.replica.predict(x).numpy()
        run.stall.progress()
        if with_metrics:
            sums += shard_sums(pred, y, last_close, tickers, info.transform)
        else:
            sums += [y.size, float(np.sum((pred.astype(np.float64) - y) ** 2))]
    return engine.allreduce_sum(sums)


def save_checkpoint(run: Run, epochs_done: int, step: int, loss_sum: float) -> None:
    """All ranks call this (it gathers every rank's dropout state); rank 0 writes the checkpoint."""
    local_states = [rng.state.numpy().tolist() for rng in run.replica.dropout_rngs]
    all_states = run.engine.allgather_object(local_states)  # so a resume restores each rank's masks
    if not run.is_root:
        return
    plan, cfg = run.plan, run.plan.config
    checkpoints.write_checkpoint(plan.run_dir, epochs_done, step, run.replica.checkpoint, {
        "epochs_done": epochs_done, "step": step, "partial_loss_sum": loss_sum,
        "steps_per_epoch": plan.steps, "ranks": run.engine.size, "batch_size": cfg.batch_size,
        "seed": cfg.seed, "seq_len": plan.info.seq_len, "n_features": plan.info.n_features,
        "features": list(plan.info.features), "representation": plan.info.representation,
        "config": dataclasses.asdict(cfg),
        "dropout_rng_states": all_states, "time": timing.utc_now_iso(),
    })
    run.stall.progress()


# --- 5. the two ends: preempted or finished ----------------------------------------------------------

def preempt(run: Run, epochs_done: int, step: int, carried: float, local_loss_sum: float,
            checkpoint_written: bool = False) -> int:
    """Checkpoint (unless the epoch-end one just was), log `run_end` "preempted", wait for rank 0."""
    started = time.monotonic()
    if not checkpoint_written:
        # The partial epoch's loss, summed over ranks, travels in the checkpoint.
        loss_sum = run.engine.allreduce_sum([local_loss_sum])[0] + carried
        save_checkpoint(run, epochs_done, step, float(loss_sum))
    if run.board is not None:
        run.board.flush()  # the step scalars this checkpoint covers (before the barrier: then ranks exit)
    log.warning("stop signal (%s): checkpoint after %d epoch(s) + %d step(s) written in %.2f s; exiting %d "
                "for requeue", preemption.stop_signal_name(), epochs_done, step, time.monotonic() - started,
                preemption.EXIT_PREEMPTED)
    if run.is_root:
        timing.append_event(run.plan.run_dir / rundir.TIMING_LOG, timing.make_event(
            "run_end", status="preempted", total_seconds=run.elapsed(), test=None,
            process_seconds=round(time.time() - PROCESS_START, 3)))
    # srun --kill-on-bad-exit and horovodrun SIGTERM the remaining ranks as soon as the first one
    # exits non-zero; a rank still on its way out would then end "Terminated" instead of 75 and
    # srun's status would not say "requeue". From here on SIGTERM is ignored (Slurm's SIGKILL
    # after KillWait still applies) and main() leaves with os._exit.
    preemption.ignore_sigterm()
    run.engine.barrier()  # rank 0's files are written before anyone exits
    return preemption.EXIT_PREEMPTED


def finish(run: Run) -> int:
    """Test metrics, the weights-in-sync check, metrics.json, model.keras and `run_end` "completed"."""
    from stockpredict.common.metrics import metrics_from_sums

    plan, engine = run.plan, run.engine
    t0 = time.perf_counter()
    test_sums = evaluate(run, "test", with_metrics=True) if plan.info.windows["test"] else None
    test_seconds = round(time.perf_counter() - t0, 4)
    test = metrics_from_sums(test_sums) if test_sums is not None else None
    checksums = engine.allgather_object(weights_checksum(run.replica.model))  # ranks stayed in sync?
    peak_rss = engine.allgather_object(round(peak_rss_mb(), 1))  # for the memory goal per rank
    # The last collective: from here the other ranks exit while rank 0 writes, and no rank can wait on a
    # peer any more, so a slow write must not look like a hang to rank 0's watchdog.
    run.stall.stop()
    if len(set(checksums)) != 1:
        log.error("ranks ended with different weights: %s", checksums)
    if run.is_root:  # only rank 0 writes files
        write_json_atomic(plan.run_dir / rundir.METRICS, {
            "test": test, "windows": dict(plan.info.windows), "weights_checksums": checksums,
            "peak_rss_mb": peak_rss})
        # Keras picks the format from the suffix, so the temporary name keeps ".keras". The model
        # is not compiled, so no optimizer state goes in (checkpoints/ hold that).
        tmp = plan.run_dir / f".tmp-{os.getpid()}-{rundir.MODEL}"
        try:
            with reporting_disk_full(plan.run_dir / rundir.MODEL):
                run.replica.model.save(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)  # never leave a partial model behind (a full disk)
            raise
        os.replace(tmp, plan.run_dir / rundir.MODEL)
        # How to turn the model's output into a price (and fresh bars into its input): the run
        # directory is self-contained for `python -m stockpredict.predict`.
        write_atomic(plan.run_dir / rundir.TRANSFORM, transforms.to_json(plan.info.transform))
        write_inputs_record(plan)
        timing.append_event(plan.run_dir / rundir.TIMING_LOG, timing.make_event(
            "run_end", status="completed", total_seconds=run.elapsed(), test=test, test_seconds=test_seconds,
            process_seconds=round(time.time() - PROCESS_START, 3)))
    if test is not None:
        log.info("test: mse %.6g (persistence %.6g, skill %s), rmse %.4g / mae %.4g in price units, "
                 "direction accuracy %s", test["mse"], test["persistence_mse"],
                 _fmt(test["skill"]), test["rmse_price"], test["mae_price"],
                 _fmt(test["direction_accuracy"]))
    return 0


def write_inputs_record(plan: RunPlan) -> None:
    """inputs.json: the data file's preprocessing config and tickers, what predict needs besides the
    transform. A file without them (a benchmark's synthetic file) only loses `predict`, not the run."""
    from stockpredict.job.predict import inputs_record

    try:
        write_json_atomic(plan.run_dir / rundir.INPUTS, inputs_record(plan.info.path))
    except (KeyError, OSError, ValueError) as err:
        log.warning("no %s (%s: %s): python -m stockpredict.predict cannot use this run", rundir.INPUTS,
                    type(err).__name__, err)


# --- the whole attempt ---------------------------------------------------------------------------------

def run_training(config: TrainConfig, engine: Engine) -> int:
    """Run (or continue) one training run on this rank; returns the exit status (0 or 75).

    configure_tensorflow runs before the engine's first TensorFlow op: the tf engine starts its
    strategy (and with it TensorFlow's runtime) at engine.scope() in build_replica.
    """
    engine.init()
    resolved = resolve_config(config, engine.size)  # the warm-up default depends on the ranks
    configure_tensorflow(resolved, engine.local_rank)
    tf.keras.backend.experimental.enable_tf_random_generator()  # dropout RNG state we can checkpoint
    wall_start = time.monotonic()
    plan = plan_run(resolved, engine.size)
    handler = setup_logging(plan.run_dir, engine.rank == 0)
    stall = start_watchdog(plan, engine)
    board = EventLog(plan.run_dir, enabled=engine.rank == 0)  # only rank 0 writes files
    try:
        replica = build_replica(plan, engine)
        position = restore(plan, replica, engine)
        return train_epochs(Run(plan, replica, engine, wall_start, stall, board), position)
    finally:
        board.close()
        stall.stop()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


# --- helpers -------------------------------------------------------------------------------------------

def start_watchdog(plan: RunPlan, engine: Engine):
    """Every rank's stall watchdog (job/watchdog.py), armed before the first collective; a no-op with
    --stall-timeout 0 or on one rank (nobody to wait for)."""
    timeout = plan.config.stall_timeout
    engine.set_stall_timeout(timeout)
    if not timeout or engine.size == 1:
        return watchdog.NoWatchdog()
    host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()  # virtual nodes share a hostname
    if engine.rank == 0:
        log.info("stall watchdog: a rank that stops answering ends the job after %d s without a step "
                 "(--stall-timeout)", timeout)
    return watchdog.Watchdog(plan.run_dir, engine.rank, engine.size, host, timeout).start()


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


def configure_tensorflow(config: TrainConfig, local_rank: int) -> None:
    """Threads and GPU pinning; must run before TensorFlow executes its first op."""
    if config.threads:
        tf.config.threading.set_intra_op_parallelism_threads(config.threads)
        tf.config.threading.set_inter_op_parallelism_threads(config.threads)
    gpus = tf.config.list_physical_devices("GPU")
    index = choose_gpu(len(gpus), local_rank)
    if index is not None:
        # One GPU per rank (device 0 when Slurm already bound one GPU to the task).
        tf.config.set_visible_devices(gpus[index], "GPU")
        tf.config.experimental.set_memory_growth(gpus[index], True)


def dataset_warnings(path: str) -> list[str] | None:
    """The data file's `warnings` attribute (a JSON list of preprocessing warnings), None if absent."""
    import json

    import h5py

    with h5py.File(path, "r") as h5:
        text = h5.attrs.get("warnings")
    if text is None:
        return None
    try:
        warnings = json.loads(text.decode() if isinstance(text, bytes) else str(text))
    except ValueError:  # another tool's attribute: not ours to interpret
        return None
    return [str(w) for w in warnings] if isinstance(warnings, list) else None


def run_start_record(run: Run, position: Position) -> dict:
    """The timing log's run_start event (all ranks call this: it gathers every rank's node name)."""
    plan, engine, cfg = run.plan, run.engine, run.plan.config
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    # Virtual Slurm nodes share one hostname, so Slurm's node name (when set) tells them apart.
    hosts = sorted(set(engine.allgather_object(node)))
    gpu_devices = [d.name for d in tf.config.list_physical_devices("GPU")]
    hardware = hardware_summary(gpu_devices)
    # Every rank's CPU affinity: shows whether the ranks own cores of their own (docs/scaling.md).
    hardware["cpu_affinity_by_rank"] = engine.allgather_object(affinity_summary()["cpu_affinity"])
    # Whether a waiting MPI rank yields its core (HorovodEngine.init sets it; None on the tf engine).
    hardware["mpi_yield_when_idle"] = os.environ.get(MPI_YIELD_VARIABLE)
    hardware["lstm_unrolled"] = bool(run.replica.model.get_layer("lstm").unroll)  # model.unroll_lstm
    return timing.make_event(
        "run_start", time=timing.utc_now_iso(), job_id=slurmenv.job_ref(),
        attempt=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
        resumed_from_epoch=position.epochs_done if plan.resume is not None else None,
        resumed_from_step=position.skip_steps if plan.resume is not None else None,
        ranks=engine.size, nodes=len(hosts), gpus_per_node=len(gpu_devices), hosts=hosts,
        batch_size_per_rank=cfg.batch_size, global_batch_size=cfg.batch_size * engine.size,
        learning_rate=cfg.lr * engine.size, epochs=cfg.epochs, mode=cfg.mode,
        dataset=os.path.abspath(cfg.data), windows=dict(plan.info.windows),
        versions={"python": platform.python_version(), "tensorflow": tf.__version__, **engine.versions()},
        config=dataclasses.asdict(cfg), hardware=hardware,
        engine=engine.name, dataset_id=identity.dataset_identity(cfg.data),
        representation=plan.info.representation, optimum=plan.info.optimum,
        dataset_warnings=dataset_warnings(cfg.data),
        toolkit=toolkit_provenance(),  # the code that made this result: version, commit, dirty
        # What one allreduce moves per step (fp32 gradients): the scaling model's S (docs/scaling.md).
        gradient_bytes=4 * sum(int(np.prod(v.shape)) for v in run.replica.model.trainable_variables),
        model=identity.model_identity(dataclasses.asdict(cfg), plan.info.seq_len, plan.info.n_features),
        process_start=PROCESS_START, startup_seconds=round(time.time() - PROCESS_START, 3))


def weights_checksum(model) -> str:
    """A short fingerprint of the model's weights (equal on every rank of a healthy run)."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


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


def hardware_summary(gpu_devices: Sequence[str], environ: Mapping[str, str] = os.environ) -> dict:
    """What rank 0 ran on: CPU model, logical CPUs, memory (GiB), the GPUs TensorFlow sees and the GPUs
    Slurm bound (CUDA_VISIBLE_DEVICES). On the local test cluster Slurm binds a fake GPU while
    TensorFlow (CPU build) sees none: both are recorded so the report never claims a GPU run."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                       cpu)
    except OSError:
        pass
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "memory_gib": memory_gib,
            "tensorflow_gpus": list(gpu_devices), "cuda_visible_devices": environ.get("CUDA_VISIBLE_DEVICES")}


def setup_logging(run_dir: Path, is_root: bool) -> logging.Handler | None:
    """Rank 0 logs INFO to stderr and run_dir/train.log; other ranks only warnings and errors."""
    if not is_root:
        log.setLevel(logging.WARNING)
        return None
    if log.level == logging.NOTSET:  # the host application configured logging (e.g. pytest)
        log.setLevel(os.environ.get(LOG_LEVEL_ENV, "INFO").upper())
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / rundir.TRAIN_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return handler
