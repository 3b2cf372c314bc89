"""One way to ask Slurm's accounting and read its answer: `sacct` with a time limit (or None when there is
no answer), and its `--parsable2` lines as one dict per row.

`make status` (control/slurmjobs.py) and `make report`'s cost table (report/cost.py) both read sacct and
both must go on without it: sacct missing (no Slurm client), accounting off (accounting_storage/none:
"Slurm accounting storage is disabled"), an error, or a slurmdbd that does not answer. Each of those is
None here, never an exception; the callers then fall back to the queue or to the runs' own records.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Iterable, Mapping, Sequence

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


def sacct_rows(text: str, fields: Iterable[str]) -> list[dict[str, str]]:
    """sacct's `--parsable2` (`-P`) lines as one dict per row, keyed by `fields` (the `--format` asked
    for), or by the header line when the text starts with one (`JobID|...`, i.e. run without `-n`).
    A JobName may itself hold '|': every other field is fixed, so the name takes what the row has beyond
    the field count. Rows with fewer fields than asked for (a torn line) are left out."""
    names = list(fields)
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].split("|")[0] == "JobID":
        names = lines.pop(0).split("|")
    name_at = names.index("JobName") if "JobName" in names else None
    rows = []
    for line in lines:
        parts = line.split("|")
        extra = len(parts) - len(names)
        if extra < 0:
            continue
        if extra and name_at is not None:
            end = name_at + extra + 1
            parts = [*parts[:name_at], "|".join(parts[name_at:end]), *parts[end:]]
        rows.append(dict(zip(names, parts)))
    return rows
