"""Scaling tables and plots from the trainer's timing logs (`make report`).

    python -m stockpredict.report --runs results/runs --out results

Reads every `<runs>/*/timing.jsonl` (schema 1, written by stockpredict.train; the contract is in the
README) and writes into `--out`: `scaling.md`, one CSV per table beside it (strong_scaling.csv,
weak_scaling.csv, batch_size.csv, accuracy.csv, environment.csv) and four PNG plots.

The module is a pure core and a thin shell, like the other stages:

    parse_timing_log(text)  -> Run            (one log; raises SkippedLog with the reason)
    load_runs(runs_dir)     -> LoadedRuns     (all logs; the skipped ones with their reasons)
    build_report(runs, ...) -> Report         (every table as plain rows; no I/O)
    write_report(report, out_dir)             (Markdown, CSV, PNG; each file written atomically)

Rules (docs/report.md explains them):
- A log is used only if its last event is `run_end` with status "completed". Failed, preempted-and-not-
  resumed and unfinished runs are skipped with a warning naming the file, as are logs with another
  schema version and logs with an unreadable line anywhere but at the end. A writer killed mid-line
  leaves a torn fragment: as the last line it is dropped; followed on the same line by a whole record
  (the next append) the fragment is dropped and the record kept. Both with a warning.
- A resumed run logs some epochs twice; each epoch counts once and the later record wins.
- Warm-up: the first epoch logged after EVERY `run_start` (graph building happens again after a
  restart) and epochs flagged `resumed` are excluded from timing statistics.
- Rows group runs by (mode, ranks, nodes, gpus_per_node, batch_size_per_rank). A row's value is the
  median over its runs of each run's median over its timed epochs.
- Runs with mode null (single `make submit` jobs) are not in the strong or weak tables, since nothing
  says what was held fixed between them; they are in the batch-size and accuracy tables.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .cli import UserError, get_logger, reject_unknown_keys, run_cli
from .files import write_atomic

log = get_logger("stockpredict.report")

SCHEMA_VERSION = 1
TIMING_LOG_NAME = "timing.jsonl"
MODES = ("strong", "weak")

MARKDOWN_NAME = "scaling.md"
CSV_NAMES = {
    "strong": "strong_scaling.csv",
    "weak": "weak_scaling.csv",
    "batch_size": "batch_size.csv",
    "accuracy": "accuracy.csv",
    "environment": "environment.csv",
}
PLOT_NAMES = {
    "speedup": "speedup.png",
    "efficiency": "efficiency.png",
    "seconds_per_epoch": "seconds_per_epoch_vs_batch.png",
    "test_loss": "test_loss_vs_batch.png",
}


# --- configuration -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReportConfig:
    """Settings of one report; printed at the end of scaling.md so the tables can be reproduced."""

    runs_dir: Path = Path("results/runs")  # holds one directory per run, each with a timing.jsonl
    out_dir: Path = Path("results")        # where scaling.md, the CSVs and the PNGs go
    warmup_epochs: int = 1                 # epochs excluded after every run_start (graph building)
    plots: bool = True                     # False: tables only (skips importing matplotlib)

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0:
            raise UserError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ReportConfig":
        """Build from a dict (e.g. parsed JSON); an unknown key fails and lists the valid ones."""
        reject_unknown_keys(cls, values, "report setting")
        kwargs = dict(values)
        for name in ("runs_dir", "out_dir"):
            if name in kwargs:
                kwargs[name] = Path(kwargs[name])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


# --- records parsed from the logs ----------------------------------------------------------------

@dataclass(frozen=True)
class EpochRecord:
    """One `epoch` event. Seconds are rank 0 wall time; samples and samples/s are global."""

    epoch: int
    train_seconds: float
    val_seconds: float
    steps: int
    samples: int
    samples_per_second: float
    train_loss: float
    val_loss: float | None  # None when the dataset has no validation windows
    resumed: bool
    after_start: int  # 1 for the first epoch logged after a run_start, 2 for the next, ...

    def is_timed(self, warmup_epochs: int) -> bool:
        """True if this epoch counts in timing statistics (not warm-up, not a resumed epoch)."""
        return self.after_start > warmup_epochs and not self.resumed


@dataclass(frozen=True)
class Run:
    """One usable (completed) run: its settings from `run_start`, epochs, and test metrics."""

    run_id: str
    path: str
    job_id: str | None
    mode: str | None
    ranks: int
    nodes: int
    gpus_per_node: int
    batch_size_per_rank: int
    global_batch_size: int
    learning_rate: float | None
    epochs_planned: int | None
    dataset: str | None
    hosts: tuple[str, ...]
    versions: Mapping[str, Any]
    hardware: Mapping[str, Any] | None
    started: str | None        # ISO 8601 time of the first run_start
    attempts: int              # number of run_start events (1 + requeues)
    epochs: tuple[EpochRecord, ...]  # each epoch once, sorted, the later record winning
    test: Mapping[str, Any] | None
    total_seconds: float | None

    @property
    def group_key(self) -> "GroupKey":
        return GroupKey(self.mode, self.ranks, self.nodes, self.gpus_per_node, self.batch_size_per_rank)

    def timed_epochs(self, warmup_epochs: int) -> tuple[EpochRecord, ...]:
        return tuple(e for e in self.epochs if e.is_timed(warmup_epochs))


@dataclass(frozen=True)
class GroupKey:
    mode: str | None
    ranks: int
    nodes: int
    gpus_per_node: int
    batch_size_per_rank: int

    def sort_key(self) -> tuple:
        return (self.mode or "", self.ranks, self.nodes, self.gpus_per_node, self.batch_size_per_rank)


@dataclass(frozen=True)
class SkippedLog:
    """A log left out of the report, and why (printed as a warning and listed in scaling.md)."""

    path: str
    reason: str


class SkipLog(Exception):
    """Raised by parse_timing_log: this log cannot be used; the message is the reason."""


@dataclass(frozen=True)
class LoadedRuns:
    runs: tuple[Run, ...]
    skipped: tuple[SkippedLog, ...]
    notes: tuple[str, ...] = ()  # non-fatal problems (e.g. a dropped truncated last line)


# --- parsing -------------------------------------------------------------------------------------

_INT = (int,)
_NUM = (int, float)
_NUM_OR_NULL = (int, float, type(None))
_RUN_START_FIELDS = {
    "ranks": _INT, "nodes": _INT, "gpus_per_node": _INT, "batch_size_per_rank": _INT,
    "global_batch_size": _INT,
}
_EPOCH_FIELDS = {
    "epoch": _INT, "train_seconds": _NUM, "val_seconds": _NUM, "steps": _INT, "samples": _INT,
    "samples_per_second": _NUM, "train_loss": _NUM, "val_loss": _NUM_OR_NULL,
}


def _field(event: Mapping[str, Any], name: str, types: tuple, lineno: int) -> Any:
    value = event.get(name)
    if isinstance(value, bool) or not isinstance(value, types):
        kind = {_INT: "an integer", _NUM: "a number"}.get(types, "a number or null")
        raise SkipLog(f"corrupt: line {lineno} ({event.get('event')}) has {name}={value!r}, expected {kind}")
    return value


_RECORD_START = re.compile(r'\{\s*"schema"\s*:')


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _record_after_torn_fragment(line: str) -> dict | None:
    """The whole record that follows a torn fragment on one line, or None."""
    for match in _RECORD_START.finditer(line, 1):
        event = _json_object(line[match.start():])
        if event is not None:
            return event
    return None


def parse_timing_log(text: str, run_id: str = "", path: str = "") -> tuple[Run, tuple[str, ...]]:
    """Parse one timing.jsonl into a Run, or raise SkipLog saying why it cannot be used.

    Returns the run and a tuple of notes (non-fatal problems, e.g. a dropped truncated last line).
    """
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise SkipLog("partial: empty log (the job never started training)")
    notes: list[str] = []
    events: list[tuple[int, dict]] = []
    for position, (lineno, line) in enumerate(lines):
        event = _json_object(line)
        if event is None:
            # A writer killed mid-line leaves a fragment without a newline; the next append (a requeued
            # attempt's run_start, or the batch script's run_end) then lands on the same line.
            event = _record_after_torn_fragment(line)
            if event is not None:
                notes.append(f"line {lineno}: dropped a torn fragment before a whole record")
            elif position == len(lines) - 1:
                notes.append(f"dropped unreadable last line {lineno} (truncated write)")
                break
            else:
                raise SkipLog(f"corrupt: line {lineno} is not a JSON object")
        schema = event.get("schema")
        if schema != SCHEMA_VERSION:
            raise SkipLog(f"unknown schema {schema!r} on line {lineno} (this report reads schema {SCHEMA_VERSION})")
        events.append((lineno, event))

    starts: list[dict] = []
    epochs: dict[int, EpochRecord] = {}
    after_start = 0
    last_end: dict | None = None
    for lineno, event in events:
        kind = event.get("event")
        if kind == "run_start":
            for name, types in _RUN_START_FIELDS.items():
                _field(event, name, types, lineno)
            mode = event.get("mode")
            if mode is not None and mode not in MODES:
                raise SkipLog(f"corrupt: line {lineno} has mode={mode!r}, expected one of {MODES} or null")
            if starts:
                for name in ("mode", *_RUN_START_FIELDS):
                    if event.get(name) != starts[0].get(name):
                        raise SkipLog(f"corrupt: run_start on line {lineno} changes {name} from "
                                      f"{starts[0].get(name)!r} to {event.get(name)!r}")
            starts.append(event)
            after_start = 0
            last_end = None
        elif kind == "epoch":
            if not starts:
                raise SkipLog(f"corrupt: epoch on line {lineno} before any run_start")
            values = {name: _field(event, name, types, lineno) for name, types in _EPOCH_FIELDS.items()}
            for name in ("epoch", "steps", "train_seconds", "samples_per_second"):
                if values[name] <= 0:  # speedup, s/step and throughput ratios divide by these
                    raise SkipLog(f"corrupt: line {lineno} (epoch) has {name}={values[name]!r}, expected > 0")
            after_start += 1
            # Resumed runs log some epochs again; the later record wins.
            epochs[values["epoch"]] = EpochRecord(
                **values, resumed=bool(event.get("resumed", False)), after_start=after_start)
        elif kind == "run_end":
            if not starts:
                raise SkipLog(f"corrupt: run_end on line {lineno} before any run_start")
            last_end = event
        else:
            raise SkipLog(f"corrupt: line {lineno} has unknown event {kind!r}")

    if not starts:
        raise SkipLog("partial: no run_start event")
    if last_end is None:
        raise SkipLog("partial: no run_end after the last run_start (killed, or still running)")
    status = last_end.get("status")
    if status == "failed":
        raise SkipLog("failed: run_end status is 'failed'")
    if status == "preempted":
        raise SkipLog("partial: preempted and not resumed (no later run_start)")
    if status != "completed":
        raise SkipLog(f"corrupt: run_end has unknown status {status!r}")

    first = starts[0]
    test = last_end.get("test")
    total = last_end.get("total_seconds")
    run = Run(
        run_id=run_id,
        path=path,
        job_id=None if starts[-1].get("job_id") is None else str(starts[-1]["job_id"]),
        mode=first.get("mode"),
        ranks=first["ranks"],
        nodes=first["nodes"],
        gpus_per_node=first["gpus_per_node"],
        batch_size_per_rank=first["batch_size_per_rank"],
        global_batch_size=first["global_batch_size"],
        learning_rate=first.get("learning_rate"),
        epochs_planned=first.get("epochs"),
        dataset=first.get("dataset"),
        hosts=tuple(str(h) for h in (first.get("hosts") or ())),
        versions=dict(first.get("versions") or {}),
        hardware=first.get("hardware") if isinstance(first.get("hardware"), dict) else None,
        started=first.get("time"),
        attempts=len(starts),
        epochs=tuple(epochs[k] for k in sorted(epochs)),
        test=test if isinstance(test, dict) else None,
        total_seconds=total if isinstance(total, (int, float)) and not isinstance(total, bool) else None,
    )
    return run, tuple(notes)


def load_runs(runs_dir: Path) -> LoadedRuns:
    """Read every `<runs_dir>/*/timing.jsonl`; unusable logs come back in `skipped` with a reason."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"no runs directory at {runs_dir} (submit runs first: make sweep, or make demo)")
    runs: list[Run] = []
    skipped: list[SkippedLog] = []
    notes: list[str] = []
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        path = run_dir / TIMING_LOG_NAME
        if not path.exists():
            skipped.append(SkippedLog(str(path), "missing: the job is pending or failed before training"))
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
            run, run_notes = parse_timing_log(text, run_id=path.parent.name, path=str(path))
        except SkipLog as why:
            skipped.append(SkippedLog(str(path), str(why)))
            continue
        except OSError as err:
            skipped.append(SkippedLog(str(path), f"unreadable: {err.strerror or err}"))
            continue
        runs.append(run)
        notes.extend(f"{path}: {note}" for note in run_notes)
    return LoadedRuns(tuple(runs), tuple(skipped), tuple(notes))


