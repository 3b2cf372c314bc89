"""Parsing: one timing.jsonl into a `Run`, or a reason to skip it; every log of a runs directory.

The log's contract (schema version, file name, events, field types) is stockpredict/common/timing.py; this
module only decides which logs are usable and how a resumed run's records combine (docs/report.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from stockpredict.common import rundir, timing
from stockpredict.common.errors import UserError
from stockpredict.report.keys import ComparabilityKey, run_start_key
from stockpredict.report.restarts import Restart, restarts_of
from stockpredict.report.timeline import StepBreakdown, TimelineError, read_timeline

SCHEMA_VERSION = timing.SCHEMA_VERSION


def _distinct_toolkits(starts: list[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    """The distinct `toolkit` objects of the run_start events, in order (absent or malformed: skipped)."""
    found: list[Mapping[str, Any]] = []
    for start in starts:
        toolkit = start.get("toolkit")
        if isinstance(toolkit, dict) and toolkit not in found:
            found.append(dict(toolkit))
    return tuple(found)

MODES = timing.MODES
# A Horovod timeline in a run directory (`make submit TIMELINE=1` sets HOROVOD_TIMELINE to it).


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
    checkpoint_seconds: float | None = None  # the epoch-end checkpoint's save; None in older logs

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
    key: ComparabilityKey      # dataset fingerprint (or path), model config, engine: see keys.py
    kind: str = "train"        # run_start `kind`: "train", or "allreduce" (stockpredict.allreduce_bench)
    gradient_bytes: int | None = None  # run_start `gradient_bytes`; None in logs written before it
    timeline: StepBreakdown | None = None  # from rundir.TIMELINE in the run directory, if readable
    # run_start `toolkit` ({"version", "commit", "dirty"}) of each attempt, distinct ones in order (a
    # requeue runs the checkout as it is then); () in logs from before the field
    toolkit: tuple[Mapping[str, Any], ...] = ()
    timeline_recorded: bool = False        # the run directory holds rundir.TIMELINE (readable or not)
    restarts: tuple[Restart, ...] = ()  # one per run_start after the first, with the time it lost
    # run_start `optimum`: the best achievable skill ({"kalman_skill", "window_skill", ...}); None = unknown
    optimum: Mapping[str, Any] | None = None
    # run_start `dataset_warnings`: the preprocessing warnings; None = not recorded (older logs)
    dataset_warnings: tuple[str, ...] | None = None
    # The cost split (report/cost.py), summed over attempts; None when an attempt did not record it (older
    # logs): run_start `startup_seconds`, run_end `process_seconds` and the last run_end's `test_seconds`.
    startup_seconds: float | None = None
    process_seconds: float | None = None
    test_seconds: float | None = None
    # The last attempt's run_start `process_start` (epoch seconds): with accounting, the time from the job's
    # start to it (the batch script, srun, the interpreter's launch) is start-up too.
    last_process_start: float | None = None

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

_PYTHON_TYPES = {
    timing.INTEGER: (int,), timing.NUMBER: (int, float), timing.NUMBER_OR_NULL: (int, float, type(None)),
}
_RUN_START_FIELDS = timing.FIELD_TYPES["run_start"]
_EPOCH_FIELDS = timing.FIELD_TYPES["epoch"]


def _field(event: Mapping[str, Any], name: str, kind: str, lineno: int) -> Any:
    value = event.get(name)
    if isinstance(value, bool) or not isinstance(value, _PYTHON_TYPES[kind]):
        raise SkipLog(f"corrupt: line {lineno} ({event.get('event')}) has {name}={value!r}, expected {kind}")
    return value


_RECORD_START = re.compile(r'\{\s*"schema"\s*:')


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _is_torn_fragment(line: str) -> bool:
    """Whether `line` is the start of a JSON object cut short (a write interrupted), not other damage:
    it opens an object and the parser runs out of text, in a string or within the last few characters
    (a number, `true`, `null` cut short), rather than meeting a wrong character earlier."""
    text = line.strip()
    if not text.startswith("{"):
        return False
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        rest = text[err.pos:]
        return (err.msg.startswith("Unterminated string") or not rest
                or any(word.startswith(rest) for word in ("true", "false", "null"))
                or re.fullmatch(r"-|[.eE][+-]?", rest) is not None)
    return False


def _record_after_torn_fragment(line: str) -> dict | None:
    """The whole record that follows a torn fragment on one line, or None."""
    for match in _RECORD_START.finditer(line, 1):
        event = _json_object(line[match.start():])
        if event is not None:
            return event
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_accuracy_fields(event: Mapping[str, Any], lineno: int) -> None:
    """run_start's optional `optimum` (an object with a numeric kalman_skill) and `dataset_warnings` (a
    list of strings): a log that breaks their types is corrupt."""
    optimum, warnings = event.get("optimum"), event.get("dataset_warnings")
    if optimum is not None and not (isinstance(optimum, Mapping) and _is_number(optimum.get("kalman_skill"))
                                    and (optimum.get("window_skill") is None
                                         or _is_number(optimum["window_skill"]))):
        raise SkipLog(f"corrupt: line {lineno} has optimum={optimum!r}, expected an object with a numeric "
                      f"kalman_skill (or null)")
    if warnings is not None and not (isinstance(warnings, list)
                                     and all(isinstance(w, str) for w in warnings)):
        raise SkipLog(f"corrupt: line {lineno} has dataset_warnings={warnings!r}, expected a list of strings")


def _is_string_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(v is None or isinstance(v, (str, int, float))
                                              for v in value.values())


# run_start's other fields the report reads, each with the types it accepts (null: not recorded).
_OPTIONAL_START_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "learning_rate": ("a number", _is_number),
    "epochs": ("a positive integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "dataset": ("a string", lambda v: isinstance(v, str)),
    "time": ("a string", lambda v: isinstance(v, str)),
    "job_id": ("a string or integer", lambda v: isinstance(v, (str, int)) and not isinstance(v, bool)),
    "hosts": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(h, str) for h in v)),
    "versions": ("an object of version strings", _is_string_map),
    "process_start": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "startup_seconds": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
}
# The optional seconds of epoch and run_end records (the cost split): null/absent, or a number >= 0.
_OPTIONAL_SECONDS = {"epoch": ("checkpoint_seconds",), "run_end": ("test_seconds", "process_seconds")}


def _optional_seconds(event: Mapping[str, Any], lineno: int) -> None:
    for name in _OPTIONAL_SECONDS[event["event"]]:
        value = event.get(name)
        if value is not None and not (_is_number(value) and value >= 0):
            raise SkipLog(f"corrupt: line {lineno} ({event['event']}) has {name}={value!r}, expected a "
                          f"number >= 0 or null"[:300])


def _attempt_sum(events: list[dict], kind: str, name: str) -> float | None:
    """The sum of `name` over the `kind` events (one per attempt); None if any lacks it."""
    values = [e.get(name) for e in events if e.get("event") == kind]
    return None if not values or any(v is None for v in values) else round(sum(values), 3)


def _check_optional_start_fields(event: Mapping[str, Any], lineno: int) -> None:
    for name, (what, ok) in _OPTIONAL_START_TYPES.items():
        value = event.get(name)
        if value is not None and not ok(value):
            raise SkipLog(f"corrupt: line {lineno} (run_start) has {name}={value!r}, expected {what} or "
                          f"null"[:300])


def _check_test_metrics(test: Any) -> None:
    """run_end's `test`: null, or an object whose present metrics are numbers (or null)."""
    if test is None:
        return
    if not isinstance(test, Mapping):
        raise SkipLog(f"corrupt: run_end has test={test!r}, expected an object of metrics or null"[:300])
    for name in timing.TEST_METRIC_FIELDS:
        value = test.get(name)
        if value is not None and not _is_number(value):
            raise SkipLog(f"corrupt: run_end test metric {name}={value!r}, expected a number or null"[:300])


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
            elif _is_torn_fragment(line) and _json_object(lines[position + 1][1]) is not None:
                # timing.append_event starts a fresh line after a torn one, so the fragment stands alone.
                notes.append(f"line {lineno}: dropped a torn fragment (a write cut short) before a whole "
                             f"record")
                continue
            else:
                raise SkipLog(f"corrupt: line {lineno} is not a JSON object")
        schema = event.get("schema")
        if schema != SCHEMA_VERSION:
            raise SkipLog(f"unknown schema {schema!r} on line {lineno} "
                          f"(this report reads schema {SCHEMA_VERSION})")
        events.append((lineno, event))

    starts: list[dict] = []
    epochs: dict[int, EpochRecord] = {}
    after_start = 0
    last_end: dict | None = None
    for lineno, event in events:
        kind = event.get("event")
        if kind == "run_start":
            for name, kind in _RUN_START_FIELDS.items():
                _field(event, name, kind, lineno)
            mode = event.get("mode")
            if mode is not None and mode not in MODES:
                raise SkipLog(f"corrupt: line {lineno} has mode={mode!r}, expected one of {MODES} or null")
            try:
                run_start_key(event)  # a malformed dataset_id, model or engine makes the log corrupt
            except ValueError as why:
                raise SkipLog(f"corrupt: line {lineno} (run_start) has {why}") from None
            size, run_kind = event.get("gradient_bytes"), event.get("kind")
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
                raise SkipLog(f"corrupt: line {lineno} has gradient_bytes={size!r}, expected a positive "
                              f"integer")
            if run_kind is not None and run_kind not in timing.RUN_KINDS:
                raise SkipLog(f"corrupt: line {lineno} has kind={run_kind!r}, expected one of "
                              f"{timing.RUN_KINDS}")
            _check_accuracy_fields(event, lineno)
            _check_optional_start_fields(event, lineno)
            if starts:
                for name in ("mode", *_RUN_START_FIELDS, *(f for f in timing.RUN_START_OPTIONAL_FIELDS
                                                           if f not in timing.RUN_START_PER_ATTEMPT_FIELDS)):
                    if event.get(name) != starts[0].get(name):
                        raise SkipLog(f"corrupt: run_start on line {lineno} changes {name} from "
                                      f"{starts[0].get(name)!r} to {event.get(name)!r}")
            starts.append(event)
            after_start = 0
            last_end = None
        elif kind == "epoch":
            if not starts:
                raise SkipLog(f"corrupt: epoch on line {lineno} before any run_start")
            values = {name: _field(event, name, kind, lineno) for name, kind in _EPOCH_FIELDS.items()}
            for name in ("epoch", "steps", "train_seconds", "samples_per_second"):
                if values[name] <= 0:  # speedup, s/step and throughput ratios divide by these
                    raise SkipLog(f"corrupt: line {lineno} (epoch) has {name}={values[name]!r}, expected > 0")
            _optional_seconds(event, lineno)
            after_start += 1
            # Resumed runs log some epochs again; the later record wins.
            epochs[values["epoch"]] = EpochRecord(
                **values, resumed=bool(event.get("resumed", False)), after_start=after_start,
                checkpoint_seconds=event.get("checkpoint_seconds"))
        elif kind == "run_end":
            if not starts:
                raise SkipLog(f"corrupt: run_end on line {lineno} before any run_start")
            _optional_seconds(event, lineno)
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
    key = run_start_key(first)
    test = last_end.get("test")
    _check_test_metrics(test)
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
        toolkit=_distinct_toolkits(starts),
        hardware=first.get("hardware") if isinstance(first.get("hardware"), dict) else None,
        started=first.get("time"),
        attempts=len(starts),
        epochs=tuple(epochs[k] for k in sorted(epochs)),
        test=test if isinstance(test, dict) else None,
        total_seconds=total if isinstance(total, (int, float)) and not isinstance(total, bool) else None,
        key=key,
        kind=first.get("kind") or "train",
        gradient_bytes=first.get("gradient_bytes"),
        restarts=restarts_of([event for _, event in events]),
        optimum=first.get("optimum"),
        dataset_warnings=(None if first.get("dataset_warnings") is None
                          else tuple(first["dataset_warnings"])),
        startup_seconds=_attempt_sum(starts, "run_start", "startup_seconds"),
        process_seconds=_attempt_sum([e for _, e in events], "run_end", "process_seconds"),
        test_seconds=last_end.get("test_seconds"),
        last_process_start=starts[-1].get("process_start") if starts else None,
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
        path = run_dir / rundir.TIMING_LOG
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
        timeline = run_dir / rundir.TIMELINE
        if timeline.exists():
            try:
                run = replace(run, timeline=read_timeline(timeline), timeline_recorded=True)
            except TimelineError as why:  # the run still counts; only its step-time breakdown is missing
                run = replace(run, timeline_recorded=True)
                notes.append(f"no step-time breakdown from {why}")
        runs.append(run)
        notes.extend(f"{path}: {note}" for note in run_notes)
    return LoadedRuns(tuple(runs), tuple(skipped), tuple(notes))
