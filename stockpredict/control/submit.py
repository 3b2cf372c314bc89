"""Submit training jobs to Slurm: one run (`train`), a scaling grid (`sweep`), the queue (`status`), logs.

    python -m stockpredict.submit train --nodes 4 --gpus-per-node 1 --data data/processed/sequences.h5
    python -m stockpredict.submit train --nodes 2 --dry-run ...        # render and print, do not submit
    python -m stockpredict.submit sweep --nodes-list "1 2 4" --batch-list "32 64 128 256" --mode strong ...
    python -m stockpredict.submit allreduce --nodes 2 --data data/processed/sequences.h5 [--iterations 200]
    python -m stockpredict.submit preprocess --raw data/raw --out data/processed/sequences.h5
    python -m stockpredict.submit status
    python -m stockpredict.submit logs <run-id>

Every training run gets its own directory `results/runs/<run-id>/`, created atomically (os.mkdir), with
the rendered `job.sbatch`, `submit.json` (the resolved job parameters and the job id), the Slurm output
`slurm-<jobid>.out` and everything the trainer writes there (`--run-dir`): timing.jsonl, checkpoints, model.
The run id reads `<YYYYmmdd-HHMMSS-mmm>-n<nodes>-g<gpus per node>-b<batch per rank>` (then `-tf` for the
tf engine, `--engine tf`).

A sweep is one job array per node count (`submit_train_array`; `--no-array`: one job per run): each task
is a run as above, `results/runs/<array>-b<batch>-t<task>/`, whose job.sbatch and Slurm output live in the
array's folder `results/arrays/<array>/` (the output linked from the run). docs/submission.md has the rest.

A dry run (`--dry-run`, `make submit DRY_RUN=1`) renders without submitting and creates nothing under
`results/runs/` (which holds only real runs, so the report's warnings about unfinished runs mean
something): the printed script is the one a real submission would write, with the run directory it would
use, and a copy is kept in `results/dry-runs/<run-id>/` (job.sbatch, submit.json). A missing data file is
only a warning then, so the script can be read before the data exists.

`allreduce` submits the allreduce microbenchmark (stockpredict/job/allreduce_bench.py) as a run like any
other: the same template, launcher and results/runs/<run-id>/ (`<timestamp>-allreduce-n<nodes>-g<gpus>`),
so `make report` adds it to the scaling model. `--data` sizes the model's gradients as the training runs'.

From Python, `submit_training(...)` runs the same trainer through submitit (Slurm when sbatch is on PATH,
submitit's local executor otherwise) and writes the same kind of run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time as time_module
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from stockpredict.common import rundir
from stockpredict.common.benchmarks import BenchConfig
from stockpredict.common.checkout import ENGINE_VENVS, REPO
from stockpredict.common.errors import UserError, parse_int_list, run_cli
from stockpredict.common.files import write_atomic, write_json_atomic
from stockpredict.common.logs import get_logger
from stockpredict.common.timing import MODES
from stockpredict.common.train_config import TrainConfig, add_train_arguments
from stockpredict.control import slurmjobs
from stockpredict.control.jobscript import (
    ENGINE_LAUNCHERS,
    ArrayTask,
    JobSpec,
    load_profile,
    make_spec,
    render_job,
    validate,
)

log = get_logger("stockpredict.submit")

GPU_CHECK_TIME = "00:15:00"  # the preflight takes a few minutes; a short job starts sooner
DEFAULT_BATCH = TrainConfig.batch_size  # per rank; the seed's baseline
# The trainer flags `submit train` and `submit sweep` take (typed once, in
# stockpredict/common/train_config.py).
TRAIN_FLAGS = ("data", "epochs", "batch_size", "lr", "warmup_epochs", "seed", "max_steps", "engine")


def job_config(config: TrainConfig, run_dir: Path, threads: int,
               stall_timeout: int | None = None) -> TrainConfig:
    """What a job's trainer runs: `config` in `run_dir`, with one thread per allocated CPU, and
    --resume always, so a requeued job continues from its checkpoint. `stall_timeout` (the job's:
    STALL_TIMEOUT=, --stall-timeout or the profile's key) replaces the trainer's default when given."""
    config = dataclasses.replace(config, run_dir=str(run_dir), resume=True, threads=threads)
    if stall_timeout is not None:
        config = dataclasses.replace(config, stall_timeout=stall_timeout)
    return config


_warned_missing: set[str] = set()


def _check_data(data: str, dry_run: bool) -> None:
    """A missing data file stops a submission; a dry run only warns (once per file), so a newcomer can
    read the script before preprocessing."""
    if Path(data).is_file():
        return
    if not dry_run:
        raise UserError(f"data file {data} not found; build it with `make preprocess` (or pass DATA=)")
    if data not in _warned_missing:
        _warned_missing.add(data)
        log.warning("data file %s not found; rendering anyway (dry run). Build it with `make preprocess` "
                    "(or pass DATA=) before submitting", data)


# --- run directories ------------------------------------------------------------------------------

def run_id_for(nodes: int, gpus_per_node: int, batch_size: int, now: datetime | None = None) -> str:
    """`20261126-143012-417-n4-g1-b32`: local time to the millisecond, nodes, GPUs per node, batch/rank."""
    now = now or datetime.now()
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-n{nodes}-g{gpus_per_node}-b{batch_size}"


def _engine_suffix(config: TrainConfig) -> str:
    """`-tf` for the tf engine, nothing for Horovod (its runs keep the names they always had)."""
    return "" if config.engine == TrainConfig.engine else f"-{config.engine}"


def run_suffix(nodes: int, gpus_per_node: int, config: TrainConfig) -> str:
    """`n4-g1-b32`, plus `-tf` for the tf engine."""
    return f"n{nodes}-g{gpus_per_node}-b{config.batch_size}{_engine_suffix(config)}"


def new_run_dir(parent: Path, suffix: str) -> Path:
    """Create `parent/<timestamp>-<suffix>` atomically; a name taken by a concurrent submitter is retried."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        now = datetime.now()
        path = parent / f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{suffix}"
        try:
            os.mkdir(path)  # fails if it exists: two submitters can never share a directory
            return path
        except FileExistsError:
            time_module.sleep(0.001)


# --- building and submitting jobs -------------------------------------------------------------------

def train_spec(profile: str, run_dir: Path, config: TrainConfig, **overrides: Any) -> JobSpec:
    """The JobSpec of one training run: profile defaults, then `overrides` (None values are ignored)."""
    values: dict[str, Any] = dict(load_profile(profile, engine=config.engine))
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["launcher"] = engine_launcher(config.engine, values.get("launcher"), overrides.get("launcher"))
    values.update(kind="train", requeue=True, run_dir=str(run_dir), output=str(run_dir / rundir.SLURM_OUTPUT),
                  job_name=values.get("job_name") or "stockpredict-train")
    cpus = values.get("cpus_per_task", JobSpec.cpus_per_task)
    stall = values.get("stall_timeout")
    if stall is not None and (isinstance(stall, bool) or not isinstance(stall, int) or stall < 0):
        raise UserError(f"stall_timeout (STALL_TIMEOUT=, --stall-timeout or the profile key) must be an "
                        f"integer number of seconds >= 0 (0: off), got {stall!r}"[:300])
    trainer = job_config(config, run_dir, cpus, stall)
    values["command"] = ["python", "-m", "stockpredict.train", *trainer.to_argv()]
    return validate(make_spec(values))


def engine_launcher(engine: str, profile_launcher: str | None, asked: str | None) -> str:
    """The launcher for `engine`: the one asked for (checked), else the profile's if the engine can use
    it, else the engine's default (a Horovod profile's srun-pmix becomes plain srun for the tf engine)."""
    usable = ENGINE_LAUNCHERS[engine]
    if asked is not None:
        if asked not in usable:
            raise UserError(f"launcher {asked!r} cannot start the {engine} engine; use "
                            f"{' or '.join(usable)}")
        return asked
    return profile_launcher if profile_launcher in usable else usable[0]


def _nodes_and_gpus(profile_values: dict[str, Any], overrides: dict[str, Any]) -> tuple[int, int]:
    """The nodes and GPUs per node a job asks for: the overrides', else the profile's, else JobSpec's."""
    nodes = overrides.get("nodes") or profile_values.get("nodes", JobSpec.nodes)
    gpus = overrides.get("gpus_per_node")
    if gpus is None:
        gpus = profile_values.get("gpus_per_node", JobSpec.gpus_per_node)
    return nodes, gpus


@dataclass(frozen=True)
class Submission:
    run_id: str
    run_dir: Path
    job_id: str | None   # None on a dry run
    script: str
    sbatch_args: tuple[str, ...] = ()  # options given to sbatch besides the script (the dependency)


def submit_train(config: TrainConfig, profile: str = "local", results: str | Path = "results",
                 dry_run: bool = False, after: str | Sequence[str] | None = None,
                 after_kind: str = "afterok", **overrides: Any) -> Submission:
    """Render one training job into a fresh run directory and sbatch it (unless `dry_run`: see the module
    docstring for where a dry run keeps its script).

    `config.run_dir`, `resume` and `threads` are set here (see job_config); pass run_dir="".
    """
    config = dataclasses.replace(config, data=str(Path(config.data).resolve()))
    _check_data(config.data, dry_run)
    if not dry_run:
        slurmjobs.require_sbatch()
    sbatch_args = dependency_args(after, after_kind)
    nodes, gpus = _nodes_and_gpus(load_profile(profile), overrides)
    # Validate before creating anything, so bad input leaves no empty run directory behind.
    train_spec(profile, Path("/nonexistent/run"), config, **overrides)
    run_dir, target = _job_dir(results, rundir.RUNS, run_suffix(nodes, gpus, config), dry_run)
    spec = train_spec(profile, target, config, **overrides)
    train = dataclasses.asdict(job_config(config, target, spec.cpus_per_task, spec.stall_timeout))
    return _render_and_submit(spec, run_dir, {"train": train}, sbatch_args, dry_run)


@dataclass(frozen=True)
class ArraySubmission:
    """One job array: its folder results/arrays/<id>/ (job.sbatch, submit.json, the tasks' Slurm output)
    and one Submission per task, whose job_id is `<array id>_<task id>` and run_dir its own run."""

    array_id: str | None   # None on a dry run
    array_dir: Path
    script: str
    tasks: tuple[Submission, ...]
    sbatch_args: tuple[str, ...] = ()


def _shape(config: TrainConfig, nodes: int, gpus: int) -> str:
    """`n2-g0` (then `-tf`): what the tasks of one array share."""
    return f"n{nodes}-g{gpus}{_engine_suffix(config)}"


def submit_train_array(configs: Sequence[TrainConfig], profile: str = "local",
                       results: str | Path = "results", dry_run: bool = False,
                       after: str | Sequence[str] | None = None, after_kind: str = "afterok",
                       array_max: int | None = None, sbatch_extra: Sequence[str] = (),
                       data_pending: bool = False, **overrides: Any) -> ArraySubmission:
    """Submit `configs` (one resource shape: the same nodes, GPUs and engine) as one job array, task i
    training configs[i] in its own run directory results/runs/<array>-b<batch>-t<i>/, with every file a
    run submitted alone has (submit.json, timing.jsonl, checkpoints, and its Slurm output as a link to
    the array's folder). Requeue and resume are per task. A dry run creates nothing under results/runs/.

    `sbatch_extra`: more sbatch options (a study's composed --dependency); `data_pending`: the data file
    is written by a job this array waits for, so its absence now is no error.
    """
    if not configs:
        raise UserError("a job array needs at least one run")
    if len({c.engine for c in configs}) != 1:
        raise UserError("one job array runs one engine; submit each engine's runs as their own array")
    configs = [dataclasses.replace(c, data=str(Path(c.data).resolve())) for c in configs]
    for data in sorted({c.data for c in configs}):
        _check_data(data, dry_run or data_pending)
    if not dry_run:
        slurmjobs.require_sbatch()
    sbatch_args = [*dependency_args(after, after_kind), *sbatch_extra]
    profile_values = load_profile(profile)
    nodes, gpus = _nodes_and_gpus(profile_values, overrides)
    if array_max is None:
        array_max = profile_values.get("array_max")
    for config in configs:  # bad input: nothing created
        train_spec(profile, Path("/nonexistent/run"), config, **overrides)
    root = Path(results).resolve()
    if not dry_run:
        (root / rundir.RUNS).mkdir(parents=True, exist_ok=True)
    array_dir, _ = _job_dir(results, rundir.ARRAYS, _shape(configs[0], nodes, gpus), dry_run)
    made: list[Path] = []
    array_id = None
    try:
        specs, records = [], []
        for index, config in enumerate(configs):
            task_dir = root / rundir.RUNS / f"{array_dir.name}-b{config.batch_size}-t{index}"
            if not dry_run:
                os.mkdir(task_dir)  # unique: the array's folder name is (new_run_dir made it)
                made.append(task_dir)
            spec = train_spec(profile, task_dir, config, **overrides)
            specs.append(spec)
            records.append(dataclasses.asdict(job_config(config, task_dir, spec.cpus_per_task,
                                                         spec.stall_timeout)))
        target = root / rundir.ARRAYS / array_dir.name
        array_spec = validate(dataclasses.replace(
            specs[0], run_dir=str(target), command=(), output=str(target / rundir.ARRAY_OUTPUT),
            array_tasks=tuple(ArrayTask(s.run_dir, s.command) for s in specs), array_max=array_max))
        script = render_job(array_spec)
        write_atomic(array_dir / rundir.JOB_SCRIPT, script)
        if not dry_run:
            array_id = slurmjobs.sbatch(array_dir / rundir.JOB_SCRIPT, sbatch_args, cwd=array_dir)
        tasks = []
        for index, (spec, train) in enumerate(zip(specs, records)):
            task_dir = Path(spec.run_dir)
            job_id = f"{array_id}_{index}" if array_id else None
            if job_id:  # the task's Slurm output, where a run's output is; it appears when the task starts
                output = array_dir / f"slurm-{job_id}.out"
                os.symlink(os.path.relpath(output, task_dir), task_dir / f"slurm-{job_id}.out")
                job = dataclasses.asdict(dataclasses.replace(spec, output=array_spec.output))  # Slurm's path
                record = {"run_id": task_dir.name, "job": job, "train": train,
                          "sbatch_args": sbatch_args, "job_id": job_id, "dry_run": False,
                          "array": {"job_id": array_id, "task": index, "dir": str(array_dir)}}
                write_json_atomic(task_dir / rundir.SUBMIT_RECORD, record)
            tasks.append(Submission(run_id=task_dir.name, run_dir=task_dir, job_id=job_id, script=script,
                                    sbatch_args=tuple(sbatch_args)))
        record = {"array_id": array_id, "job": dataclasses.asdict(array_spec), "sbatch_args": sbatch_args,
                  "tasks": [t.run_id for t in tasks], "dry_run": dry_run}
        write_json_atomic(array_dir / rundir.SUBMIT_RECORD, record)
    except BaseException:
        # Nothing was queued: leave nothing that looks like a run. (Once queued, the tasks need their
        # directories: a failure to write a record then leaves them, and the error says what failed.)
        if array_id is None:
            for path in [*made, array_dir]:
                shutil.rmtree(path, ignore_errors=True)
        raise
    return ArraySubmission(array_id=array_id, array_dir=array_dir, script=script, tasks=tuple(tasks),
                           sbatch_args=tuple(sbatch_args))


def allreduce_spec(profile: str, run_dir: Path, bench: BenchConfig, **overrides: Any) -> JobSpec:
    """The JobSpec of one allreduce benchmark run: like train_spec, but kind allreduce, not requeued
    (a benchmark has nothing to resume), and the benchmark's --threads from the CPUs per task."""
    values: dict[str, Any] = dict(load_profile(profile))
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.update(kind="allreduce", requeue=False, run_dir=str(run_dir),
                  output=str(run_dir / rundir.SLURM_OUTPUT),
                  job_name=values.get("job_name") or "stockpredict-allreduce")
    cpus = values.get("cpus_per_task", JobSpec.cpus_per_task)
    argv = ["--run-dir", str(run_dir), "--iterations", str(bench.iterations), "--epochs", str(bench.epochs)]
    argv += ["--data", bench.data] if bench.data is not None else ["--n-features", str(bench.n_features)]
    values["command"] = ["python", "-m", "stockpredict.allreduce_bench", *argv, "--threads", str(cpus)]
    return validate(make_spec(values))


def submit_allreduce(bench: BenchConfig, profile: str = "local", results: str | Path = "results",
                     dry_run: bool = False, after: str | Sequence[str] | None = None,
                     after_kind: str = "afterok", **overrides: Any) -> Submission:
    """Render the allreduce microbenchmark into a fresh run directory under results/runs/ and sbatch it
    (a dry run as for submit_train). `bench.run_dir` is set here; pass run_dir=""."""
    if bench.data is not None:
        bench = dataclasses.replace(bench, data=str(Path(bench.data).resolve()))
        _check_data(bench.data, dry_run)
    if not dry_run:
        slurmjobs.require_sbatch()
    sbatch_args = dependency_args(after, after_kind)
    profile_values = load_profile(profile)
    nodes, gpus = _nodes_and_gpus(profile_values, overrides)
    allreduce_spec(profile, Path("/nonexistent/run"), bench, **overrides)  # bad input: no directory made
    run_dir, target = _job_dir(results, rundir.RUNS, f"allreduce-n{nodes}-g{gpus}", dry_run)
    spec = allreduce_spec(profile, target, bench, **overrides)
    record = dataclasses.asdict(dataclasses.replace(bench, run_dir=str(target), threads=spec.cpus_per_task))
    return _render_and_submit(spec, run_dir, {"allreduce": record}, sbatch_args, dry_run)


def _job_dir(results: str | Path, subdir: str, suffix: str, dry_run: bool) -> tuple[Path, Path]:
    """(directory created for the script and record, directory the job runs in). The same for a real
    submission; a dry run keeps its files under dry-runs/ and renders the path a real run would get."""
    root = Path(results).resolve()
    made = new_run_dir(root / (rundir.DRY_RUNS if dry_run else subdir), suffix)
    return made, root / subdir / made.name


def submit_aux(kind: str, command: list[str], profile: str = "local", results: str | Path = "results",
               dry_run: bool = False, after: str | Sequence[str] | None = None,
               after_kind: str = "afterok", engine: str = "horovod", sbatch_extra: Sequence[str] = (),
               **overrides: Any) -> Submission:
    """Render and submit a one-process preprocess, report or gpu-check job into results/jobs/<id>/
    (`engine` picks the environment `{venv}` names in the profile's setup lines; `sbatch_extra`: more
    sbatch options, e.g. a study's composed --dependency)."""
    if not dry_run:
        slurmjobs.require_sbatch()
    sbatch_args = [*dependency_args(after, after_kind), *sbatch_extra]
    values: dict[str, Any] = dict(load_profile(profile, engine=engine))
    values.update({k: v for k, v in overrides.items() if v is not None})
    # gpu-check keeps the profile's (or GPUS=) GPUs: it checks them; the others need none.
    gpus = values.get("gpus_per_node", 0) if kind == "gpu-check" else 0
    if kind == "gpu-check" and not gpus:
        raise UserError("gpu-check needs a GPU node: pass GPUS=1 (GPUS=2 also times a 2-GPU allreduce) or "
                        "use a profile with gpus_per_node")
    if kind == "gpu-check" and "time" not in overrides:
        values["time"] = GPU_CHECK_TIME
    values.update(kind=kind, nodes=1, tasks_per_node=1, gpus_per_node=gpus, launcher="none",
                  job_name=f"stockpredict-{kind}", command=["python", "-m", *command])
    validate(make_spec(dict(values, output="/nonexistent/x")))
    job_dir, target = _job_dir(results, rundir.JOBS, kind, dry_run)
    spec = validate(make_spec(dict(values, output=str(target / rundir.SLURM_OUTPUT))))
    return _render_and_submit(spec, job_dir, {}, sbatch_args, dry_run)


# How a job waits for the ones named by --after (make AFTER=<id>[:<id>...] AFTER_KIND=): Slurm's
# dependency types. afterok: all of them completed successfully; afterany: all of them ended, however;
# afternotok: all of them failed (a clean-up or a rerun with other settings).
AFTER_KINDS = ("afterok", "afterany", "afternotok")
_JOB_ID_RE = re.compile(r"^\d+(_\d+)?$")  # a job, or one task of an array (41_3)


def dependency_ids(after: str | Sequence[str] | None) -> list[str]:
    """"41:42" (or "41 42", "41,42", or a list) -> ["41", "42"]; a one-line UserError for anything that
    is not a Slurm job id or array task id."""
    if after is None:
        return []
    words = [after] if isinstance(after, str) else list(after)
    ids = [part for word in words for part in re.split(r"[:,\s]+", str(word).strip()) if part]
    bad = [part for part in ids if not _JOB_ID_RE.match(part)]
    if bad or not ids:
        raise UserError(f"AFTER (--after) wants Slurm job ids separated by ':', e.g. 41:42 or 41_3, got "
                        f"{after!r}")
    return ids


def dependency_args(after: str | Sequence[str] | None, kind: str = "afterok") -> list[str]:
    """The sbatch option that makes a job wait for `after`: `--dependency=<kind>:<id>[:<id>...]`."""
    if kind not in AFTER_KINDS:
        raise UserError(f"AFTER_KIND (--after-kind) must be one of {', '.join(AFTER_KINDS)}, got {kind!r}")
    ids = dependency_ids(after)
    return [f"--dependency={kind}:{':'.join(ids)}"] if ids else []


def _render_and_submit(spec: JobSpec, run_dir: Path, extra: dict, sbatch_args: list[str],
                       dry_run: bool) -> Submission:
    try:
        script = render_job(spec)
        script_path = run_dir / rundir.JOB_SCRIPT
        write_atomic(script_path, script)
        record = {"run_id": run_dir.name, "job": dataclasses.asdict(spec), **extra,
                  "sbatch_args": sbatch_args, "job_id": None, "dry_run": dry_run}
        job_id = None
        if not dry_run:
            # Submitted from the run directory: that is the job's working directory.
            job_id = slurmjobs.sbatch(script_path, sbatch_args, cwd=run_dir)
            record["job_id"] = job_id
        write_json_atomic(run_dir / rundir.SUBMIT_RECORD, record)
    except BaseException:
        # Nothing was queued: leave no directory that looks like a run.
        if not (run_dir / rundir.SUBMIT_RECORD).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return Submission(run_id=run_dir.name, run_dir=run_dir, job_id=job_id, script=script,
                      sbatch_args=tuple(sbatch_args))


def _announce(sub: Submission) -> None:
    if sub.job_id is None:
        print(sub.script, end="")
        print(f"dry run: nothing submitted; script kept in {sub.run_dir / rundir.JOB_SCRIPT}; "
              f"to submit, run the same command without the dry run")
        if sub.sbatch_args:
            print(f"it would be submitted with: sbatch {' '.join(sub.sbatch_args)}")
        return
    # This first line is a contract: it is exactly what sbatch prints, so scripts can parse the job id.
    print(f"Submitted batch job {sub.job_id}")
    print(f"run {sub.run_id}: Slurm log {sub.run_dir / f'slurm-{sub.job_id}.out'}, "
          f"timing {sub.run_dir / rundir.TIMING_LOG}")


# --- sweeps -----------------------------------------------------------------------------------------

def sweep_grid(nodes_list: Sequence[int], batch_list: Sequence[int], mode: str, ranks_per_node: int,
               repeats: int = 1) -> list[dict[str, int | str]]:
    """The runs of a scaling sweep, each {nodes, ranks, batch_per_rank, global_batch, repeat, mode}.

    strong: the BATCH_LIST value is the global batch, split evenly over the ranks (must divide);
    weak: the BATCH_LIST value is the per-rank batch, so the global batch grows with the ranks.
    """
    if mode not in MODES:
        raise UserError(f"mode must be strong or weak, got {mode!r}")
    if repeats < 1:
        raise UserError(f"repeats must be >= 1, got {repeats}")
    grid = []
    for nodes in nodes_list:
        ranks = nodes * ranks_per_node
        for batch in batch_list:
            if nodes < 1 or batch < 1:
                raise UserError(f"nodes and batch sizes must be >= 1, got nodes={nodes} batch={batch}")
            if mode == "strong" and batch % ranks:
                raise UserError(f"strong scaling keeps the global batch {batch} fixed, but it does not "
                                f"divide evenly over {ranks} ranks ({nodes} nodes); pick batch sizes "
                                f"divisible by every rank count")
            per_rank = batch // ranks if mode == "strong" else batch
            for repeat in range(1, repeats + 1):
                grid.append({"nodes": nodes, "ranks": ranks, "batch_per_rank": per_rank,
                             "global_batch": per_rank * ranks, "repeat": repeat, "mode": mode})
    return grid


# --- status and logs --------------------------------------------------------------------------------

def _runs_by_job(results: Path) -> dict[str, str]:
    """{job id: run id} of every submission recorded under results/runs/ and results/jobs/."""
    found = {}
    for sub in (rundir.RUNS, rundir.JOBS):
        for record in (results / sub).glob(f"*/{rundir.SUBMIT_RECORD}"):
            try:
                job_id = json.loads(record.read_text()).get("job_id")
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
            if job_id:
                found[str(job_id)] = record.parent.name
    for record in (results / rundir.ARRAYS).glob(f"*/{rundir.SUBMIT_RECORD}"):  # a pending array: A_[0-3]
        try:
            array_id = json.loads(record.read_text()).get("array_id")
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if array_id:
            found.setdefault(str(array_id), f"{rundir.ARRAYS}/{record.parent.name}")
    return found


def _run_of(job_id: str, runs: dict[str, str]) -> str | None:
    """The run (or array) a squeue job id belongs to: an array task `41_3` is its own run, a pending
    rest of an array `41_[4-7%2]` the array, a heterogeneous job's part `41+0` job 41."""
    return runs.get(job_id) or runs.get(re.split(r"[_+]", job_id)[0])


SQUEUE_FORMAT = "%i|%j|%T|%M|%D|%R"  # job id | name | state | elapsed | nodes | reason or node list


def status_rows(squeue_out: str, runs: dict[str, str]) -> list[tuple[str, str, str, str, str, str]]:
    """This toolkit's lines of `squeue -h -o SQUEUE_FORMAT`: jobs whose id a run directory records (so a
    custom --job-name shows too), plus jobs named stockpredict* (e.g. submitted with another RESULTS).

    Array and heterogeneous job ids (`41_3`, `41+0`) match the recorded id `41`. A name may contain '|'.
    """
    rows = []
    for line in squeue_out.splitlines():
        fields = line.split("|")
        if len(fields) < 6:
            continue
        job_id, name = fields[0], "|".join(fields[1:-4])
        if _run_of(job_id, runs) or name.startswith("stockpredict"):
            rows.append((job_id, name, *fields[-4:]))
    return rows


def sacct_status_rows(records: list[dict[str, str]], runs: dict[str, str]) -> list[tuple[str, ...]]:
    """This toolkit's jobs among sacct records (same rule as status_rows): (job id, name, state, elapsed,
    nodes, exit code, node list or, while pending, the reason)."""
    rows = []
    for r in records:
        job_id, name = r.get("JobID", ""), r.get("JobName", "")
        if not (_run_of(job_id, runs) or name.startswith("stockpredict")):
            continue
        state = r.get("State", "").split(" ")[0]  # "CANCELLED by 0" -> CANCELLED
        where = f"({r.get('Reason', '')})" if state == "PENDING" else r.get("NodeList", "")
        rows.append((job_id, name, state, r.get("Elapsed", ""), r.get("NNodes", ""), r.get("ExitCode", ""),
                     where))
    return rows


def _queue_rows(runs: dict[str, str], required: bool) -> list[tuple[str, ...]]:
    """This toolkit's jobs in `squeue`, with exit code "-"; [] without squeue unless `required`."""
    if shutil.which("squeue") is None:
        if not required:
            return []
        raise UserError("squeue is not on PATH: start the local cluster with `make cluster-up` or load Slurm")
    # -r: one line per array task (a task is a run), instead of one line for all pending tasks
    proc = subprocess.run(["squeue", "-h", "-r", "-o", SQUEUE_FORMAT], capture_output=True, text=True)
    if proc.returncode != 0:
        if not required:
            return []
        raise UserError(f"squeue failed: {' '.join(proc.stderr.split())}")
    return [(job_id, name, state, elapsed, nodes, "-", reason)
            for job_id, name, state, elapsed, nodes, reason in status_rows(proc.stdout, runs)]


def show_status(results: Path) -> int:
    runs = _runs_by_job(results)
    records = slurmjobs.sacct_jobs()
    if records is not None:
        print("jobs of the last 7 days from sacct (accounting): queued, running and finished")
        rows = sacct_status_rows(records, runs)
        # A job submitted a moment ago may not have reached slurmdbd yet: the queue adds it.
        known = {row[0] for row in rows}
        rows += [row for row in _queue_rows(runs, required=False) if row[0] not in known]
    else:
        rows = _queue_rows(runs, required=True)
        print("jobs from the queue only (no accounting, so no sacct): finished jobs are not listed")
    print(f"{'JOBID':>10}  {'STATE':<10} {'TIME':>10} {'NODES':>5}  {'NAME':<22} {'RUN':<40} {'EXIT':<6} "
          "REASON/NODES")
    for job_id, name, state, elapsed, nodes, exit_code, where in rows:
        run = _run_of(job_id, runs) or "-"
        print(f"{job_id:>10}  {state:<10} {elapsed:>10} {nodes:>5}  {name:<22} {run:<40} {exit_code:<6} "
              f"{where}")
    if not rows:
        print("(no stockpredict jobs " + ("in accounting)" if records is not None else "in the queue)"))
    from stockpredict.control import study  # the latest study's stages, and why one did not run

    study.show_study(results)
    return 0


def show_logs(results: Path, run_id: str | None, tail_lines: int = 40) -> int:
    if run_id and "/" not in run_id and (results / rundir.ARRAYS / run_id).is_dir():  # every task's logs
        record = results / rundir.ARRAYS / run_id / rundir.SUBMIT_RECORD
        try:
            tasks = json.loads(record.read_text()).get("tasks") or []
        except (OSError, json.JSONDecodeError, AttributeError):
            raise UserError(f"{record} is missing or not JSON: cannot tell this array's runs") from None
        for task in tasks:
            show_logs(results, str(task), tail_lines)
        return 0
    candidates = [results / rundir.RUNS / run_id, results / rundir.JOBS / run_id] if run_id else []
    run_dir = next((p for p in candidates if p.is_dir() and "/" not in run_id), None)
    if run_dir is None:
        recent = sorted((p.name for p in (results / rundir.RUNS).glob("*") if p.is_dir()), reverse=True)[:5]
        hint = f"; recent runs: {', '.join(recent)}" if recent else ""
        raise UserError(f"no run {run_id!r} under {results / rundir.RUNS} (use make logs RUN=<run-id>){hint}")
    for path in sorted(run_dir.glob(rundir.SLURM_OUTPUT_GLOB)) + [run_dir / rundir.TRAIN_LOG]:
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            print(f"==> {path} (last {min(tail_lines, len(lines))} of {len(lines)} lines) <==")
            print("\n".join(lines[-tail_lines:]))
    return 0


# --- Python API on submitit -------------------------------------------------------------------------

def _minutes(slurm_time: str) -> int:
    """Slurm time string -> whole minutes (rounded up), for submitit's timeout_min."""
    days, _, rest = slurm_time.rpartition("-") if "-" in slurm_time else ("0", "", slurm_time)
    parts = [int(p) for p in rest.split(":")]
    if "-" in slurm_time:  # D-H, D-H:M, D-H:M:S
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, s = parts
    else:                  # M or M:S
        h, m, s = 0, parts[0], (parts + [0])[1]
    return int(days) * 1440 + h * 60 + m + (1 if s else 0)


def _import_submitit():
    import submitit

    class TrainerCall(submitit.helpers.Checkpointable):
        """Runs the trainer in each task. On submitit's preemption signal, the default checkpoint()
        resubmits the same call; its argv has --resume, so the trainer continues from its last checkpoint."""

        def __call__(self, argv: list[str]) -> int:
            from stockpredict.job import train

            status = int(train.main(argv) or 0)
            if status != 0:
                raise RuntimeError(f"trainer exited with status {status}")
            return status

    return submitit, TrainerCall


def submit_training(*, data: str, nodes: int = 1, gpus_per_node: int = 0, epochs: int | None = None,
                    batch_size: int = DEFAULT_BATCH, profile: str = "local", results: str | Path = "results",
                    time: str | None = None, mode: str | None = None, lr: float | None = None,
                    seed: int | None = None, warmup_epochs: float | None = None, cluster: str | None = None,
                    config: TrainConfig | None = None, engine: str | None = None, **overrides: Any):
    """Submit one training run with submitit and return its `submitit.Job` (one result per rank).

    Slurm when sbatch is on PATH (srun --mpi=pmix, the profile's partition and setup lines), submitit's
    local executor otherwise (one task; nodes must then be 1). `cluster` forces "slurm", "local" or
    "debug". The run directory `results/runs/<run-id>/` gets the trainer's outputs, `submit.json`, and
    submitit's own logs in `submitit/`. `time` is a Slurm time limit (minutes are rounded up).
    `config` (a TrainConfig) sets any other trainer field; the keyword arguments given win over it.
    `engine="tf"` runs tf.distribute workers under plain srun, in the checkout's .venv-tf (make setup
    ENGINE=tf), which must have submitit too; the default is Horovod in the calling interpreter.
    """
    submitit, TrainerCall = _import_submitit()
    given = dict(epochs=epochs, lr=lr, seed=seed, mode=mode, warmup_epochs=warmup_epochs, engine=engine)
    base = config or TrainConfig(data=data, run_dir="")
    config = dataclasses.replace(base, data=str(Path(data).resolve()), batch_size=batch_size,
                                 **{k: v for k, v in given.items() if v is not None})
    _check_data(config.data, dry_run=False)
    spec = train_spec(profile, Path("/nonexistent/run"), config, nodes=nodes, gpus_per_node=gpus_per_node,
                      time=time, **overrides)
    executor = submitit.AutoExecutor(folder="/nonexistent", cluster=cluster)
    if executor.cluster != "slurm" and spec.ranks != 1:
        raise UserError(f"submitit's {executor.cluster} executor runs one task; asked for {spec.ranks} ranks "
                        f"(start the cluster with `make cluster-up` for multi-rank runs)")
    run_dir = new_run_dir(Path(results).resolve() / rundir.RUNS, run_suffix(nodes, gpus_per_node, config))
    spec = train_spec(profile, run_dir, config, nodes=nodes, gpus_per_node=gpus_per_node, time=time,
                      **overrides)
    executor = submitit.AutoExecutor(folder=run_dir / rundir.SUBMITIT, cluster=cluster,
                                     **_engine_python(config.engine, executor.cluster))
    launcher = {"srun-pmix": ["--mpi=pmix"], "srun-pmi2": ["--mpi=pmi2"], "srun": []}.get(spec.launcher)
    if launcher is None:
        raise UserError(f"submitit starts ranks with srun; launcher {spec.launcher!r} is not supported here")
    params: dict[str, Any] = dict(name=spec.job_name, nodes=spec.nodes, tasks_per_node=spec.ranks_per_node,
                                  cpus_per_task=spec.cpus_per_task, timeout_min=_minutes(spec.time),
                                  slurm_srun_args=[*launcher, "--kill-on-bad-exit=1"],
                                  slurm_setup=list(spec.setup))
    if spec.gpus_per_node:
        params["gpus_per_node"] = spec.gpus_per_node
    for key in ("partition", "account", "qos", "constraint", "mem"):
        if getattr(spec, key) is not None:
            params[f"slurm_{key}"] = getattr(spec, key)
    executor.update_parameters(**params)
    trainer = job_config(config, run_dir, spec.cpus_per_task, spec.stall_timeout)
    job = executor.submit(TrainerCall(), trainer.to_argv())
    record = {"run_id": run_dir.name, "job": dataclasses.asdict(spec), "train": dataclasses.asdict(trainer),
              "job_id": str(job.job_id), "submitit": {"cluster": executor.cluster, "parameters": params}}
    write_json_atomic(run_dir / rundir.SUBMIT_RECORD, record)
    log.info("submitted run %s as job %s (%s)", run_dir.name, job.job_id, executor.cluster)
    return job


def _engine_python(engine: str, cluster: str) -> dict[str, str]:
    """submitit's slurm_python for `engine`: the engine's environment in this checkout, unless this
    interpreter already is it (or the job does not run on Slurm)."""
    python = REPO / ENGINE_VENVS[engine] / "bin" / "python"
    if cluster != "slurm" or Path(sys.prefix).resolve() == python.parent.parent.resolve():
        return {}
    if not python.exists():
        raise UserError(f"engine {engine!r} runs in {python.parent.parent}; build it with "
                        f"`make setup ENGINE={engine}`")
    return {"slurm_python": str(python)}


# --- command line -----------------------------------------------------------------------------------

def _add_job_flags(parser: argparse.ArgumentParser, train: bool) -> None:
    parser.add_argument("--profile", default="local",
                        help="slurm/profiles/<name>.toml, or a path (default: local)")
    parser.add_argument("--time", help="time limit, e.g. 00:30:00 (default: the profile's)")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--qos")
    parser.add_argument("--constraint")
    parser.add_argument("--mem", help="memory per node, e.g. 32G")
    parser.add_argument("--cpus-per-task", type=int)
    parser.add_argument("--extra-directive", action="append", dest="extra_directives",
                        help="extra #SBATCH option, e.g. --extra-directive=--exclusive (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="render and print the script, do not submit")
    parser.add_argument("--results", default="results", help="results root (runs go in RESULTS/runs/)")
    parser.add_argument("--after", help="start only after these Slurm job ids, e.g. 41 or 41:42 (AFTER=)")
    # Checked by dependency_args (a one-line error), not by argparse's choices (usage text first).
    parser.add_argument("--after-kind", default="afterok",
                        help="afterok (default: all succeeded), afterany (all ended), afternotok (all "
                             "failed)")
    if train:
        _add_rank_flags(parser)
        parser.add_argument("--signal-seconds", type=int,
                            help="send the requeue signal this long before the time limit")
        parser.add_argument("--stall-timeout", type=int,
                            help="end the job when a rank stopped answering and no step ran for this many "
                                 "seconds (STALL_TIMEOUT=; default: the profile's stall_timeout, else 300; "
                                 "0: off)")
        parser.add_argument("--requeue-signal", help="the time-limit warning: USR2 (default) or USR1 "
                                                     "(make SIGNAL=; docs/training.md says why USR2)")
        # Unset trainer flags stay out of the namespace: TrainConfig's defaults apply.
        add_train_arguments(parser, TRAIN_FLAGS, suppress_defaults=True)
        parser.add_argument("--timeline", action="store_true",
                            help="record a Horovod timeline in the run directory (step-time breakdown)")


def _add_rank_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of jobs that run ranks in a run directory (train, sweep, allreduce)."""
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--gpus-per-node", type=int, help="0 = CPU only")
    parser.add_argument("--tasks-per-node", type=int, help="default: one per GPU, or 1 on CPU")
    parser.add_argument("--launcher", help="srun-pmix (default), srun-pmi2, mpirun, horovodrun-gloo")
    parser.add_argument("--job-name")


_SPEC_FLAGS = ("time", "partition", "account", "qos", "constraint", "mem", "cpus_per_task", "nodes",
               "gpus_per_node", "tasks_per_node", "launcher", "signal_seconds", "job_name",
               "extra_directives", "timeline", "requeue_signal", "stall_timeout")


def _overrides(ns: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(ns, k) for k in _SPEC_FLAGS if getattr(ns, k, None) is not None}


def _train_args(ns: argparse.Namespace, batch_size: int | None = None,
                mode: str | None = None) -> TrainConfig:
    """The TrainConfig of the trainer flags given on the command line (run_dir is set per run)."""
    values = {name: getattr(ns, name) for name in TRAIN_FLAGS if hasattr(ns, name)}
    if batch_size is not None:
        values["batch_size"] = batch_size
    if mode is not None:
        values["mode"] = mode
    return TrainConfig.from_mapping(dict(values, run_dir=""))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m stockpredict.submit` and `stockpredict-submit`."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="stockpredict-submit", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_job_flags(commands.add_parser("train", help="render and submit one training run"), train=True)
    sweep = commands.add_parser("sweep", help="submit a scaling grid of training runs")
    _add_job_flags(sweep, train=True)
    _add_sweep_flags(sweep)
    sweep.add_argument("--no-array", dest="array", action="store_false",
                       help="one job per run instead of one job array per node count (make ARRAY=0)")
    bench = commands.add_parser("allreduce", help="submit the allreduce microbenchmark as a run")
    _add_job_flags(bench, train=False)
    _add_rank_flags(bench)
    bench.add_argument("--data", help="sequences file: the model's gradients are sized by its features "
                                      "(default: the seed's 2 features)")
    bench.add_argument("--iterations", type=int, default=BenchConfig.iterations,
                       help="allreduces per epoch (default %(default)s)")
    bench.add_argument("--epochs", type=int, default=BenchConfig.epochs,
                       help="epochs; the first is warm-up (default %(default)s)")
    prep = commands.add_parser("preprocess", help="submit preprocessing as a one-process job")
    _add_job_flags(prep, train=False)
    prep.add_argument("--raw", required=True)
    prep.add_argument("--out", required=True)
    report = commands.add_parser("report", help="submit the report as a one-process job")
    _add_job_flags(report, train=False)
    report.add_argument("--runs", required=True)
    report.add_argument("--out", required=True)
    report.add_argument("report_args", nargs="*", metavar="-- REPORT_FLAG",
                        help="after `--`: flags for stockpredict.report (e.g. --dataset=... --network=...)")
    gpu_check = commands.add_parser("gpu-check", help="submit the GPU preflight of both engines (1 node)")
    _add_job_flags(gpu_check, train=False)
    gpu_check.add_argument("--gpus-per-node", type=int, help="default: the profile's")
    gpu_check.add_argument("--engine", choices=tuple(ENGINE_VENVS), default="horovod",
                           help="whose environment the job activates (default horovod: .venv)")
    study = commands.add_parser("study", help="preprocess (with --raw), the sweep's arrays, then the report, "
                                              "as one chain of jobs")
    _add_job_flags(study, train=True)
    _add_sweep_flags(study)
    from stockpredict.control import study as study_module  # it builds on this module's submissions

    study_module.study_parser_args(study)
    status = commands.add_parser("status", help="this toolkit's jobs in the queue")
    status.add_argument("--results", default="results")
    logs = commands.add_parser("logs", help="a run's Slurm output and training log")
    logs.add_argument("run_id", nargs="?")
    logs.add_argument("--results", default="results")
    ns = parser.parse_args(argv)

    if ns.command == "status":
        return show_status(Path(ns.results))
    if ns.command == "logs":
        return show_logs(Path(ns.results), ns.run_id)
    common = dict(profile=ns.profile, results=ns.results, dry_run=ns.dry_run, after=ns.after,
                  after_kind=ns.after_kind)
    if ns.command == "train":
        _announce(submit_train(_train_args(ns), **common, **_overrides(ns)))
    elif ns.command == "gpu-check":
        _announce(submit_aux("gpu-check", ["stockpredict.gpucheck"], engine=ns.engine, **common,
                             **_overrides(ns)))
    elif ns.command == "sweep":
        _run_sweep(ns, common)
    elif ns.command == "study":
        study_module.run(ns, plan_sweep(ns, data_pending=True))  # the study checks DATA (or RAW) itself
    elif ns.command == "allreduce":
        bench = BenchConfig(run_dir="", iterations=ns.iterations, epochs=ns.epochs, data=ns.data)
        _announce(submit_allreduce(bench, **common, **_overrides(ns)))
    else:
        given = (ns.raw, ns.out) if ns.command == "preprocess" else (ns.runs, ns.out)
        paths = [str(Path(p).resolve()) for p in given]
        command = (["preprocess", "--raw", paths[0], "--out", paths[1]] if ns.command == "preprocess"
                   else ["stockpredict.report", "--runs", paths[0], "--out", paths[1], *ns.report_args])
        _announce(submit_aux(ns.command, command, **common, **_overrides(ns)))
    return 0


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's runs, checked: grid[i] (nodes, ranks, batches, repeat, mode) is trained by configs[i]
    with the job overrides plus nodes=grid[i]["nodes"]."""

    grid: list[dict[str, int | str]]
    configs: list[TrainConfig]
    overrides: dict[str, Any]


def plan_sweep(ns: argparse.Namespace, data_pending: bool = False) -> SweepPlan:
    """The sweep of parsed sweep flags, every run validated before anything is submitted, so a bad value
    never leaves half a sweep (`data_pending`: the data file is made by a job the sweep waits for)."""
    overrides = _overrides(ns)
    profile = load_profile(ns.profile)
    _, gpus = _nodes_and_gpus(profile, overrides)
    tasks = overrides.get("tasks_per_node", profile.get("tasks_per_node"))
    ranks_per_node = JobSpec(gpus_per_node=gpus, tasks_per_node=tasks).ranks_per_node
    grid = sweep_grid(parse_int_list(ns.nodes_list, "NODES_LIST"),
                      parse_int_list(ns.batch_list, "BATCH_LIST"), ns.mode, ranks_per_node, ns.repeats)
    if ns.array_max is not None and ns.array_max < 1:
        raise UserError(f"ARRAY_MAX (--array-max) must be >= 1, got {ns.array_max}")
    _check_data(str(Path(ns.data).resolve()), ns.dry_run or data_pending)
    configs = [_train_args(ns, batch_size=int(run["batch_per_rank"]), mode=ns.mode) for run in grid]
    for run, config in zip(grid, configs):
        train_spec(ns.profile, Path("/nonexistent/run"), config, **dict(overrides, nodes=run["nodes"]))
    return SweepPlan(grid, configs, overrides)


SWEEP_HEADER = (f"{'job_id':>10}  {'run_id':<40} {'nodes':>5} {'ranks':>5} {'batch/rank':>10} "
                f"{'global':>7} {'repeat':>6}  mode")


def sweep_row(job_id: str | None, run_id: str, run: dict[str, int | str]) -> str:
    """One run's line under SWEEP_HEADER."""
    return (f"{job_id or 'dry-run':>10}  {run_id:<40} {run['nodes']:>5} {run['ranks']:>5} "
            f"{run['batch_per_rank']:>10} {run['global_batch']:>7} {run['repeat']:>6}  {run['mode']}")


def _add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes-list", default="1 2 4")
    parser.add_argument("--batch-list", default="32 64 128 256")
    parser.add_argument("--mode", default="strong", choices=MODES)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--array-max", type=int,
                        help="at most this many tasks of each job array run at once (%%K; make ARRAY_MAX=)")


def _run_sweep(ns: argparse.Namespace, common: dict[str, Any]) -> None:
    plan = plan_sweep(ns)
    grid, configs, overrides = plan.grid, plan.configs, plan.overrides
    header, row = SWEEP_HEADER, sweep_row
    if not ns.array:  # one job per run, as before job arrays
        print(header)
        for run, config in zip(grid, configs):
            sub = submit_train(config, **common, **dict(overrides, nodes=run["nodes"]))
            print(row(sub.job_id, sub.run_id, run), flush=True)
        where = rundir.DRY_RUNS if ns.dry_run else rundir.RUNS
        print(f"{'dry run: nothing submitted; ' if ns.dry_run else ''}{len(grid)} jobs, one per run, under "
              f"{Path(ns.results).resolve() / where}; follow them with `make status`")
        return
    # One job array per node count (an array's tasks share one resource request): a task per (batch, repeat).
    shapes: dict[int, list[int]] = {}
    for index, run in enumerate(grid):
        shapes.setdefault(int(run["nodes"]), []).append(index)
    arrays = []
    for nodes, members in shapes.items():
        sub = submit_train_array([configs[i] for i in members], array_max=ns.array_max, **common,
                                 **dict(overrides, nodes=nodes))
        arrays.append(sub)
        if sub.array_id is not None:
            print(f"Submitted batch job {sub.array_id}", flush=True)  # the contract line, one per array
        else:
            print(sub.script, end="")
    print(header)
    for sub, members in zip(arrays, shapes.values()):
        for task, index in zip(sub.tasks, members):
            print(row(task.job_id, task.run_id, grid[index]))
    if ns.dry_run:
        print(f"dry run: nothing submitted; the {len(arrays)} array scripts are kept under "
              f"{Path(ns.results).resolve() / rundir.DRY_RUNS}/<array id>/")
        return
    cap = f", at most {ns.array_max} running at once per array" if ns.array_max else ""
    print(f"{len(arrays)} job array(s) ({', '.join(a.array_id for a in arrays)}) of {len(grid)} runs under "
          f"{Path(ns.results).resolve() / rundir.RUNS}{cap}; follow them with `make status`", flush=True)


if __name__ == "__main__":
    sys.exit(main())
