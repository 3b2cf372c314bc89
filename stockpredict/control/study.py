"""A whole study as one submission: preprocessing, the sweep's job arrays, then the report, chained by
Slurm dependencies so that it runs while the user is away (`make study`, `python -m stockpredict.submit
study`).

    make study RAW=data/raw NODES_LIST="1 2" BATCH_LIST="64 128" REPEATS=2 EPOCHS=3

The stages and what each waits for:

    preprocess   RAW -> DATA, when RAW= is given and DATA does not exist yet (FORCE=1: rebuilt anyway)
    sweep nN     one job array per node count (submit_train_array)        afterok:<preprocess>
    report       results/scaling.md from every run in results/runs/       afterok:<preprocess>,
                                                                          afterany:<the arrays>

So a failed preprocessing stops everything after it, while a sweep task that fails does not stop the
report: it reports the runs that completed, and `make status` names the one that did not. Every stage
is submitted with `--kill-on-invalid-dep=yes`, so a stage whose dependency can never be met is cancelled
by Slurm at once instead of pending forever (sites differ in `kill_invalid_depend`; the option makes
that per job).

A re-run of the same `make study` skips the grid's runs that already completed (a run with the same
trainer settings, data path, nodes and GPUs, whose timing log ends `completed` and whose model.keras
exists) and those still queued or running (the report then waits for them too); the preprocessing is
skipped when DATA exists. FORCE=1 rebuilds DATA and so retrains every run.

The record results/studies/<id>/study.json names every stage, its job id and the runs of each array;
`make status` (show_study) prints each stage's state and, for a stage that did not or will not run,
one line saying why.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from stockpredict.common import rundir
from stockpredict.common.errors import UserError
from stockpredict.common.files import write_json_atomic
from stockpredict.common.timing import read_events
from stockpredict.control import slurmjobs
from stockpredict.control.submit import (
    SWEEP_HEADER,
    SweepPlan,
    dependency_args,
    job_config,
    new_run_dir,
    submit_aux,
    submit_train_array,
    sweep_row,
    train_spec,
)

STUDY_RECORD = rundir.STUDY_RECORD
# sbatch: cancel a stage whose dependency can never be satisfied (instead of DependencyNeverSatisfied
# pending forever, which is what most sites' default leaves).
KILL_INVALID = "--kill-on-invalid-dep=yes"


@dataclass(frozen=True)
class Stage:
    """One job of a study: its name ("preprocess", "sweep n2", "report"), kind, job id (None on a dry
    run), folder (results/jobs/<id> or results/arrays/<id>), the stages it waits for, and, for a sweep
    array, its tasks' run ids."""

    name: str
    kind: str
    job_id: str | None
    dir: str
    after: tuple[str, ...] = ()
    runs: tuple[str, ...] = ()


@dataclass
class StudyPlan:
    """What a study will submit: whether to preprocess, which grid runs to train, which it skips."""

    preprocess: bool
    to_train: list[int] = field(default_factory=list)          # indices into the sweep's grid
    completed: dict[int, str] = field(default_factory=dict)    # grid index -> run id that completed
    queued: dict[int, tuple[str, str]] = field(default_factory=dict)  # grid index -> (run id, job id)


# --- which runs a re-run can skip --------------------------------------------------------------------

_SHAPE = ("nodes", "gpus_per_node", "tasks_per_node")


def run_signature(job: Mapping[str, Any], train: Mapping[str, Any]) -> str:
    """What makes two runs the same experiment: the trainer's settings (all but its run directory) and
    the job's shape. Two repeats of a grid point share it; that is why skipping counts them."""
    # The stall timeout says when to give up on a hung rank, and the TensorBoard interval how often to log
    # the loss: neither changes what is trained.
    settings = {k: v for k, v in train.items() if k not in ("run_dir", "stall_timeout", "tensorboard_steps")}
    return json.dumps([{k: job.get(k) for k in _SHAPE}, settings], sort_keys=True)


def run_completed(run_dir: Path) -> bool:
    """The run trained to the end: model.keras (written last) and a timing log ending `completed`."""
    paths = rundir.RunPaths(run_dir)
    if not paths.model.is_file() or not paths.timing_log.is_file():
        return False
    try:
        ends = [e for e in read_events(paths.timing_log) if e.get("event") == "run_end"]
    except (OSError, UnicodeDecodeError):
        return False
    return bool(ends) and ends[-1].get("status") == "completed"


