"""Checkpoints of a training run: `RUN_DIR/checkpoints/ckpt-eEEEE-sSSSSSSS/{weights.*, state.json}`.

A checkpoint is written into a hidden temporary directory and renamed into place, so a directory
whose name matches the pattern is complete. The newest CHECKPOINTS_KEPT are kept. TensorFlow-free:
the weights go through the `tf.train.Checkpoint` object the caller passes in. See docs/training.md,
"Checkpoints and resume".
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli import UserError
from .config import TrainConfig
from .files import write_json_atomic

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_STATE = "state.json"
CHECKPOINTS_KEPT = 2
CHECKPOINT_NAME_RE = re.compile(r"^ckpt-e(\d{4,})-s(\d{7,})$")
WEIGHTS_PREFIX = "weights"
MODEL_KEYS = ("lstm_units", "dropout", "dense_units")  # must match to resume


def checkpoint_name(epochs_done: int, step: int) -> str:
    """Directory name of the checkpoint taken after `epochs_done` epochs plus `step` steps."""
    return f"ckpt-e{epochs_done:04d}-s{step:07d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, int, Path]]:
    """Complete checkpoints of a run as (epochs_done, step, dir), oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            match = CHECKPOINT_NAME_RE.match(entry.name)
            if match and (entry / CHECKPOINT_STATE).is_file():
                found.append((int(match.group(1)), int(match.group(2)), entry))
    return sorted(found)


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run continues from: its directory and its state.json."""

    dir: Path
    state: dict

    @property
    def weights(self) -> str:
        """The tf.train.Checkpoint prefix to read."""
        return str(self.dir / WEIGHTS_PREFIX)


def find_resume(config: TrainConfig, seq_len: int, features: tuple[str, ...]) -> ResumePoint | None:
    """The newest checkpoint of config.run_dir to resume from, or None to start fresh.

    A UserError when the run directory holds checkpoints but --resume is off, or when the newest
    checkpoint was trained on other windows or another model than `config` asks for.
    """
    run_dir = Path(config.run_dir)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return None
    if not config.resume:
        raise UserError(f"{run_dir} already holds checkpoints of a run; pass --resume to "
                        f"continue it, or use a new --run-dir")
    point = ResumePoint(dir=checkpoints[-1][2],
                        state=json.loads((checkpoints[-1][2] / CHECKPOINT_STATE).read_text()))
    saved = point.state
    if (saved["seq_len"], saved["n_features"], saved["features"]) != (seq_len, len(features), list(features)):
        raise UserError(
            f"checkpoint {point.dir.name} was trained on windows of {saved['seq_len']} min x "
            f"{saved['features']}, but {config.data} holds {seq_len} min x "
            f"{list(features)}; use the original data file or a new --run-dir")
    if any(saved["config"][k] != getattr(config, k) for k in MODEL_KEYS):
        raise UserError(f"checkpoint {point.dir.name} has model "
                        f"{ {k: saved['config'][k] for k in MODEL_KEYS} }, the command line asks for "
                        f"{ {k: getattr(config, k) for k in MODEL_KEYS} }")
    return point


def write_checkpoint(run_dir: Path, epochs_done: int, step: int, tf_checkpoint: Any, state: dict) -> Path:
    """Write checkpoints/ckpt-eE-sS/ atomically (weights + state.json) and prune old ones (rank 0 only).

    `state` must hold what a resume needs (see loop.checkpoint_state); the same point reached again
    after a resume replaces the earlier directory.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(epochs_done, step)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tf_checkpoint.write(str(tmp / WEIGHTS_PREFIX))
    write_json_atomic(tmp / CHECKPOINT_STATE, state)
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)  # atomic: a checkpoint directory is either complete or absent
    for _, _, old in list_checkpoints(run_dir)[:-CHECKPOINTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return final
