"""The trainer's timing log, `timing.jsonl`: a versioned JSON-lines contract read by the report stage.

One JSON object per line, each with `"schema": 1` and `"event"` in {run_start, epoch, run_end}; the
fields of each event are listed below (docs/training.md explains every one). A requeued job appends a
new `run_start` to the same file, so one file may hold several attempts; every attempt ends with a
`run_end` (written by the trainer, or by `python -m stockpredict.timing close` when the trainer died).

Optional fields (OPTIONAL_FIELDS) were added within schema 1: a writer may leave them out, a reader
ignores fields it does not know and treats a missing optional field as documented (`engine` absent =
"horovod"; `dataset_id`/`model` absent = an older log, which the report keys by dataset path). So old
logs still read, and old readers still read new logs; that is why the schema number did not change.

    python -m stockpredict.timing close RUN_DIR --status failed
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from stockpredict.common import rundir
from stockpredict.common.errors import UserError, run_cli
from stockpredict.common.files import reporting_disk_full

SCHEMA_VERSION = 1

RUN_START_FIELDS = (
    "time", "job_id", "attempt", "resumed_from_epoch", "ranks", "nodes", "gpus_per_node", "hosts",
    "batch_size_per_rank", "global_batch_size", "learning_rate", "epochs", "mode", "dataset", "windows",
    "versions", "config", "hardware",
)
EPOCH_FIELDS = (
    "epoch", "train_seconds", "val_seconds", "steps", "samples", "samples_per_second", "train_loss",
    "val_loss", "resumed",
)
RUN_END_FIELDS = ("status", "total_seconds", "test")
TEST_METRIC_FIELDS = (
    "mse", "rmse_price", "mae_price", "persistence_mse", "persistence_rmse_price", "skill",
    "direction_accuracy",
)
EVENT_FIELDS = {"run_start": RUN_START_FIELDS, "epoch": EPOCH_FIELDS, "run_end": RUN_END_FIELDS}
# The comparability key (docs/report.md): the report compares runs only when all three agree.
RUN_START_OPTIONAL_FIELDS = (
    "engine",      # the training engine; absent = DEFAULT_ENGINE
    "dataset_id",  # {"fingerprint", "name", "windows"}: stockpredict.identity.dataset_identity(path)
    "model",       # MODEL_FIELDS the config has, plus seq_len and n_features: identity.model_identity
    # The scaling model (docs/scaling.md): bytes allreduced per step, 4 x trainable parameters (fp32).
    "gradient_bytes",
    "kind",        # what the log times: absent = "train"; "allreduce" = stockpredict.allreduce_bench
    # Accuracy (docs/data.md): the data file's representation ("returns" or "seed"; absent = "seed", the
    # only one before) and its known optimum {"kalman_skill", "window_skill", ...} (absent/null = unknown).
    "representation",
    "optimum",
    "resumed_from_step",  # steps into the resumed epoch (0: resumed at an epoch boundary); absent: fresh
    # The preprocessing stage's warnings about the inputs (the HDF5 attribute `warnings`, e.g. a
    # time-zone assumption, docs/data.md): a list of one-line strings; absent = a file or trainer
    # from before the attribute, [] = none.
    "dataset_warnings",
    # Provenance: {"version", "commit", "dirty"} of the toolkit that wrote the log
    # (checkout.toolkit_provenance); absent = a trainer from before the field; commit/dirty null = unknown.
    "toolkit",
    # Cost split (docs/report.md "What the study cost"): when the trainer process started (Unix epoch
    # seconds, from /proc/self/stat) and the seconds from then to this record, which comes just before
    # the first step (interpreter, imports, engine start, graph building, data open, restore).
    "process_start",
    "startup_seconds",
)
# Optional run_start fields that describe one attempt, not the run: they may differ between attempts.
# A requeued attempt runs the checkout as it is then: its `toolkit` may differ from the first attempt's.
RUN_START_PER_ATTEMPT_FIELDS = ("resumed_from_step", "toolkit", "process_start", "startup_seconds")
# epoch `checkpoint_seconds`: the epoch-end checkpoint's save time. run_end `test_seconds`: the test
# evaluation; `process_seconds`: seconds from process_start to this record (the attempt's whole wall).
OPTIONAL_FIELDS = {"run_start": RUN_START_OPTIONAL_FIELDS, "epoch": ("checkpoint_seconds",),
                   "run_end": ("test_seconds", "process_seconds")}
DEFAULT_ENGINE = "horovod"
DATASET_ID_FIELDS = ("fingerprint", "name", "windows")
TOOLKIT_FIELDS = ("version", "commit", "dirty")
MODEL_FIELDS = ("lstm_units", "dropout", "dense_units", "representation", "target")
RUN_STATUSES = ("completed", "failed", "preempted")
RUN_KINDS = ("train", "allreduce")  # run_start `kind`; absent = "train"
MODES = ("strong", "weak")  # run_start `mode`: what a sweep held fixed; null for a single job

# The types readers rely on (the report checks them and skips a log that breaks them). bool is not
# accepted where an integer or number is expected, although Python counts it as one.
INTEGER, NUMBER, NUMBER_OR_NULL = "an integer", "a number", "a number or null"
FIELD_TYPES = {
    "run_start": {"ranks": INTEGER, "nodes": INTEGER, "gpus_per_node": INTEGER,
                  "batch_size_per_rank": INTEGER, "global_batch_size": INTEGER},
    "epoch": {"epoch": INTEGER, "train_seconds": NUMBER, "val_seconds": NUMBER, "steps": INTEGER,
              "samples": INTEGER, "samples_per_second": NUMBER, "train_loss": NUMBER,
              "val_loss": NUMBER_OR_NULL},
}


_IMPORTED_AT = __import__("time").time()


def process_start_time() -> float:
    """When this process started, in Unix epoch seconds: now minus its age, the age being /proc/uptime
    minus /proc/self/stat's start time (clock ticks after boot; /proc/stat's btime is whole seconds
    only); where /proc is missing, the time this module was imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, counted after "(comm)"
        with open("/proc/uptime", encoding="ascii") as uptime:
            age = float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
        return round(__import__("time").time() - max(age, 0.0), 3)
    except (OSError, ValueError, IndexError):
        return round(_IMPORTED_AT, 3)