def existing_runs(results: Path, in_queue: set[str]) -> tuple[dict[str, list[str]], dict[str, list[tuple]]]:
    """({signature: [completed run ids]}, {signature: [(run id, job id) still queued or running]}) of
    the runs under results/runs/, oldest first. `in_queue`: the job ids squeue lists."""
    completed: dict[str, list[str]] = defaultdict(list)
    queued: dict[str, list[tuple]] = defaultdict(list)
    for record_path in sorted((results / rundir.RUNS).glob(f"*/{rundir.SUBMIT_RECORD}")):
        try:
            record = json.loads(record_path.read_text())
            signature = run_signature(record["job"], record["train"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not a training run's record (an allreduce run, or damaged): never matched
        run_dir = record_path.parent
        if run_completed(run_dir):
            completed[signature].append(run_dir.name)
        elif str(record.get("job_id")) in in_queue:
            queued[signature].append((run_dir.name, str(record["job_id"])))
    return completed, queued


def squeue_ids(env: Mapping[str, str] | None = None) -> set[str]:
    """Every job and array-task id in the queue (one line per task: squeue -r)."""
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise UserError(f"squeue failed: {' '.join(proc.stderr.split())}")
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}


def plan_study(sweep: SweepPlan, profile: str, results: Path, preprocess: bool,
               in_queue: set[str]) -> StudyPlan:
    """Match each grid run against the runs already there (unless the data is being rebuilt: then every
    run is new). Repeats are counted: two completed runs of a point cover its repeats 1 and 2."""
    plan = StudyPlan(preprocess=preprocess)
    completed, queued = ({}, {}) if preprocess else existing_runs(results, in_queue)
    for index, (run, config) in enumerate(zip(sweep.grid, sweep.configs)):
        overrides = dict(sweep.overrides, nodes=run["nodes"])
        spec = train_spec(profile, Path("/nonexistent/run"), config, **overrides)
        train = dataclasses.asdict(job_config(config, Path("/nonexistent/run"), spec.cpus_per_task,
                                              spec.stall_timeout))
        signature = run_signature(dataclasses.asdict(spec), train)
        if completed.get(signature):
            plan.completed[index] = completed[signature].pop(0)
        elif queued.get(signature):
            plan.queued[index] = queued[signature].pop(0)
        else:
            plan.to_train.append(index)
    return plan


# --- submitting ------------------------------------------------------------------------------------

def _dependency(*parts: tuple[str, Sequence[str]]) -> list[str]:
    """sbatch options for "all of these": `--dependency=afterok:41,afterany:42:43` (a comma is AND)."""
    terms = [f"{kind}:{':'.join(ids)}" for kind, ids in parts if ids]
    return [f"--dependency={','.join(terms)}", KILL_INVALID] if terms else []


def submit_study(sweep: SweepPlan, *, profile: str, results: str | Path, data: str, raw: str | None,
                 force: bool = False, preprocess_args: Sequence[str] = (), report_args: Sequence[str] = (),
                 array_max: int | None = None, dry_run: bool = False, after: str | None = None,
                 after_kind: str = "afterok", say: Callable[[str], None] = print) -> list[Stage]:
    """Submit the study (module docstring) and write its record; returns its stages."""
    results = Path(results).resolve()
    data = str(Path(data).resolve())
    if raw is not None and not Path(raw).exists():
        raise UserError(f"RAW {raw} does not exist: give the directory (or file) of raw minute bars")
    data_exists = Path(data).is_file()
    if raw is None and not data_exists and not dry_run:
        raise UserError(f"data file {data} not found: give RAW=<raw bars> so the study preprocesses them "
                        f"first, or DATA= an existing sequences file")
    preprocess = raw is not None and (force or not data_exists)
    external = dependency_args(after, after_kind)  # validated before anything is submitted
    if not dry_run:
        slurmjobs.require_sbatch()
    in_queue = squeue_ids() if not dry_run and not preprocess and shutil.which("squeue") else set()
    plan = plan_study(sweep, profile, results, preprocess, in_queue)
    if raw is not None and not preprocess:
        say(f"study: {data} exists, not rebuilt from RAW (FORCE=1 rebuilds it, and retrains every run)")
    for index, run_id in plan.completed.items():
        say(f"study: skipping {_point(sweep.grid[index])}: run {run_id} completed")
    for index, (run_id, job_id) in plan.queued.items():
        say(f"study: not resubmitting {_point(sweep.grid[index])}: run {run_id} is in the queue as job "
            f"{job_id}; the report waits for it")

    common = dict(profile=profile, results=results, dry_run=dry_run)
    stages: list[Stage] = []
    prep_id: list[str] = []
    if preprocess:
        command = ["preprocess", "--raw", str(Path(raw).resolve()), "--out", data,
                   *(["--force"] if force else []), *preprocess_args]
        sub = submit_aux("preprocess", command, sbatch_extra=external, **common)
        stages.append(Stage("preprocess", "preprocess", sub.job_id, str(sub.run_dir)))
        prep_id = [sub.job_id] if sub.job_id else []
    arrays: list[Stage] = []
    by_nodes: dict[int, list[int]] = {}
    for index in plan.to_train:
        by_nodes.setdefault(int(sweep.grid[index]["nodes"]), []).append(index)
    rows = []
    for nodes, members in by_nodes.items():
        extra = _dependency(("afterok", prep_id)) if preprocess else external
        sub = submit_train_array([sweep.configs[i] for i in members], array_max=array_max,
                                 sbatch_extra=extra, data_pending=preprocess, **common,
                                 **dict(sweep.overrides, nodes=nodes))
        arrays.append(Stage(f"sweep n{nodes}", "sweep", sub.array_id, str(sub.array_dir),
                            after=("preprocess",) if preprocess else (),
                            runs=tuple(t.run_id for t in sub.tasks)))
        rows += [sweep_row(task.job_id, task.run_id, sweep.grid[i]) for task, i in zip(sub.tasks, members)]
    stages += arrays
    waits = [s.job_id for s in arrays if s.job_id] + [job for _, job in plan.queued.values()]
    if preprocess:
        report_extra = _dependency(("afterok", prep_id), ("afterany", waits))
    elif waits:
        report_extra = _dependency(("afterany", waits))
    else:
        report_extra = external
    command = ["stockpredict.report", "--runs", str(results / rundir.RUNS), "--out", str(results),
               *report_args]
    sub = submit_aux("report", command, sbatch_extra=report_extra, **common)
    stages.append(Stage("report", "report", sub.job_id, str(sub.run_dir),
                        after=tuple(s.name for s in stages)))

    study_dir = new_run_dir(results / (rundir.DRY_RUNS if dry_run else rundir.STUDIES), "study")
    record = {"study_id": study_dir.name, "stages": [dataclasses.asdict(s) for s in stages],
              "data": data, "raw": None if raw is None else str(Path(raw).resolve()), "profile": profile,
              "skipped": {"completed": sorted(plan.completed.values()),
                          "queued": sorted(job for _, job in plan.queued.values())},
              "dry_run": dry_run}
    write_json_atomic(study_dir / STUDY_RECORD, record)
    _announce(stages, rows, study_dir, plan, dry_run, say)
    return stages


def _point(run: Mapping[str, Any]) -> str:
    return (f"nodes={run['nodes']} batch/rank={run['batch_per_rank']} repeat={run['repeat']}")


def _announce(stages: list[Stage], rows: list[str], study_dir: Path, plan: StudyPlan, dry_run: bool,
              say: Callable[[str], None]) -> None:
    if not dry_run:
        for stage in stages:  # the contract line, one per job, in the order they were submitted
            say(f"Submitted batch job {stage.job_id}")
    if rows:
        say(SWEEP_HEADER)
        for row in rows:
            say(row)
    skipped = len(plan.completed) + len(plan.queued)
    say(f"study {study_dir.name}: {len(plan.to_train)} run(s) to train"
        + (f", {skipped} skipped (already completed or queued)" if skipped else ""))
    for stage in stages:
        waits = f"   after {', '.join(stage.after)}" if stage.after else ""
        size = f" ({len(stage.runs)} runs)" if stage.runs else ""
        say(f"  {stage.name:<12} job {stage.job_id or 'dry-run':<10} {stage.dir}{size}{waits}")
    if dry_run:
        say(f"dry run: nothing submitted; the scripts are kept in the folders above, the record in "
            f"{study_dir / STUDY_RECORD}")
        return
    report = stages[-1]
    say(f"follow it with `make status` (each stage's state, and why a stage did not run) and "
        f"`make logs RUN=<run-id>`; {Path(report.dir).parents[1] / rundir.REPORT_MARKDOWN} is written when "
        f"job {report.job_id} ends")


# --- status ----------------------------------------------------------------------------------------

# What the scheduler remembers of a job (scontrol, MinJobAge), else what its files say.
JobInfo = Callable[[str], list[dict[str, str]]]


def latest_study(results: Path) -> Path | None:
    """The record of the most recently submitted study under results/studies/, if any."""
    records = sorted((results / rundir.STUDIES).glob(f"*/{STUDY_RECORD}"))
    return records[-1] if records else None


def _last_error(output: Path) -> str | None:
    """The line that says why a job failed: its last `error:` line, else its last line."""
    try:
        lines = [line.strip() for line in output.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    lines = [line for line in lines if not line.startswith("stockpredict: ")] or lines
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [None])[-1]


_FAILED = ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")


def _aux_state(stage: Mapping[str, Any], records: list[dict[str, str]]) -> tuple[str, str | None]:
    """(state, detail) of a preprocess or report stage: Slurm's state while it remembers the job, else
    what the job's output says; the detail of a failure is its error line."""
    output = Path(stage["dir"]) / f"slurm-{stage['job_id']}.out"
    if records:
        state = records[0].get("JobState", "UNKNOWN")
        return state, _last_error(output) if state in _FAILED else None
    if not output.exists():
        return "NOT RUN", None
    if f"job {stage['job_id']} FAILED" in output.read_text(errors="replace"):
        return "FAILED", _last_error(output)
    return "ENDED", f"Slurm no longer remembers it; its output: {output}"


def _sweep_state(stage: Mapping[str, Any], results: Path,
                 records: list[dict[str, str]]) -> tuple[str, str]:
    """(state, "<n> completed, <n> running, ...") of a sweep array: its tasks' states in the queue while
    Slurm remembers them, and its runs' own records (which outlive Slurm's memory)."""
    counts: dict[str, int] = defaultdict(int)
    for run_id in stage.get("runs", ()):
        run_dir = results / rundir.RUNS / run_id
        if run_completed(run_dir):
            counts["completed"] += 1
        elif (run_dir / rundir.TIMING_LOG).is_file():
            ends = [e for e in read_events(run_dir / rundir.TIMING_LOG) if e.get("event") == "run_end"]
            counts[str(ends[-1].get("status", "ended")) if ends else "started"] += 1
        else:
            counts["not started"] += 1
    summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
    queue = sorted({r.get("JobState", "UNKNOWN") for r in records})
    if counts and set(counts) == {"completed"}:
        return "COMPLETED", summary
    if queue:
        return "/".join(queue), summary
    return ("NOT RUN" if set(counts) <= {"not started"} else "ENDED"), summary


def study_lines(record: Mapping[str, Any], results: Path, job_info: JobInfo) -> list[str]:
    """The lines `make status` prints for one study: one per stage (its state, and for a stage that did
    not or will not run, which stage before it did not succeed)."""
    lines = [f"study {record.get('study_id')} (data {record.get('data')}):"]
    states: dict[str, str] = {}
    for stage in record.get("stages", []):
        records = job_info(stage["job_id"]) if stage.get("job_id") else []
        if stage["kind"] == "sweep":
            state, detail = _sweep_state(stage, results, records)
        else:
            state, detail = _aux_state(stage, records)
        states[stage["name"]] = state
        reasons = {r.get("Reason") for r in records}
        why = None
        if state in ("CANCELLED", "NOT RUN") or "DependencyNeverSatisfied" in reasons:
            blocked = [f"{name} (job {_job_of(record, name)}) ended {states.get(name, '?')}"
                       for name in stage.get("after", ()) if states.get(name) != "COMPLETED"]
            why = f"not run: {'; '.join(blocked)}" if blocked else None
        elif "Dependency" in reasons:
            why = f"waiting for {', '.join(stage.get('after', ())) or 'the jobs it depends on'}"
        text = "; ".join(part for part in (detail, why) if part)
        job_id = stage.get("job_id") or "-"
        lines.append(f"  {stage['name']:<12} job {job_id:<10} {state:<12} {text}".rstrip())
    return lines


def _job_of(record: Mapping[str, Any], name: str) -> str:
    return next((s.get("job_id") or "-" for s in record.get("stages", []) if s["name"] == name), "-")


def show_study(results: Path, job_info: JobInfo | None = None, say: Callable[[str], None] = print) -> bool:
    """Print the latest study's stages (make status); False if there is none."""
    path = latest_study(results)
    if path is None:
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        say(f"study record {path} is not readable JSON")
        return True
    if not isinstance(record, dict):
        say(f"study record {path} is not a study record")
        return True
    say("")
    for line in study_lines(record, results, job_info or slurmjobs.job_records):
        say(line)
    return True


def study_parser_args(parser: argparse.ArgumentParser) -> None:
    """The flags `submit study` adds to a sweep's."""
    parser.add_argument("--raw", help="raw minute bars: preprocess them into --data first (make RAW=)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild --data from --raw even if it exists, and retrain every run (FORCE=1)")
    parser.add_argument("--preprocess-arg", action="append", default=[], dest="preprocess_args",
                        help="one more flag for the preprocessing job (repeatable; make PREPROCESS_ARGS=)")
    parser.add_argument("report_args", nargs="*", metavar="-- REPORT_FLAG",
                        help="after `--`: flags for stockpredict.report (e.g. --network=ib-hdr)")


def run(ns: argparse.Namespace, sweep: SweepPlan) -> None:
    """`submit study`: the parsed flags, the sweep planned by submit.plan_sweep."""
    submit_study(sweep, profile=ns.profile, results=ns.results, data=ns.data, raw=ns.raw, force=ns.force,
                 preprocess_args=ns.preprocess_args, report_args=ns.report_args, array_max=ns.array_max,
                 dry_run=ns.dry_run, after=ns.after, after_kind=ns.after_kind)
