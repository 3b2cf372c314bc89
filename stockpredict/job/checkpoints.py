"""Checkpoints of a training run: `RUN_DIR/checkpoints/ckpt-eEEEE-sSSSSSSS/{weights.*, state.json}`.

A checkpoint is written into a hidden temporary directory, fsynced and renamed into place, so a directory
whose name matches the pattern was complete when written. state.json lists every weights file with its
size and SHA-256 (`files`), so a checkpoint damaged later (a node crash before the data reached the disk,
a truncated copy, a lost index) is recognised before TensorFlow reads it: resume then warns in one line
and falls back to the previous readable one. The newest CHECKPOINTS_KEPT readable checkpoints are kept.
TensorFlow-free: the weights go through the `tf.train.Checkpoint` object the caller passes in.

The crash-loop guard, run by the train job script before each attempt (docs/training.md, "Faults"):

    python -m stockpredict.checkpoints guard RUN_DIR --max-requeues-without-progress 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from stockpredict.common import rundir, slurmenv
from stockpredict.common.errors import UserError, run_cli
from stockpredict.common.files import DiskFull, disk_full_cause, file_sha256, fsync_dir, write_json_atomic
from stockpredict.common.train_config import TrainConfig

CHECKPOINT_STATE = "state.json"
CHECKPOINTS_KEPT = 2
CHECKPOINT_NAME_RE = re.compile(r"^ckpt-e(\d{4,})-s(\d{7,})$")
WEIGHTS_PREFIX = "weights"
WEIGHTS_INDEX = f"{WEIGHTS_PREFIX}.index"
TEMP_PREFIX = ".tmp-"
MODEL_KEYS = ("lstm_units", "dropout", "dense_units")  # must match to resume
# What restore (stockpredict/job/loop.py) reads from state.json; a state without one of them is damaged.
STATE_KEYS = ("epochs_done", "step", "partial_loss_sum", "ranks", "batch_size", "seq_len", "n_features",
              "features", "config", "dropout_rng_states")
ATTEMPTS_FILE = "attempts.jsonl"          # the crash-loop guard's record, one line per job attempt
DEFAULT_MAX_REQUEUES_WITHOUT_PROGRESS = 3


def checkpoint_name(epochs_done: int, step: int) -> str:
    """Directory name of the checkpoint taken after `epochs_done` epochs plus `step` steps."""
    return f"ckpt-e{epochs_done:04d}-s{step:07d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, int, Path]]:
    """Checkpoint directories of a run as (epochs_done, step, dir), oldest first (readable or not)."""
    root = Path(run_dir) / rundir.CHECKPOINTS
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            match = CHECKPOINT_NAME_RE.match(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), int(match.group(2)), entry))
    return sorted(found)


def weights_manifest(directory: Path) -> dict[str, dict]:
    """{file name: {"bytes", "sha256"}} of every weights.* file in a checkpoint directory."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(Path(directory).glob(f"{WEIGHTS_PREFIX}.*"))}