def utc_now_iso() -> str:
    """The current time as ISO 8601 UTC with seconds, e.g. 2026-11-26T14:03:07Z."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_event(event: str, **fields: Any) -> dict:
    """One timing record; refuses missing or unknown fields so the contract cannot drift silently.

    Required fields come first in EVENT_FIELDS order, then the optional fields given (OPTIONAL_FIELDS
    order); an optional field left out, or given as None, is not written.
    """
    if event not in EVENT_FIELDS:
        raise ValueError(f"unknown timing event {event!r}; valid: {sorted(EVENT_FIELDS)}")
    required, optional = set(EVENT_FIELDS[event]), set(OPTIONAL_FIELDS[event])
    missing, unknown = required - fields.keys(), fields.keys() - required - optional
    if missing or unknown:
        raise ValueError(f"{event} fields: missing {sorted(missing)}, unknown {sorted(unknown)}")
    extra = {k: fields[k] for k in OPTIONAL_FIELDS[event] if fields.get(k) is not None}
    if "dataset_id" in extra and (not isinstance(extra["dataset_id"], dict)
                                  or set(extra["dataset_id"]) != set(DATASET_ID_FIELDS)):
        raise ValueError(f"run_start dataset_id must be a dict with exactly {DATASET_ID_FIELDS}")
    if "model" in extra and not isinstance(extra["model"], dict):
        raise ValueError("run_start model must be a dict")
    if "resumed_from_step" in extra and not (type(extra["resumed_from_step"]) is int
                                             and extra["resumed_from_step"] >= 0):
        raise ValueError("run_start resumed_from_step must be an integer >= 0")
    if "engine" in extra and not (isinstance(extra["engine"], str) and extra["engine"]):
        raise ValueError("run_start engine must be a non-empty string")
    if "gradient_bytes" in extra and (isinstance(extra["gradient_bytes"], bool)
                                      or not isinstance(extra["gradient_bytes"], int)
                                      or extra["gradient_bytes"] < 1):
        raise ValueError("run_start gradient_bytes must be a positive integer")
    if "kind" in extra and extra["kind"] not in RUN_KINDS:
        raise ValueError(f"run_start kind must be one of {RUN_KINDS}")
    if "dataset_warnings" in extra and not (isinstance(extra["dataset_warnings"], list)
                                            and all(isinstance(w, str) for w in extra["dataset_warnings"])):
        raise ValueError("run_start dataset_warnings must be a list of strings")
    if "optimum" in extra and not (isinstance(extra["optimum"], dict) and "kalman_skill" in extra["optimum"]):
        raise ValueError("run_start optimum must be a dict with kalman_skill (or None when unknown)")
    if "toolkit" in extra and not (isinstance(extra["toolkit"], dict)
                                   and set(extra["toolkit"]) == set(TOOLKIT_FIELDS)):
        raise ValueError(f"run_start toolkit must be a dict with exactly {TOOLKIT_FIELDS}")
    if event == "run_end":
        if fields["status"] not in RUN_STATUSES:
            raise ValueError(f"run_end status must be one of {RUN_STATUSES}, not {fields['status']!r}")
        if fields["test"] is not None and set(fields["test"]) != set(TEST_METRIC_FIELDS):
            raise ValueError(f"run_end test metrics must be exactly {TEST_METRIC_FIELDS}")
    return {"schema": SCHEMA_VERSION, "event": event, **{k: fields[k] for k in EVENT_FIELDS[event]}, **extra}


def append_event(path: Path | str, record: Mapping[str, Any]) -> None:
    """Append one record as a line and fsync, so a job killed right after still leaves it on disk.

    If the write fails (a full disk: DiskFull naming the path), the file is cut back to its old length,
    so the log never keeps half a record.
    """
    data = (json.dumps(record, sort_keys=False) + "\n").encode("utf-8")
    with reporting_disk_full(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a job killed mid-write left a torn line: keep ours separate
            try:
                view = memoryview(data)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def read_events(path: Path | str) -> list[dict]:
    """All records of a timing log; a torn last line (job killed mid-write) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def close_run(run_dir: Path | str, status: str = "failed", total_seconds: float | None = None) -> bool:
    """Append `run_end` (test null) unless the log already ends with one; True if a record was added.

    Used by the batch script after a failed `srun`: the trainer could not write its own `run_end`.
    `total_seconds` defaults to the time since the last `run_start` (seconds; null if unknown).
    """
    if status not in RUN_STATUSES:
        raise UserError(f"--status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
    path = Path(run_dir) / rundir.TIMING_LOG
    if not path.is_file():
        raise UserError(f"no {rundir.TIMING_LOG} in {run_dir}: nothing to close")
    events = read_events(path)
    if events and events[-1].get("event") == "run_end":
        return False
    if total_seconds is None:
        starts = [e for e in events if e.get("event") == "run_start"]
        if starts:
            started = _dt.datetime.strptime(starts[-1]["time"], "%Y-%m-%dT%H:%M:%SZ")
            now = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
            total_seconds = round((now - started).total_seconds(), 3)
    append_event(path, make_event("run_end", status=status, total_seconds=total_seconds, test=None))
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stockpredict.timing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    close = sub.add_parser("close", help="append run_end to a run whose trainer died")
    close.add_argument("run_dir", help="the run directory holding timing.jsonl")
    close.add_argument("--status", default="failed", choices=RUN_STATUSES)
    args = parser.parse_args(argv)
    added = close_run(args.run_dir, args.status)
    print(f"{'closed' if added else 'already closed'}: {Path(args.run_dir) / rundir.TIMING_LOG}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
