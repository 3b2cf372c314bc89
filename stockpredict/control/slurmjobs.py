"""Talk to Slurm through its command-line clients: submit a script, read a job's state, wait.

Used by submission, the demo and the tests. Works without accounting (no `sacct`): a finished job's
state is read with `scontrol show job` while slurmctld still remembers it (MinJobAge).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

from stockpredict.common.accounting import sacct_rows, sacct_text
from stockpredict.common.errors import UserError

SUBMITTED_RE = re.compile(r"^Submitted batch job (\d+)", re.MULTILINE)
# `sbatch --parsable` prints `<id>` or, on a federated or multi-cluster site, `<id>;<cluster>`: the stable
# form of the id (the prose line above is for people, and wrappers around sbatch sometimes reword it).
PARSABLE_RE = re.compile(r"^(\d+)(?:;([A-Za-z0-9._-]+))?$")
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE",
}


def require_sbatch() -> str:
    """Path of `sbatch`, or a UserError saying how to get a cluster."""
    path = shutil.which("sbatch")
    if path is None:
        raise UserError(
            "sbatch is not on PATH: start the local test cluster with `make cluster-up`, "
            "load your site's Slurm module, or render without submitting with DRY_RUN=1"
        )
    return path


def sbatch(script: Path | str, args: Iterable[str] = (), env: Mapping[str, str] | None = None,
           cwd: Path | str | None = None) -> str:
    """Submit `script` with `sbatch --parsable` and return the job id (a string, as Slurm prints it;
    the cluster name of an `id;cluster` answer is dropped: scontrol and scancel take the id)."""
    cmd = [require_sbatch(), "--parsable", *args, str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        detail = " ".join((proc.stderr or proc.stdout).split()) or f"exit status {proc.returncode}"
        raise UserError(f"sbatch failed: {detail}")
    return parse_job_id(proc.stdout)


def parse_job_id(stdout: str) -> str:
    """The job id in what `sbatch --parsable` printed: the last line `<id>` or `<id>;<cluster>` (a site's
    job-submit plugin may print notices before it). A `Submitted batch job <id>` line is accepted too,
    for an sbatch wrapper that ignores --parsable. Anything else is a one-line UserError."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    match = PARSABLE_RE.match(lines[-1]) if lines else None
    if match is not None:
        return match.group(1)
    prose = SUBMITTED_RE.search(stdout)
    if prose is not None:
        return prose.group(1)
    raise UserError(f"sbatch printed no job id: {stdout.strip()!r}")


def job_info(job_id: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`scontrol show job -o` as a dict (JobState, ExitCode, NodeList, ...); {} if Slurm forgot it."""
    records = job_records(job_id, env)
    return records[0] if records else {}


def job_records(job_id: str, env: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Every record of `scontrol show job -o <id>` (an array: one per task, or one for its pending rest);
    [] if Slurm forgot the job."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return []
    return [parse_job_record(line) for line in proc.stdout.splitlines() if line.strip()]


def parse_job_record(line: str) -> dict[str, str]:
    """One line of `scontrol show job -o` as a dict. Fields are space-separated Key=Value; values of a few
    keys (Command, WorkDir) may hold spaces, so split on " Key=" boundaries; the first of a key wins."""
    info: dict[str, str] = {}
    for match in re.finditer(r"(?:^|\s)([A-Za-z:/]+)=(.*?)(?=\s[A-Za-z:/]+=|$)", line.strip()):
        info.setdefault(match.group(1), match.group(2))
    return info


def job_state(job_id: str, env: Mapping[str, str] | None = None) -> str:
    """The job's state (PENDING, RUNNING, COMPLETED, FAILED, ...) or "UNKNOWN"."""
    return job_info(job_id, env).get("JobState", "UNKNOWN")


def wait_for_jobs(job_ids: Iterable[str], timeout_s: float, env: Mapping[str, str] | None = None,
                  poll_s: float = 2.0, on_poll: Callable[[], None] | None = None) -> dict[str, str]:
    """Wait until every job reaches a final state; return {job_id: state}. Raises TimeoutError.

    `on_poll` runs after every poll and once at the end (e.g. stockpredict.follow.EpochPrinter, so a
    terminal waiting on a training job shows each finished epoch)."""
    pending = {str(j) for j in job_ids}
    states: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        for job_id in sorted(pending):
            state = job_state(job_id, env)
            if state in FINAL_STATES:
                states[job_id] = state
                pending.discard(job_id)
        if on_poll is not None:
            on_poll()
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs {sorted(pending)} not finished after {timeout_s:.0f} s")
        time.sleep(poll_s)
    return states


# --- accounting (sacct) --------------------------------------------------------------------------------

# The fields `make status` reads (the report's cost table asks for its own: report/cost.py).
SACCT_FIELDS = ("JobID", "JobName", "State", "Elapsed", "ExitCode", "NNodes", "NodeList", "Reason")


def sacct_jobs(since: str = "now-7days", fields: Iterable[str] = SACCT_FIELDS, job_ids: Iterable[str] = (),
               env: Mapping[str, str] | None = None) -> list[dict[str, str]] | None:
    """The allocations (-X: no steps) sacct knows since `since` (or of `job_ids`), one dict per job (array
    tasks one each); None when there is no accounting (no sacct, or accounting_storage/none)."""
    names = list(fields)
    args = ["-X", "-n", "-P", "-o", ",".join(names)]
    ids = [str(j) for j in job_ids]
    args += ["-j", ",".join(ids)] if ids else ["-S", since]
    out = sacct_text(args, env=env)
    return None if out is None else sacct_rows(out, names)