def read_state(directory: Path) -> dict:
    """A checkpoint's state.json after checking that it and the weights files are whole.

    Raises ValueError with a short reason (e.g. "weights.index is missing", "weights.data-00000-of-00001
    has 0 bytes, expected 154321") when the checkpoint cannot be used. Checkpoints written before state.json
    listed its files are checked for a non-empty index and data files only.
    """
    path = Path(directory) / CHECKPOINT_STATE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"{CHECKPOINT_STATE} is missing") from None
    except OSError as err:
        raise ValueError(f"{CHECKPOINT_STATE} is unreadable ({err.strerror or err})") from None
    if not text.strip():
        raise ValueError(f"{CHECKPOINT_STATE} is empty")
    try:
        state = json.loads(text)
    except ValueError:
        raise ValueError(f"{CHECKPOINT_STATE} is not valid JSON (truncated?)") from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise ValueError(f"{CHECKPOINT_STATE} lacks {[k for k in STATE_KEYS if k not in (state or {})]}")
    files = state.get("files")
    if not (Path(directory) / WEIGHTS_INDEX).is_file():
        raise ValueError(f"{WEIGHTS_INDEX} is missing")
    if files is None:  # an older checkpoint: no sizes to compare, but empty weights files are damage
        data = list(Path(directory).glob(f"{WEIGHTS_PREFIX}.data-*"))
        if not data:
            raise ValueError(f"no {WEIGHTS_PREFIX}.data-* file")
        for file in [Path(directory) / WEIGHTS_INDEX, *data]:
            if file.stat().st_size == 0:
                raise ValueError(f"{file.name} has 0 bytes")
        return state
    for name, expected in sorted(files.items()):
        file = Path(directory) / name
        if not file.is_file():
            raise ValueError(f"{name} is missing")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise ValueError(f"{name} has {size} bytes, expected {expected['bytes']}")
        if file_sha256(file) != expected["sha256"]:
            raise ValueError(f"{name} does not match its SHA-256 (damaged)")
    return state


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run continues from, its state.json, and the newer ones skipped as unreadable."""

    dir: Path
    state: dict
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (checkpoint name, reason), newest first

    @property
    def weights(self) -> str:
        """The tf.train.Checkpoint prefix to read."""
        return str(self.dir / WEIGHTS_PREFIX)

    def fallback_warnings(self) -> list[str]:
        """One line per skipped checkpoint (what rank 0 logs)."""
        return [f"checkpoint {name} is unreadable ({why}); resuming from {self.dir.name} instead"
                for name, why in self.skipped]


def newest_readable(run_dir: Path) -> tuple[Path | None, dict | None, list[tuple[str, str]]]:
    """(dir, state) of the newest readable checkpoint (None, None if none), and the newer unreadable ones."""
    skipped: list[tuple[str, str]] = []
    for _, _, directory in reversed(list_checkpoints(run_dir)):
        try:
            return directory, read_state(directory), skipped
        except ValueError as why:
            skipped.append((directory.name, str(why)))
    return None, None, skipped


def find_resume(config: TrainConfig, seq_len: int, features: tuple[str, ...]) -> ResumePoint | None:
    """The newest readable checkpoint of config.run_dir to resume from, or None to start fresh.

    Unreadable newer checkpoints are skipped (listed in ResumePoint.skipped for rank 0 to warn about).
    A UserError when the run directory holds checkpoints but --resume is off, when none of them is
    readable, or when the chosen one was trained on other windows or another model than `config` asks for.
    """
    run_dir = Path(config.run_dir)
    found = list_checkpoints(run_dir)
    if not found:
        return None
    if not config.resume:
        raise UserError(f"{run_dir} already holds checkpoints of a run; pass --resume to "
                        f"continue it, or use a new --run-dir")
    directory, state, skipped = newest_readable(run_dir)
    if directory is None:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped)
        raise UserError(f"no readable checkpoint in {run_dir / rundir.CHECKPOINTS} ({reasons}); move that "
                        f"directory aside to start the run over")
    point = ResumePoint(dir=directory, state=state, skipped=tuple(skipped))
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

    `state` must hold what a resume needs (see loop.save_checkpoint); the list of weights files with
    their sizes and hashes is added as state["files"]. The same point reached again after a resume
    replaces the earlier directory. A full disk raises DiskFull naming the checkpoint: the temporary
    directory is removed and the previous checkpoints are untouched.
    """
    root = Path(run_dir) / rundir.CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(epochs_done, step)
    final = root / name
    for stale in root.glob(f"{TEMP_PREFIX}*"):  # left by an attempt killed mid-write (one writer per run)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"{TEMP_PREFIX}{name}-{os.getpid()}"
    try:
        tmp.mkdir()
        tf_checkpoint.write(str(tmp / WEIGHTS_PREFIX))
        write_json_atomic(tmp / CHECKPOINT_STATE, dict(state, files=weights_manifest(tmp)))
        for file in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(tmp)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = disk_full_cause(err) if isinstance(err, Exception) else None
        if cause is not None:
            raise DiskFull(final, cause) from None
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)  # atomic: a checkpoint directory is either complete or absent
    fsync_dir(root)
    prune(run_dir)
    return final


