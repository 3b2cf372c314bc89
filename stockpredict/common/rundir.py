"""Every file name of a run directory and of the results directory, named once (as submitit's
`JobPaths`): the writer of each file, every reader and `make clean` use these, never a literal.

    results/                       RESULTS (make ... RESULTS=)
      runs/<run-id>/               one training run or allreduce benchmark: what `make report` reads
        job.sbatch, submit.json    the rendered script and the submission record (stockpredict.control.submit)
        slurm-<job>.out            Slurm's output of every attempt (--open-mode=append)
        timing.jsonl               the timing log (stockpredict/common/timing.py)
        train.log                  rank 0's log
        config.json                the resolved training configuration
        checkpoints/               stockpredict/job/checkpoints.py
        heartbeats/                each rank's heartbeat for the stall watchdog (stockpredict/job/watchdog.py)
        transform.json, inputs.json, model.keras, metrics.json   written at the end, model.keras last
        timeline.json              Horovod's timeline (TIMELINE=1)
        allreduce.json             the allreduce benchmark's summary, its last file
        submitit/                  submitit's own files (the Python API)
      arrays/<id>/                 one job array of a sweep: its job.sbatch, submit.json (the tasks'
                                   run ids) and Slurm's output of each task, slurm-<job>_<task>.out
                                   (linked from the task's run directory)
      jobs/<id>/                   preprocess and report jobs
      studies/<id>/study.json      one `make study`: its stages, their job ids, the runs of each array
      dry-runs/<id>/               what a dry run rendered (never read by the report)
      scaling.md, *.csv, *.png     the report
      interleaved.json             make demo's 1-rank vs 2-rank rounds

Stdlib only, so `make clean` runs it without an environment:
`python3 -m stockpredict.common.rundir clean RESULTS` removes what the toolkit wrote there.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# --- the results directory ---
RUNS = "runs"
JOBS = "jobs"
ARRAYS = "arrays"
STUDIES = "studies"
STUDY_RECORD = "study.json"        # a study's stages (stockpredict.control.study)
DRY_RUNS = "dry-runs"
REPORT_MARKDOWN = "scaling.md"
REPORT_GLOBS = ("*.csv", "*.png")   # the report's tables and plots, beside REPORT_MARKDOWN
INTERLEAVED_SUMMARY = "interleaved.json"

# --- a run directory ---
JOB_SCRIPT = "job.sbatch"
SUBMIT_RECORD = "submit.json"
SLURM_OUTPUT = "slurm-%j.out"       # %j = the job id (sbatch --output)
SLURM_OUTPUT_GLOB = "slurm-*.out"
ARRAY_OUTPUT = "slurm-%A_%a.out"   # an array task's output: %A = the array's job id, %a = the task
TIMING_LOG = "timing.jsonl"
TRAIN_LOG = "train.log"
CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
TRANSFORM = "transform.json"        # stockpredict.common.transform.to_json of the data file's transform
INPUTS = "inputs.json"              # what a forecast needs besides the model (stockpredict.job.predict)
METRICS = "metrics.json"
MODEL = "model.keras"               # saved last: a train job counts as finished only when it exists
TIMELINE = "timeline.json"          # Horovod's timeline (make submit TIMELINE=1)
ALLREDUCE_SUMMARY = "allreduce.json"  # the allreduce benchmark's last file: its done marker
SUBMITIT = "submitit"
HEARTBEATS = "heartbeats"           # rank-<R>.json: the stall watchdog's (stockpredict/job/watchdog.py)


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    job_script = property(lambda self: self.root / JOB_SCRIPT)
    submit_record = property(lambda self: self.root / SUBMIT_RECORD)
    timing_log = property(lambda self: self.root / TIMING_LOG)
    train_log = property(lambda self: self.root / TRAIN_LOG)
    config = property(lambda self: self.root / CONFIG)
    checkpoints = property(lambda self: self.root / CHECKPOINTS)
    transform = property(lambda self: self.root / TRANSFORM)
    inputs = property(lambda self: self.root / INPUTS)
    metrics = property(lambda self: self.root / METRICS)
    model = property(lambda self: self.root / MODEL)
    timeline = property(lambda self: self.root / TIMELINE)
    allreduce_summary = property(lambda self: self.root / ALLREDUCE_SUMMARY)
    submitit = property(lambda self: self.root / SUBMITIT)
    heartbeats = property(lambda self: self.root / HEARTBEATS)

    def slurm_outputs(self) -> list[Path]:
        """Slurm's output files of every job that ran in this directory, oldest job id first."""
        return sorted(self.root.glob(SLURM_OUTPUT_GLOB))


def written_by_toolkit(results: Path) -> list[Path]:
    """What the toolkit wrote in a results directory (make clean removes these; anything else stays)."""
    results = Path(results)
    fixed = [results / RUNS, results / ARRAYS, results / JOBS, results / STUDIES, results / DRY_RUNS,
             results / REPORT_MARKDOWN, results / INTERLEAVED_SUMMARY]
    globbed = [p for pattern in REPORT_GLOBS for p in sorted(results.glob(pattern))]
    return [p for p in fixed + globbed if p.exists() or p.is_symlink()]


def clean(results: Path) -> list[Path]:
    """Remove written_by_toolkit(results); returns what was removed."""
    removed = written_by_toolkit(results)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stockpredict.common.rundir",
                                     description="The results directory's toolkit files.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("clean", help="remove the runs, jobs, dry runs and report of a results directory")
    cmd.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    for path in clean(args.results):
        print(f"clean: removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
