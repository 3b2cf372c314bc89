"""`make study` on the local Slurm cluster: from raw bars to results/scaling.md as one chain of real jobs
(preprocess -> one array per node count -> report), a re-run that skips what completed, and a broken raw
directory that stops the chain after its first stage with `make status` saying why."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.cluster

MAKE = ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.setup-done"]
GRID = ["NODES_LIST=1 2", "BATCH_LIST=64", "EPOCHS=1", "TIME=00:10:00"]


def _make(cluster, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*MAKE, *args], capture_output=True, text=True, env=cluster.env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _submitted(stdout: str) -> list[str]:
    return re.findall(r"^Submitted batch job (\d+)$", stdout, re.MULTILINE)


def _stage_lines(status_stdout: str) -> dict[str, str]:
    """{stage name: its line} of the study block `make status` prints."""
    block = status_stdout.split("\nstudy ", 1)[1].splitlines()[1:]
    return {line.split(" job ")[0].strip(): line for line in block if " job " in line}


def test_make_study_runs_from_raw_bars_to_the_report_and_a_rerun_skips_what_completed(
        slurm_cluster, tiny_dataset, tmp_path):
    raw = tiny_dataset.parent / "raw"  # the tiny universe's bars (8 tickers x 10 days)
    data, results = tmp_path / "seq.h5", tmp_path / "results"
    args = ["study", f"RAW={raw}", f"DATA={data}", f"RESULTS={results}", *GRID, "PREPROCESS_ARGS=--workers 1"]
    proc = _make(slurm_cluster, *args)
    ids = _submitted(proc.stdout)
    assert len(ids) == 4, proc.stdout  # preprocess, sweep n1, sweep n2, report
    assert not data.exists()  # nothing ran on the login node: the preprocessing is a job
    try:
        states = {job: slurm_cluster.wait(job, timeout_s=600) for job in ids}
        report_dir = next(p for p in (results / "jobs").iterdir() if p.name.endswith("-report"))
        report_out = (report_dir / f"slurm-{ids[-1]}.out").read_text()
        assert set(states.values()) == {"COMPLETED"}, (states, report_out)
    finally:
        subprocess.run(["scancel", *ids], env=slurm_cluster.env, capture_output=True)
    assert data.is_file() and (results / "scaling.md").is_file()
    assert "report: 2 run(s) used" in report_out
    runs = sorted((results / "runs").iterdir())
    assert len(runs) == 2 and all((run / "model.keras").is_file() for run in runs)
    stages = _stage_lines(_make(slurm_cluster, "status", f"RESULTS={results}").stdout)
    assert list(stages) == ["preprocess", "sweep n1", "sweep n2", "report"]
    assert all(line.split()[3 if name in ("preprocess", "report") else 4] == "COMPLETED"
               for name, line in stages.items()), stages
    assert stages["sweep n2"].endswith("1 completed")

    again = _make(slurm_cluster, *args)
    (report_id,) = _submitted(again.stdout)  # the data exists and both runs completed: only the report
    assert "exists, not rebuilt from RAW" in again.stdout and again.stdout.count("study: skipping") == 2
    assert slurm_cluster.wait(report_id, timeout_s=300) == "COMPLETED"
    assert sorted((results / "runs").iterdir()) == runs


def test_a_study_of_a_broken_raw_directory_stops_after_preprocessing_and_status_says_why(
        slurm_cluster, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "AAPL.csv").write_bytes(b"this is not,a minute bar\n\x00\xff\xfe garbage\n")
    data, results = tmp_path / "seq.h5", tmp_path / "results"
    proc = _make(slurm_cluster, "study", f"RAW={raw}", f"DATA={data}", f"RESULTS={results}", *GRID)
    ids = _submitted(proc.stdout)
    try:
        states = [slurm_cluster.wait(job, timeout_s=300) for job in ids]
    finally:
        subprocess.run(["scancel", *ids], env=slurm_cluster.env, capture_output=True)
    # The later stages never started: Slurm cancelled them (--kill-on-invalid-dep=yes).
    assert states == ["FAILED", "CANCELLED", "CANCELLED", "CANCELLED"]
    assert not data.exists() and not list((results / "runs").glob("*/timing.jsonl"))
    stages = _stage_lines(_make(slurm_cluster, "status", f"RESULTS={results}").stdout)
    assert stages["preprocess"].split()[3] == "FAILED"
    error = stages["preprocess"].split("FAILED", 1)[1].strip()
    assert error.startswith("error:") and str(raw) in error, stages  # the job's one-line error
    for name in ("sweep n1", "sweep n2"):
        assert stages[name].endswith(f"not run: preprocess (job {ids[0]}) ended FAILED"), stages
    assert f"not run: preprocess (job {ids[0]}) ended FAILED; sweep n1" in stages["report"]
    assert Path(results / "studies").is_dir()
