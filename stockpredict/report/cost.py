"""What the study cost: per run, where the elapsed time went and what it cost (docs/report.md).

    text = run_sacct(job_ids)             -> sacct's --parsable2 output, or None (no sacct, or it failed)
    jobs = parse_sacct(text)              -> {job id: SacctJob}
    rows = cost_rows(runs, jobs, pricing, predicted) -> rows of registry.COST

Elapsed time and queue wait come from Slurm's accounting (sacct) when it has the run's job; otherwise from
the run's own records (timing.jsonl: process_start to run_end, summed over attempts; queue wait unknown).
The split of elapsed into start-up, training epochs, validation, test, checkpoints and the rest uses the
trainer's optional timing fields (run_start startup_seconds, epoch checkpoint_seconds, run_end
test_seconds/process_seconds); a log written before them gets "unknown" in the split columns.
Everything but run_sacct is pure.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from stockpredict.common.accounting import sacct_rows, sacct_text
from stockpredict.report.parse import Run
from stockpredict.report.scaling_model import Pricing

SACCT_FIELDS = ("JobID", "Submit", "Start", "End", "ElapsedRaw", "AllocNodes", "AllocTRES", "TotalCPU",
                "MaxRSS", "ReqMem", "State")
# seff-style flags: a request far above use.
LOW_CPU_EFFICIENCY = 0.25
LOW_MEMORY_USE = 0.25
SOURCE_SACCT, SOURCE_RECORDS = "sacct", "records"
SPLIT_PARTS = ("startup", "train", "val", "test", "checkpoint")
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4, "P": 1024 ** 5}


@dataclass(frozen=True)
class SacctJob:
    """One job's accounting, its steps folded in (MaxRSS: the largest step's)."""

    job_id: str
    submit: _dt.datetime | None
    start: _dt.datetime | None
    end: _dt.datetime | None
    elapsed_seconds: float | None     # summed over the job's attempts (sacct --duplicates)
    alloc_nodes: int | None
    alloc_cpus: int | None
    alloc_gpus: int | None
    total_cpu_seconds: float | None
    max_rss_bytes: float | None
    req_mem_bytes: float | None       # the whole job's request (per-node/per-CPU requests multiplied out)
    state: str

    @property
    def queue_wait_seconds(self) -> float | None:
        if self.submit is None or self.start is None:
            return None
        return max(0.0, (self.start - self.submit).total_seconds())

    @property
    def cpu_efficiency(self) -> float | None:
        """TotalCPU / (elapsed x allocated CPUs), as seff computes it."""
        if not (self.total_cpu_seconds is not None and self.elapsed_seconds and self.alloc_cpus):
            return None
        return self.total_cpu_seconds / (self.elapsed_seconds * self.alloc_cpus)

    def memory_use(self, tasks_per_node: float = 1.0) -> float | None:
        """The busiest node's memory against its share of the request: MaxRSS (sacct's peak of one task)
        x the tasks on a node / (the job's request / its nodes). Comparing one task's peak with the
        whole multi-node request would understate use by the node count."""
        if self.max_rss_bytes is None or not self.req_mem_bytes:
            return None
        per_node_request = self.req_mem_bytes / (self.alloc_nodes or 1)
        return self.max_rss_bytes * max(tasks_per_node, 1.0) / per_node_request


# --- sacct's text -----------------------------------------------------------------------------------

def _time(text: str) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None  # "Unknown", "None", ""


def _duration(text: str) -> float | None:
    """[DD-][HH:]MM:SS[.mmm] (sacct's Elapsed and TotalCPU) or plain seconds (ElapsedRaw)."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text)
    if match is None:
        return None
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def _bytes(text: str) -> float | None:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)", text.strip().upper())
    return None if match is None else float(match.group(1)) * _UNITS[match.group(2)]


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def _tres(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def _req_mem(text: str, nodes: int | None, cpus: int | None) -> float | None:
    """ReqMem: "4000M" (the job's, newer Slurm), "4000Mn" per node or "2000Mc" per CPU (older Slurm)."""
    text = text.strip()
    per = text[-1:].lower() if text[-1:].lower() in ("n", "c") else ""
    value = _bytes(text[:-1] if per else text)
    if value is None or not per:
        return value
    factor = nodes if per == "n" else cpus
    return value * factor if factor else None


def parse_sacct(text: str) -> dict[str, SacctJob]:
    """sacct --parsable2 output (with or without its header line; without one the columns are
    SACCT_FIELDS) into one SacctJob per job id. Step rows (`351.batch`, `351.0`, `351.extern`) fold into
    their job: MaxRSS is the largest step's, TotalCPU the job row's (sacct sums the steps there) or else
    the steps' sum. A job listed more than once (a requeue, sacct --duplicates) sums its elapsed times
    and keeps the first submit. Unreadable rows and values are skipped, never an error."""
    jobs: dict[str, dict[str, Any]] = {}
    for row in sacct_rows(text, SACCT_FIELDS):
        if "ElapsedRaw" not in row and "Elapsed" in row:
            row["ElapsedRaw"] = row["Elapsed"]
        job_ref = row.get("JobID", "").strip()
        if not job_ref:
            continue
        job_id, _, step = job_ref.partition(".")
        job = jobs.setdefault(job_id, {"rows": 0, "elapsed": None, "step_cpu": None, "rss": None,
                                       "submit": None, "start": None, "end": None, "nodes": None,
                                       "cpus": None, "gpus": None, "cpu": None, "req": None, "state": ""})
        rss = _bytes(row.get("MaxRSS", ""))
        if rss is not None:
            job["rss"] = max(job["rss"] or 0.0, rss)
        if step:
            cpu = _duration(row.get("TotalCPU", ""))
            if cpu is not None:
                job["step_cpu"] = (job["step_cpu"] or 0.0) + cpu
            continue
        job["rows"] += 1
        elapsed = _duration(row.get("ElapsedRaw", ""))
        if elapsed is not None:
            job["elapsed"] = (job["elapsed"] or 0.0) + elapsed
        tres = _tres(row.get("AllocTRES", ""))
        nodes = _int(row.get("AllocNodes", "")) or _int(tres.get("node", ""))
        cpus = _int(tres.get("cpu", ""))
        gpus = _int(tres.get("gres/gpu", "")) if "gres/gpu" in tres else (0 if tres else None)
        cpu = _duration(row.get("TotalCPU", ""))
        first = job["rows"] == 1
        job.update(
            submit=job["submit"] if not first else _time(row.get("Submit", "")),
            start=job["start"] if not first else _time(row.get("Start", "")),
            end=_time(row.get("End", "")) or job["end"], nodes=nodes or job["nodes"],
            cpus=cpus or job["cpus"], gpus=gpus if gpus is not None else job["gpus"],
            cpu=(job["cpu"] or 0.0) + cpu if cpu is not None else job["cpu"],
            req=_req_mem(row.get("ReqMem", ""), nodes, cpus) or job["req"],
            state=row.get("State", "").strip() or job["state"])
    return {job_id: SacctJob(
        job_id=job_id, submit=j["submit"], start=j["start"], end=j["end"], elapsed_seconds=j["elapsed"],
        alloc_nodes=j["nodes"], alloc_cpus=j["cpus"], alloc_gpus=j["gpus"],
        total_cpu_seconds=j["cpu"] if j["cpu"] else j["step_cpu"], max_rss_bytes=j["rss"],
        req_mem_bytes=j["req"], state=j["state"]) for job_id, j in jobs.items() if j["rows"]}


def run_sacct(job_ids: Iterable[str], timeout: float = 30.0) -> str | None:
    """sacct's --parsable2 text for these jobs (every attempt of a requeued one), or None when sacct is
    not installed, accounting is off, or it fails or hangs: the report then uses the runs' records."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return None
    out = sacct_text(["--parsable2", "--duplicates", "--allusers", "-j", ",".join(ids),
                      "--format=" + ",".join(SACCT_FIELDS)], timeout=timeout)
    if out is None or "JobID" not in out.split("\n", 1)[0]:
        return None
    return out


# --- the split and the rows -------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    """Seconds of one run's elapsed time: the named parts (None = not recorded) and the total."""

    elapsed: float | None
    source: str                     # SOURCE_SACCT or SOURCE_RECORDS
    startup: float | None
    train: float
    val: float
    test: float | None
    checkpoint: float | None

    @property
    def known(self) -> bool:
        return None not in (self.elapsed, self.startup, self.test, self.checkpoint)

    @property
    def named(self) -> float | None:
        """The named parts' sum, or None when any is unknown."""
        if not self.known:
            return None
        return self.startup + self.train + self.val + self.test + self.checkpoint

    @property
    def rest(self) -> float | None:
        named = self.named
        return None if named is None else self.elapsed - named

    @property
    def covered(self) -> float | None:
        """The share of elapsed the named parts account for."""
        named = self.named
        return None if named is None or not self.elapsed else named / self.elapsed


def _matches(run: Run, job: SacctJob) -> bool:
    """Whether the accounting record is this run's job: it started no later than the run's first
    run_start (a job id reused by another cluster, or a test log's made-up id, does not match)."""
    if job.start is None or run.started is None:
        return False
    try:
        started = _dt.datetime.fromisoformat(run.started.replace("Z", "+00:00"))
    except ValueError:
        return False
    start = job.start if job.start.tzinfo else job.start.astimezone()  # sacct prints local time
    end = job.end if job.end is None or job.end.tzinfo else job.end.astimezone()
    return start.timestamp() - 2 <= started.timestamp() and (end is None
                                                              or started.timestamp() <= end.timestamp() + 2)


def _launch_seconds(run: Run, job: SacctJob) -> float:
    """Seconds from the job's (last) start in sacct to its trainer process's start: the batch script, srun
    and the interpreter's launch, part of the start-up before the first step. 0 when unknown or implausible
    (sacct's times have whole seconds, so up to 1 s of it can land in "the rest")."""
    if job.start is None or run.last_process_start is None:
        return 0.0
    start = job.start if job.start.tzinfo else job.start.astimezone()  # sacct prints local time
    launch = run.last_process_start - start.timestamp()
    return round(launch, 3) if 0.0 <= launch <= (job.elapsed_seconds or 0.0) else 0.0


def run_split(run: Run, job: SacctJob | None = None) -> Split:
    """The run's elapsed time and its parts; `job` (its accounting) supplies elapsed when given."""
    epochs = run.epochs
    checkpoints = [e.checkpoint_seconds for e in epochs]
    startup = run.startup_seconds
    if job is not None and job.elapsed_seconds is not None:
        elapsed, source = job.elapsed_seconds, SOURCE_SACCT
        if startup is not None:
            startup += _launch_seconds(run, job)
    else:
        elapsed, source = run.process_seconds, SOURCE_RECORDS
    return Split(
        elapsed=elapsed, source=source, startup=startup,
        train=sum(e.train_seconds for e in epochs), val=sum(e.val_seconds for e in epochs),
        test=run.test_seconds if run.test is not None or run.test_seconds is not None else None,
        checkpoint=None if any(c is None for c in checkpoints) else sum(checkpoints))


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600.0


def _flags(job: SacctJob | None, memory_use: float | None) -> str:
    if job is None:
        return ""
    flags = []
    if job.cpu_efficiency is not None and job.cpu_efficiency < LOW_CPU_EFFICIENCY:
        flags.append(f"CPU efficiency < {LOW_CPU_EFFICIENCY:.0%}: fewer CPUs per task would do")
    if memory_use is not None and memory_use < LOW_MEMORY_USE:
        flags.append(f"memory use < {LOW_MEMORY_USE:.0%} of the request: ask for less")
    return "; ".join(flags)


def cost_row(run: Run, job: SacctJob | None, pricing: Pricing | None,
             predicted_seconds_per_epoch: float | None) -> dict[str, Any]:
    """One row of registry.COST."""
    job = job if job is not None and _matches(run, job) else None
    split = run_split(run, job)
    elapsed = split.elapsed
    if elapsed is None:  # an old log: only the trainer's own wall time (from after its start-up)
        elapsed = run.total_seconds
    nodes = job.alloc_nodes if job is not None and job.alloc_nodes else run.nodes
    gpus = (job.alloc_gpus if job is not None and job.alloc_gpus is not None
            else run.nodes * run.gpus_per_node)
    memory_use = job.memory_use(run.ranks / nodes) if job is not None and nodes else None
    epochs = len(run.epochs)
    predicted = None if predicted_seconds_per_epoch is None else predicted_seconds_per_epoch * epochs

    def money(seconds: float | None) -> float | None:
        if pricing is None or seconds is None:
            return None
        return seconds / 3600.0 * pricing.billed_units(run.ranks) * pricing.price_per_hour

    known = split.known
    return {
        "run_id": run.run_id, "job_id": run.job_id, "source": split.source if split.elapsed is not None
        else "records (trainer wall only)", "nodes": nodes, "gpus": gpus, "ranks": run.ranks,
        "epochs": epochs, "queue_wait_seconds": job.queue_wait_seconds if job is not None else None,
        "elapsed_seconds": elapsed, "node_hours": _hours(None if elapsed is None else elapsed * nodes),
        "gpu_hours": _hours(None if elapsed is None else elapsed * gpus),
        "startup_seconds": split.startup if known else None, "train_seconds": split.train,
        "val_seconds": split.val, "test_seconds": split.test if known else None,
        "checkpoint_seconds": split.checkpoint if known else None,
        "rest_seconds": split.rest, "named_share": split.covered,
        "split": "recorded" if known else "unknown (log before the cost fields)",
        "cost": money(elapsed), "predicted_seconds": predicted, "predicted_cost": money(predicted),
        "unexplained_share": (None if predicted is None or not elapsed else 1.0 - predicted / elapsed),
        "cpu_efficiency": job.cpu_efficiency if job is not None else None,
        "memory_use": memory_use,
        "max_rss_gb": None if job is None or job.max_rss_bytes is None else job.max_rss_bytes / 1024 ** 3,
        "req_mem_gb": None if job is None or job.req_mem_bytes is None else job.req_mem_bytes / 1024 ** 3,
        "flags": _flags(job, memory_use),
    }


_SUMMED = ("queue_wait_seconds", "elapsed_seconds", "node_hours", "gpu_hours", "startup_seconds",
           "train_seconds", "val_seconds", "test_seconds", "checkpoint_seconds", "rest_seconds", "cost",
           "predicted_seconds", "predicted_cost")


def total_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The key's totals: sums of the time, hours and money columns (blank when any row's is unknown;
    predicted columns: blank when no row has a prediction, else over the rows that have one)."""
    total: dict[str, Any] = {c: None for c in rows[0]} if rows else {}
    total.update(run_id="total", source=", ".join(sorted({str(r["source"]) for r in rows})),
                 epochs=sum(r["epochs"] for r in rows), flags="")
    for column in _SUMMED:
        values = [r[column] for r in rows]
        if column.startswith("predicted"):
            values = [v for v in values if v is not None] or [None]
        total[column] = None if any(v is None for v in values) else sum(values)
    named = [total[f"{p}_seconds"] for p in SPLIT_PARTS]
    if total.get("elapsed_seconds") and None not in named:
        total["named_share"] = sum(named) / total["elapsed_seconds"]
    return total


def cost_rows(runs: Sequence[Run], jobs: Mapping[str, SacctJob], pricing: Pricing | None,
              predicted: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per run (in run order) and a `total` row; `predicted` maps run id to the scaling model's
    seconds per epoch for that run."""
    predicted = predicted or {}
    rows = [cost_row(r, jobs.get(r.job_id or ""), pricing, predicted.get(r.run_id)) for r in runs]
    return rows + [total_row(rows)] if rows else []
