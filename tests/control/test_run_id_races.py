"""Run ids under real concurrency: many processes creating run directories in the same millisecond, and
several `make submit DRY_RUN=1`s (`python -m stockpredict.submit train --dry-run`) started together. Every
one gets its own id and directory (os.mkdir fails on a taken name, and the creator retries), and each
directory holds only its own submission's files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CREATE = """
import sys, time
from pathlib import Path
from stockpredict.control.submit import new_run_dir
parent, start, count = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
time.sleep(max(0.0, start - time.time() - 0.02))
while time.time() < start:  # every process starts creating at the same instant
    pass
print("\\n".join(new_run_dir(parent, "n1-g0-b32").name for _ in range(count)))
"""


def _start_together(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for c in commands]
    results = []
    for proc, command in zip(procs, commands):
        stdout, stderr = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(command, proc.returncode, stdout, stderr))
    return results


def test_processes_creating_run_directories_at_the_same_moment_never_share_one(tmp_path):
    parent = tmp_path / "runs"
    start = time.time() + 2.0  # time for every interpreter to start and wait
    results = _start_together([[sys.executable, "-c", CREATE, str(parent), str(start), "25"]
                               for _ in range(6)])
    names = []
    for result in results:
        assert result.returncode == 0, result.stderr
        names += result.stdout.split()
    assert len(names) == 150 and len(set(names)) == 150, "two processes got the same run id"
    assert sorted(p.name for p in parent.iterdir()) == sorted(names)
    assert all(not any((parent / name).iterdir()) for name in names)
    # They really raced: many ids share a second (the id's clock has milliseconds).
    assert max(sum(n.startswith(s[:15]) for n in names) for s in names) > 25


def test_dry_run_submissions_started_together_each_get_their_own_directory(tmp_path):
    results_dir = tmp_path / "results"
    command = [sys.executable, "-m", "stockpredict.submit", "train", "--dry-run", "--results",
               str(results_dir), "--nodes", "2", "--data", str(tmp_path / "seq.h5")]
    for _ in range(2):
        runs = _start_together([command] * 5)
        assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    dirs = sorted((results_dir / "dry-runs").iterdir())
    assert len(dirs) == 10, [d.name for d in dirs]
    for run_dir in dirs:
        assert sorted(p.name for p in run_dir.iterdir()) == ["job.sbatch", "submit.json"]
        record = json.loads((run_dir / "submit.json").read_text())
        assert record["run_id"] == run_dir.name
        script = (run_dir / "job.sbatch").read_text()
        assert f"runs/{run_dir.name}" in script
        assert sum(d.name in script for d in dirs) == 1  # its own id only
