"""Rank 0's TensorBoard event files in `<run-dir>/tensorboard/`, so that `tensorboard --logdir results/runs`
overlays runs.

Written with TensorFlow's own summary writer (`tf.summary.create_file_writer`, `tf.summary.write`). The
scalars carry the metadata TensorBoard's `tf.summary.scalar` would give them, built here from TensorFlow's
protos, because TensorFlow 2.21 (the tf engine's .venv-tf) no longer ships TensorBoard and its
`tf.summary.scalar` then raises; the event files are the same.

Tags (docs/training.md, "TensorBoard"):
- per epoch, x = the epoch number: `epoch/train_loss`, `epoch/val_loss`, `epoch/samples_per_second`,
  `epoch/learning_rate` (the values of timing.jsonl's `epoch` event; the rate at the epoch's end);
- every `--tensorboard-steps` steps of an epoch, x = the optimizer's step counter (the global step, which
  checkpoints restore): `step/train_loss` (rank 0's mean loss over those steps) and `step/learning_rate`.

Step scalars wait in memory until the checkpoint that covers them is written (epoch end, preemption), so a
resumed attempt, which appends a new event file to the same directory, never repeats a step that an earlier
attempt already wrote: after a crash, steps past the last checkpoint are lost rather than doubled, as in
timing.jsonl. Writing must never stop training: a failure (a full disk, a read-only directory) is one
warning line, and this run writes no more events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stockpredict.common.logs import get_logger

log = get_logger("stockpredict.train")

DIRNAME = "tensorboard"  # inside the run directory


class EventLog:
    """The event writer of one attempt on rank 0; on other ranks (enabled=False) every call does nothing."""

    def __init__(self, run_dir: Path | str, enabled: bool):
        self.path = Path(run_dir) / DIRNAME
        self._writer: Any = None
        self._metadata: bytes = b""
        self._pending: list[tuple[int, float, float]] = []  # (global step, loss, learning rate)
        self._mark = (0, 0.0)  # (step in the epoch, rank 0's loss sum there) at the last step scalar
        self.enabled = enabled
        self.failed = False

    def _ensure_open(self) -> bool:
        # Opened at the first write, not at construction: the tf engine's strategy must start before
        # TensorFlow's first op, and the writer is one.
        if self._writer is None and self.enabled and not self.failed:
            self._guard("open", self._open)
        return self.active

    def _open(self) -> None:
        import tensorflow as tf

        self.path.mkdir(parents=True, exist_ok=True)
        self._writer = tf.summary.create_file_writer(str(self.path))
        # What tensorboard.plugins.scalar.metadata writes: the scalars plugin, version 0 (empty content).
        from tensorflow.core.framework.summary_pb2 import DATA_CLASS_SCALAR, SummaryMetadata

        self._metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"),
                                         data_class=DATA_CLASS_SCALAR).SerializeToString()

    @property
    def active(self) -> bool:
        return self._writer is not None and not self.failed

    def _guard(self, what: str, fn, *args) -> None:
        """Run fn; any error becomes one warning and switches the writer off."""
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 -- a side channel must never end the run
            from stockpredict.common.files import disk_full_cause

            self.failed = True
            first_line = (str(err).splitlines() or [""])[0]
            cause = disk_full_cause(err) or f"{type(err).__name__}: {first_line}"
            log.warning("TensorBoard events in %s stopped (%s failed: %s); training goes on", self.path,
                        what, cause)
            self._pending.clear()

    def _scalars(self, step: int, values: dict[str, float | None]) -> None:
        import tensorflow as tf

        with self._writer.as_default():
            for tag, value in values.items():
                if value is not None:
                    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=int(step),
                                     metadata=self._metadata)

    def start_epoch(self, skip_steps: int) -> None:
        """An epoch starts (after `skip_steps` steps when resumed mid-epoch), its loss sum at 0."""
        self._mark = (skip_steps, 0.0)

    def steps_done(self, step: int, loss_sum, optimizer) -> None:
        """After `step` steps of the epoch: remember rank 0's mean loss since the last step scalar (from
        the epoch's loss-sum variable) at the optimizer's step counter; written with the next checkpoint."""
        if not self.enabled or self.failed or step <= self._mark[0]:
            return
        total = float(loss_sum.numpy())
        loss = (total - self._mark[1]) / (step - self._mark[0])
        self._mark = (step, total)
        self._pending.append((int(optimizer.iterations.numpy()), loss, learning_rate_now(optimizer)))

    def _write_pending(self) -> None:
        for step, loss, rate in self._pending:
            self._scalars(step, {"step/train_loss": loss, "step/learning_rate": rate})
        self._pending.clear()
        self._writer.flush()

    def flush(self) -> None:
        """Write the step scalars that the checkpoint just written covers, and flush to disk."""
        if self._pending and self._ensure_open():
            self._guard("write", self._write_pending)

    def epoch(self, epoch: int, train_loss: float, val_loss: float | None, samples_per_second: float,
              optimizer) -> None:
        """One epoch's scalars (call after its checkpoint), then the pending step scalars; flushed."""
        if self._ensure_open():
            self._guard("write", self._scalars, epoch, {
                "epoch/train_loss": train_loss, "epoch/val_loss": val_loss,
                "epoch/samples_per_second": samples_per_second,
                "epoch/learning_rate": learning_rate_now(optimizer)})
            if self._pending:
                self.flush()
            elif self.active:
                self._guard("write", self._writer.flush)

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except Exception as err:  # noqa: BLE001
                if not self.failed:
                    log.warning("TensorBoard events in %s: closing failed (%s); training goes on", self.path,
                                err)


def learning_rate_now(optimizer) -> float:
    """The optimizer's learning rate at its current step (its schedule evaluated there)."""
    import numpy as np

    rate = optimizer.learning_rate
    return float(np.asarray(rate(optimizer.iterations) if callable(rate) else rate))
