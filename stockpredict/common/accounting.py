"""One way to ask Slurm's accounting: `sacct` with a time limit, or None when there is no answer.

`make status` (control/slurmjobs.py) and `make report`'s cost table (report/cost.py) both read sacct and
both must go on without it: sacct missing (no Slurm client), accounting off (accounting_storage/none:
"Slurm accounting storage is disabled"), an error, or a slurmdbd that does not answer. Each of those is
None here, never an exception; the callers then fall back to the queue or to the runs' own records.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Mapping, Sequence

SACCT_TIMEOUT = 30.0  # seconds; a hung slurmdbd must not hang make status or make report


def sacct_text(args: Sequence[str], env: Mapping[str, str] | None = None,
               timeout: float = SACCT_TIMEOUT) -> str | None:
    """`sacct <args>`'s standard output, or None when sacct is not on PATH, fails or exceeds `timeout`."""
    sacct = shutil.which("sacct", path=(env or {}).get("PATH"))
    if sacct is None:
        return None
    try:
        done = subprocess.run([sacct, *args], capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None