# --- statistics ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunTiming:
    """One run's medians over its timed epochs (seconds, samples/s)."""

    run_id: str
    epochs: int
    seconds_per_epoch: float
    seconds_per_step: float
    samples_per_second: float
    steps_per_epoch: float


def run_timing(run: Run, warmup_epochs: int) -> RunTiming | None:
    """Medians over the run's timed epochs; None if warm-up exclusion leaves no epoch."""
    timed = run.timed_epochs(warmup_epochs)
    if not timed:
        return None
    return RunTiming(
        run_id=run.run_id,
        epochs=len(timed),
        seconds_per_epoch=statistics.median(e.train_seconds for e in timed),
        seconds_per_step=statistics.median(e.train_seconds / e.steps for e in timed),
        samples_per_second=statistics.median(e.samples_per_second for e in timed),
        steps_per_epoch=statistics.median(e.steps for e in timed),
    )


@dataclass(frozen=True)
class GroupTiming:
    """A table row's timing: medians over runs of per-run medians; `runs`/`epochs` it rests on."""

    key: GroupKey
    global_batch_size: int
    runs: int
    epochs: int
    seconds_per_epoch: float
    seconds_per_step: float
    samples_per_second: float
    steps_per_epoch: float


def group_timings(runs: Iterable[Run], warmup_epochs: int) -> list[GroupTiming]:
    """One GroupTiming per (mode, ranks, nodes, gpus_per_node, batch_size_per_rank), sorted."""
    per_group: dict[GroupKey, list[tuple[Run, RunTiming]]] = {}
    for run in runs:
        timing = run_timing(run, warmup_epochs)
        if timing is not None:
            per_group.setdefault(run.group_key, []).append((run, timing))
    rows = []
    for key in sorted(per_group, key=GroupKey.sort_key):
        members = per_group[key]
        timings = [t for _, t in members]
        rows.append(GroupTiming(
            key=key,
            global_batch_size=members[0][0].global_batch_size,
            runs=len(timings),
            epochs=sum(t.epochs for t in timings),
            seconds_per_epoch=statistics.median(t.seconds_per_epoch for t in timings),
            seconds_per_step=statistics.median(t.seconds_per_step for t in timings),
            samples_per_second=statistics.median(t.samples_per_second for t in timings),
            steps_per_epoch=statistics.median(t.steps_per_epoch for t in timings),
        ))
    return rows


