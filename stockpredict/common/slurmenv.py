"""What a process inside a job learns from Slurm's environment, read in one place."""

from __future__ import annotations

import os
from typing import Mapping


def job_ref(environ: Mapping[str, str] = os.environ) -> str | None:
    """The id Slurm's commands should be given for this job: `<array job id>_<task id>` for a task of a
    job array, else SLURM_JOB_ID (None outside a job).

    An array task has its own SLURM_JOB_ID, but one task's equals the array's id, and `scontrol requeue
    <array id>` acts on every task of the array; `<array>_<task>` always names one task.
    """
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return environ.get("SLURM_JOB_ID") or None
