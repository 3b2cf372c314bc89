"""Progress of a running job for a terminal that waits on it: each finished epoch, read from the run's
`timing.jsonl` (the timing contract, stockpredict/common/timing.py), printed as one line.

    printer = EpochPrinter(run_dir, label="2 nodes")
    slurmjobs.wait_for_jobs([job_id], timeout_s, on_poll=printer)   # prints as epochs finish

TensorFlow-free. Only whole lines are read, so a line the trainer is still writing waits for the next poll.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from stockpredict.common import rundir


def epoch_line(record: dict, label: str = "") -> str:
    """'<label> epoch 2/4: 70.99 s, 2,394 samples/s, loss 0.7243 (val 0.7101)' for an epoch event."""
    val = record.get("val_loss")
    val_text = "" if val is None else f" (val {val:.4f})"
    epochs = record.get("epochs_total")
    of = f"/{epochs}" if epochs else ""
    prefix = f"{label} " if label else ""
    return (f"{prefix}epoch {record['epoch']}{of}: {record['train_seconds']:.2f} s, "
            f"{record['samples_per_second']:,.0f} samples/s, loss {record['train_loss']:.4f}{val_text}")


class EpochPrinter:
    """Call it (e.g. on every poll of a job's state) to print the epochs finished since the last call."""

    def __init__(self, run_dir: Path | str, label: str = "", out: Callable[[str], None] | None = None):
        self.path = Path(run_dir) / rundir.TIMING_LOG
        self.label = label
        self.out = out or (lambda line: print(line, flush=True))
        self.offset = 0
        self.epochs_total: int | None = None
        self.kind = "train"  # run_start `kind`: an allreduce benchmark has no samples or loss to show

    def __call__(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return  # the job has not started writing yet
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for raw in complete.splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # a torn line from a killed attempt
            if record.get("event") == "run_start":
                self.epochs_total = record.get("epochs")
                self.kind = record.get("kind") or "train"
            elif record.get("event") == "epoch":
                try:
                    if self.kind == "allreduce":
                        line = (f"{self.label} epoch {record['epoch']}: {record['steps']} allreduces in "
                                f"{record['train_seconds']:.2f} s").lstrip()
                    else:
                        line = epoch_line(dict(record, epochs_total=self.epochs_total), self.label)
                except (KeyError, TypeError, ValueError):
                    continue  # not a whole epoch record (the report says why; progress just skips it)
                self.out(line)