def speedup(base_seconds: float, seconds: float) -> float:
    """Strong-scaling speedup S = T(p0) / T(p) from seconds per epoch."""
    return base_seconds / seconds


def parallel_efficiency(speedup_value: float, relative_ranks: float) -> float:
    """E = S / (p / p0): 1.0 is perfect scaling."""
    return speedup_value / relative_ranks


def karp_flatt(speedup_value: float, relative_ranks: float) -> float | None:
    """Experimentally determined serial fraction e = (1/S - 1/p) / (1 - 1/p), p relative to the base.

    None when p equals the base (the formula divides by zero there).
    """
    if relative_ranks == 1:
        return None
    return (1 / speedup_value - 1 / relative_ranks) / (1 - 1 / relative_ranks)


# --- tables (plain rows: lists of dicts with fixed columns) --------------------------------------

STRONG_COLUMNS = ("global_batch_size", "ranks", "nodes", "gpus_per_node", "batch_size_per_rank",
                  "seconds_per_epoch", "samples_per_second", "speedup", "efficiency", "karp_flatt",
                  "runs", "epochs")
WEAK_COLUMNS = ("batch_size_per_rank", "ranks", "nodes", "gpus_per_node", "global_batch_size",
                "seconds_per_epoch", "samples_per_second", "throughput_ratio", "efficiency",
                "runs", "epochs")