def prune(run_dir: Path, keep: int = CHECKPOINTS_KEPT) -> list[Path]:
    """Delete every checkpoint older than the `keep` newest readable ones; returns what was deleted.

    Unreadable checkpoints newer than those stay (resume skips them with a warning), so a damaged newest
    checkpoint never costs a readable one.
    """
    readable, removed = 0, []
    for _, _, directory in reversed(list_checkpoints(run_dir)):
        if readable >= keep:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
            continue
        try:
            read_state(directory)
            readable += 1
        except ValueError:
            pass
    return removed


# --- the crash-loop guard ------------------------------------------------------------------------------

def stalled_requeues(attempts: Sequence[Mapping[str, Any]]) -> int:
    """How many times in a row the last attempt's job was requeued without a newer checkpoint.

    `attempts` are the records of ATTEMPTS_FILE, oldest first, the current attempt last. Progress is
    a different resume point (newest readable checkpoint) than the attempt before had; a new job
    (a resubmission by hand) starts the count again.
    """
    if not attempts:
        return 0
    last = attempts[-1]
    count = 0
    for previous in reversed(attempts[:-1]):
        same = all(previous.get(k) == last.get(k) for k in ("job_id", "checkpoint"))
        if not same:
            break
        count += 1
    return count


def guard_attempt(run_dir: Path, max_requeues: int, job_id: str | None, restart: int, now: str) -> str:
    """Record this attempt in RUN_DIR/attempts.jsonl; raise UserError once the job is stuck in a loop.

    Returns the resume point's name ("none" when no checkpoint is readable). A job requeued more than
    `max_requeues` times in a row that never got past the same checkpoint is not started again.
    """
    from stockpredict.common.timing import append_event, read_events

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    directory, _, _ = newest_readable(run_dir)
    point = directory.name if directory is not None else "none"
    path = run_dir / ATTEMPTS_FILE
    record = {"job_id": job_id, "restart": restart, "checkpoint": point, "time": now}
    attempts = (read_events(path) if path.exists() else []) + [record]
    stalled = stalled_requeues(attempts)
    if stalled > max_requeues:
        raise UserError(
            f"job {job_id} was requeued {stalled} times in a row without getting past checkpoint {point} "
            f"(limit: max_requeues_without_progress = {max_requeues} in the profile); not starting it "
            f"again. See {ATTEMPTS_FILE} and the Slurm log in {run_dir}")
    append_event(path, record)
    return point


def main(argv: Sequence[str] | None = None) -> int:
    from stockpredict.common.timing import utc_now_iso

    parser = argparse.ArgumentParser(prog="python -m stockpredict.checkpoints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    guard = sub.add_parser("guard", help="record a job attempt; fail if the job is stuck in a requeue loop")
    guard.add_argument("run_dir")
    guard.add_argument("--max-requeues-without-progress", type=int,
                       default=DEFAULT_MAX_REQUEUES_WITHOUT_PROGRESS)
    args = parser.parse_args(argv)
    if args.max_requeues_without_progress < 0:
        raise UserError("--max-requeues-without-progress must be >= 0")
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    point = guard_attempt(Path(args.run_dir), args.max_requeues_without_progress,
                          slurmenv.job_ref(), int(restart) if restart.isdigit() else 0,
                          utc_now_iso())
    print(f"stockpredict: attempt {restart} of job {slurmenv.job_ref()} starts from "
          f"checkpoint {point}", file=sys.stderr)  # a log line, like the job script's own
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