BATCH_COLUMNS = ("mode", "ranks", "nodes", "gpus_per_node", "batch_size_per_rank", "global_batch_size",
                 "steps_per_epoch", "seconds_per_epoch", "seconds_per_step", "samples_per_second",
                 "runs", "epochs")
ACCURACY_COLUMNS = ("mode", "ranks", "nodes", "gpus_per_node", "batch_size_per_rank", "global_batch_size",
                    "learning_rate", "epochs", "test_mse", "rmse_price", "mae_price", "persistence_mse",
                    "persistence_rmse_price", "skill", "direction_accuracy", "runs")
ENVIRONMENT_COLUMNS = ("hosts", "python", "tensorflow", "horovod", "mpi", "hardware", "runs",
                       "first_start", "last_start")
TEST_METRICS = ("mse", "rmse_price", "mae_price", "persistence_mse", "persistence_rmse_price", "skill",
                "direction_accuracy")


def _series_rows(groups: Sequence[GroupTiming], series_of) -> dict[Any, list[GroupTiming]]:
    series: dict[Any, list[GroupTiming]] = {}
    for g in groups:
        series.setdefault(series_of(g), []).append(g)
    for members in series.values():
        members.sort(key=lambda g: (g.key.ranks, g.key.nodes))
    return dict(sorted(series.items()))


def strong_scaling_table(groups: Sequence[GroupTiming]) -> list[dict[str, Any]]:
    """Strong scaling: runs of mode "strong" with the same global batch (and GPUs per node) form a
    series; speedup is against the series' smallest rank count p0 (seconds per epoch)."""
    rows = []
    strong = [g for g in groups if g.key.mode == "strong"]
    for _, members in _series_rows(strong, lambda g: (g.global_batch_size, g.key.gpus_per_node)).items():
        base = members[0]
        for g in members:
            relative = g.key.ranks / base.key.ranks
            s = speedup(base.seconds_per_epoch, g.seconds_per_epoch)
            rows.append({
                "global_batch_size": g.global_batch_size, "ranks": g.key.ranks, "nodes": g.key.nodes,
                "gpus_per_node": g.key.gpus_per_node, "batch_size_per_rank": g.key.batch_size_per_rank,
                "seconds_per_epoch": g.seconds_per_epoch, "samples_per_second": g.samples_per_second,
                "speedup": s, "efficiency": parallel_efficiency(s, relative),
                "karp_flatt": karp_flatt(s, relative), "runs": g.runs, "epochs": g.epochs,
            })
    return rows


def weak_scaling_table(groups: Sequence[GroupTiming]) -> list[dict[str, Any]]:
    """Weak scaling: runs of mode "weak" with the same per-rank batch form a series; efficiency =
    X_p / ((p/p0) * X_p0) with X the global samples/s and p0 the series' smallest rank count."""
    rows = []
    weak = [g for g in groups if g.key.mode == "weak"]
    for _, members in _series_rows(weak, lambda g: (g.key.batch_size_per_rank, g.key.gpus_per_node)).items():
        base = members[0]
        for g in members:
            relative = g.key.ranks / base.key.ranks
            ratio = g.samples_per_second / base.samples_per_second
            rows.append({
                "batch_size_per_rank": g.key.batch_size_per_rank, "ranks": g.key.ranks,
                "nodes": g.key.nodes, "gpus_per_node": g.key.gpus_per_node,
                "global_batch_size": g.global_batch_size, "seconds_per_epoch": g.seconds_per_epoch,
                "samples_per_second": g.samples_per_second, "throughput_ratio": ratio,
                "efficiency": ratio / relative, "runs": g.runs, "epochs": g.epochs,
            })
    return rows


def batch_size_table(groups: Sequence[GroupTiming]) -> list[dict[str, Any]]:
    """Seconds per epoch and per step by effective (global) batch size, every mode including null."""
    ordered = sorted(groups, key=lambda g: (g.key.ranks, g.key.nodes, g.global_batch_size, g.key.mode or ""))
    return [{
        "mode": g.key.mode or "", "ranks": g.key.ranks, "nodes": g.key.nodes,
        "gpus_per_node": g.key.gpus_per_node, "batch_size_per_rank": g.key.batch_size_per_rank,
        "global_batch_size": g.global_batch_size, "steps_per_epoch": g.steps_per_epoch,
        "seconds_per_epoch": g.seconds_per_epoch, "seconds_per_step": g.seconds_per_step,
        "samples_per_second": g.samples_per_second, "runs": g.runs, "epochs": g.epochs,
    } for g in ordered]


def _median_or_none(values: Iterable[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v)]
    return statistics.median(numbers) if numbers else None


def accuracy_table(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """Test metrics by configuration: the group key plus learning rate and epochs (both change the
    result), median over runs. Runs without test metrics are left out."""
    per_config: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.test is None:
            continue
        config = (run.group_key.sort_key(), run.learning_rate or 0.0, run.epochs_planned or len(run.epochs))
        per_config.setdefault(config, []).append(run)
    rows = []
    for config in sorted(per_config):
        members = per_config[config]
        first = members[0]
        row = {
            "mode": first.mode or "", "ranks": first.ranks, "nodes": first.nodes,
            "gpus_per_node": first.gpus_per_node, "batch_size_per_rank": first.batch_size_per_rank,
            "global_batch_size": first.global_batch_size, "learning_rate": first.learning_rate,
            "epochs": config[2],
        }
        for metric in TEST_METRICS:
            row["test_mse" if metric == "mse" else metric] = _median_or_none(r.test.get(metric) for r in members)
        row["runs"] = len(members)
        rows.append(row)
    return rows


def environment_table(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """One row per distinct software versions + hardware, with every host those runs used."""
    per_env: dict[tuple, list[Run]] = {}
    for run in runs:
        v = run.versions
        hardware = json.dumps(run.hardware, sort_keys=True) if run.hardware else ""
        key = (str(v.get("python", "")), str(v.get("tensorflow", "")), str(v.get("horovod", "")),
               str(v.get("mpi", "") or ""), hardware)
        per_env.setdefault(key, []).append(run)
    rows = []
    for key in sorted(per_env):
        members = per_env[key]
        starts = sorted(r.started for r in members if r.started)
        python, tensorflow, horovod, mpi, hardware = key
        rows.append({
            "hosts": " ".join(sorted({h for r in members for h in r.hosts})), "python": python,
            "tensorflow": tensorflow, "horovod": horovod, "mpi": mpi, "hardware": hardware,
            "runs": len(members), "first_start": starts[0] if starts else "",
            "last_start": starts[-1] if starts else "",
        })
    return rows


@dataclass(frozen=True)
class Report:
    """Everything scaling.md, the CSVs and the plots show, as plain data."""

    config: ReportConfig
    runs: tuple[Run, ...]
    skipped: tuple[SkippedLog, ...]
    notes: tuple[str, ...]
    strong: list[dict[str, Any]] = field(default_factory=list)
    weak: list[dict[str, Any]] = field(default_factory=list)
    batch_size: list[dict[str, Any]] = field(default_factory=list)
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    environment: list[dict[str, Any]] = field(default_factory=list)
    untimed_runs: tuple[str, ...] = ()  # runs with no epoch left after warm-up exclusion


def build_report(loaded: LoadedRuns, config: ReportConfig) -> Report:
    """All tables from the parsed runs. Raises UserError when no log is usable."""
    if not loaded.runs:
        if loaded.skipped:
            raise UserError(f"no usable timing logs in {config.runs_dir}: all {len(loaded.skipped)} "
                            f"were skipped (warnings above say why)")
        raise UserError(f"no timing logs in {config.runs_dir} (expected {config.runs_dir}/<run-id>/"
                        f"{TIMING_LOG_NAME}; submit runs first: make sweep, or make demo)")
    groups = group_timings(loaded.runs, config.warmup_epochs)
    untimed = tuple(r.run_id for r in loaded.runs if run_timing(r, config.warmup_epochs) is None)
    return Report(
        config=config, runs=loaded.runs, skipped=loaded.skipped, notes=loaded.notes,
        strong=strong_scaling_table(groups), weak=weak_scaling_table(groups),
        batch_size=batch_size_table(groups), accuracy=accuracy_table(loaded.runs),
        environment=environment_table(loaded.runs), untimed_runs=untimed,
    )


# --- rendering -----------------------------------------------------------------------------------

def _csv_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text with a header row; blanks for missing values; floats at full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(c)) for c in columns])
    return buffer.getvalue()


_FORMATS = {
    "seconds_per_epoch": "{:.3f}", "seconds_per_step": "{:.4f}", "samples_per_second": "{:,.0f}",
    "speedup": "{:.2f}", "throughput_ratio": "{:.2f}", "efficiency": "{:.0%}", "karp_flatt": "{:.3f}",
    "steps_per_epoch": "{:g}", "learning_rate": "{:.3g}", "test_mse": "{:.3e}", "persistence_mse": "{:.3e}",
    "rmse_price": "{:.4f}", "mae_price": "{:.4f}", "persistence_rmse_price": "{:.4f}", "skill": "{:.3f}",
    "direction_accuracy": "{:.1%}",
}
_HEADINGS = {
    "global_batch_size": "global batch", "batch_size_per_rank": "batch/rank", "gpus_per_node": "GPUs/node",
    "seconds_per_epoch": "s/epoch", "seconds_per_step": "s/step", "samples_per_second": "samples/s",
    "karp_flatt": "Karp-Flatt e", "throughput_ratio": "X_p/X_p0", "steps_per_epoch": "steps/epoch",
    "learning_rate": "LR", "test_mse": "test MSE (norm.)", "rmse_price": "RMSE (price)", "mae_price": "MAE (price)",
    "persistence_mse": "persist. MSE (norm.)", "persistence_rmse_price": "persist. RMSE (price)",
    "direction_accuracy": "direction acc.", "first_start": "first run", "last_start": "last run",
}


def _md_cell(column: str, value: Any) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return ""
    fmt = _FORMATS.get(column)
    text = fmt.format(value) if fmt and isinstance(value, (int, float)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "_No rows._\n"
    lines = ["| " + " | ".join(_HEADINGS.get(c, c.replace("_", " ")) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_md_cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(report: Report, plot_files: Mapping[str, str]) -> str:
    """scaling.md: header (what, where, when, how many runs, what was skipped), tables, plots."""
    runs = report.runs
    hosts = sorted({h for r in runs for h in r.hosts})
    starts = sorted(r.started for r in runs if r.started)
    modes = {m: sum(1 for r in runs if r.mode == m) for m in (*MODES, None)}
    datasets = sorted({r.dataset for r in runs if r.dataset})
    resumed = [r.run_id for r in runs if r.attempts > 1]
    w = report.config.warmup_epochs
    out = [
        "# Scaling report",
        "",
        "Generated by `python -m stockpredict.report` from the trainer's timing logs "
        f"(`{report.config.runs_dir}/*/{TIMING_LOG_NAME}`, schema {SCHEMA_VERSION}); docs/report.md explains "
        "every column.",
        "",
        "- **Measured:** wall time of each epoch's training steps on rank 0 (validation excluded) and "
        "global training samples/s, per epoch; test-split metrics at the end of each run.",
        f"- **Where:** {', '.join(hosts) if hosts else 'hosts not recorded'}.",
        f"- **When:** {starts[0]} to {starts[-1]} (UTC, run starts)." if starts else "- **When:** not recorded.",
        f"- **Runs used:** {len(runs)} ({modes['strong']} strong, {modes['weak']} weak, {modes[None]} without "
        f"a mode: those appear only in the batch-size and accuracy tables); {len(resumed)} resumed after "
        "preemption" + (f" ({', '.join(resumed)})" if resumed else "") + ".",
        f"- **Statistic:** the first {w} epoch(s) logged after every run start (graph building; again "
        "after a restart) and epochs flagged `resumed` are excluded; each run contributes the median over "
        "its remaining epochs, and each row is the median over its runs. `runs` and `epochs` give how "
        "many runs and timed epochs a row rests on.",
    ]
    if len(datasets) > 1:
        out.append(f"- **Warning:** the runs used {len(datasets)} different datasets: {', '.join(datasets)}.")
    if report.untimed_runs:
        out.append(f"- **No timed epochs** (too few epochs after warm-up; accuracy only): "
                   f"{', '.join(report.untimed_runs)}.")
    if report.skipped:
        out.append(f"- **Skipped logs ({len(report.skipped)}):**")
        out += [f"  - `{s.path}`: {s.reason}" for s in report.skipped]
    else:
        out.append("- **Skipped logs:** none.")
    if report.notes:
        out.append("- **Notes:** " + "; ".join(report.notes) + ".")

    def section(title: str, text: str, table: str, columns: Sequence[str], plots: Sequence[str]) -> None:
        out.extend(["", f"## {title}", "", text, "", render_markdown_table(getattr(report, table), columns)
                    .rstrip("\n"), "", f"CSV: [{CSV_NAMES[table]}]({CSV_NAMES[table]})"])
        for name in plots:
            if name in plot_files:
                out.extend(["", f"![{name.replace('_', ' ')}]({plot_files[name]})"])

    section("Strong scaling",
            "Global batch fixed, per-rank batch divided. Speedup S = T(p0)/T(p) in seconds per epoch against "
            "the smallest rank count p0 with the same global batch; efficiency S/(p/p0); Karp-Flatt serial "
            "fraction e = (1/S - 1/p)/(1 - 1/p) with p taken relative to p0 (blank at p0).",
            "strong", STRONG_COLUMNS, ("speedup", "efficiency"))
    section("Weak scaling",
            "Per-rank batch fixed. Efficiency = X_p / ((p/p0) X_p0), X = global samples/s, p0 the smallest "
            "rank count with the same per-rank batch.",
            "weak", WEAK_COLUMNS, ())
    section("Batch size",
            "Seconds per epoch and per step by effective (global) batch size, every run (the seed's "
            "Figure 3 table).",
            "batch_size", BATCH_COLUMNS, ("seconds_per_epoch",))
    section("Accuracy",
            "Test split, median over runs. MSE on the normalised scale (the seed's metric); RMSE and MAE "
            "in price units; persistence = forecasting the window's last close; skill = 1 - MSE/MSE_persistence "
            "(> 0 beats persistence); direction accuracy = share of correctly predicted signs of the move.",
            "accuracy", ACCURACY_COLUMNS, ("test_loss",))
    section("Environment", "Hosts and software versions as each run recorded them.",
            "environment", ENVIRONMENT_COLUMNS, ())
    out.extend(["", "## Report settings", "", "```json", json.dumps(report.config.to_dict(), indent=2,
                                                                       sort_keys=True), "```", ""])
    return "\n".join(out)


# --- I/O -----------------------------------------------------------------------------------------

def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write scaling.md, the five CSVs and (if enabled) the four PNGs; return the paths written."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {out_dir}: {err.strerror or err}") from None
    outputs: list[tuple[Path, bytes | str]] = [
        (out_dir / CSV_NAMES[table], render_csv(getattr(report, table), columns))
        for table, columns in (("strong", STRONG_COLUMNS), ("weak", WEAK_COLUMNS),
                               ("batch_size", BATCH_COLUMNS), ("accuracy", ACCURACY_COLUMNS),
                               ("environment", ENVIRONMENT_COLUMNS))]
    plot_files: dict[str, str] = {}
    if report.config.plots:
        from . import plots  # matplotlib is imported only when plots are wanted

        for name, png in plots.render_all(report).items():
            outputs.append((out_dir / PLOT_NAMES[name], png))
            plot_files[name] = PLOT_NAMES[name]
    # scaling.md last: once it is there, every file it links to is too.
    outputs.append((out_dir / MARKDOWN_NAME, render_markdown(report, plot_files)))
    for path, data in outputs:
        try:
            write_atomic(path, data)
        except OSError as err:
            raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    return [outputs[-1][0]] + [path for path, _ in outputs[:-1]]


def make_report(config: ReportConfig) -> tuple[Report, list[Path]]:
    """Load the logs, warn about each skipped one, build the tables and write every output file."""
    loaded = load_runs(config.runs_dir)
    for skipped in loaded.skipped:
        log.warning("skipping %s: %s", skipped.path, skipped.reason)
    for note in loaded.notes:
        log.warning("%s", note)
    report = build_report(loaded, config)
    return report, write_report(report, config.out_dir)


def _parse_args(argv: Sequence[str] | None) -> ReportConfig:
    defaults = ReportConfig()
    parser = argparse.ArgumentParser(
        prog="stockpredict-report",
        description="Scaling tables (Markdown + CSV) and plots from results/runs/*/timing.jsonl.")
    parser.add_argument("--runs", type=Path, default=defaults.runs_dir,
                        help=f"directory of run directories (default {defaults.runs_dir})")
    parser.add_argument("--out", type=Path, default=defaults.out_dir,
                        help=f"where scaling.md, the CSVs and PNGs go (default {defaults.out_dir})")
    parser.add_argument("--warmup-epochs", type=int, default=defaults.warmup_epochs,
                        help="epochs excluded from timing after every run_start (default %(default)s)")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="write tables only")
    args = parser.parse_args(argv)
    return ReportConfig(runs_dir=args.runs, out_dir=args.out, warmup_epochs=args.warmup_epochs,
                        plots=args.plots)


def _main(argv: Sequence[str] | None) -> int:
    config = _parse_args(argv)
    report, written = make_report(config)
    print(f"report: {len(report.runs)} run(s) used, {len(report.skipped)} skipped; wrote "
          f"{len(written)} files to {config.out_dir}:")
    for path in written:
        print(f"  {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `stockpredict-report`; returns the exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
