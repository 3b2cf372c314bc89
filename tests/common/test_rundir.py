"""The run directory's one owner (stockpredict/common/rundir.py): every file name is typed there only, and
`make clean` removes exactly what the toolkit wrote in a results directory."""

from __future__ import annotations

import ast
import os
import subprocess

from conftest import REPO
from stockpredict.common import rundir

# The names that are files or folders of a run or results directory and nothing else. "runs" and "jobs"
# are also column names of the report's tables and "submitit" a library (a key of submit.json), so the
# check leaves those three words out.
FILE_NAMES = {value for name, value in vars(rundir).items() if name.isupper() and isinstance(value, str)
              and value not in (rundir.RUNS, rundir.JOBS, rundir.SUBMITIT)}


def _string_constants(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def test_each_run_directory_name_is_a_literal_in_rundir_only():
    assert {"model.keras", "timing.jsonl", "transform.json", "timeline.json", "allreduce.json", "train.log",
            "job.sbatch", "submit.json", "checkpoints", "scaling.md", "interleaved.json"} <= FILE_NAMES
    owners: dict[str, list[str]] = {}
    for top in ("stockpredict", "preprocess", "benchmarks"):
        for path in sorted((REPO / top).rglob("*.py")):
            for value in _string_constants(path):
                if value in FILE_NAMES:
                    owners.setdefault(value, []).append(str(path.relative_to(REPO)))
    assert owners, "the scan found nothing: it cannot fail"
    assert {name: paths for name, paths in owners.items() if paths != ["stockpredict/common/rundir.py"]} == {}


def test_run_paths_name_the_files_of_a_run(tmp_path):
    paths = rundir.RunPaths(tmp_path / "r1")
    assert paths.model == tmp_path / "r1" / "model.keras"
    assert paths.timing_log.name == "timing.jsonl" and paths.checkpoints.name == "checkpoints"
    (tmp_path / "r1").mkdir()
    for job in ("12", "9"):
        (tmp_path / "r1" / f"slurm-{job}.out").write_text("")
    assert [p.name for p in paths.slurm_outputs()] == ["slurm-12.out", "slurm-9.out"]


def test_clean_removes_what_the_toolkit_wrote_and_nothing_else(tmp_path):
    results = tmp_path / "results"
    for folder in ("runs/r1", "jobs/j1", "dry-runs/d1"):
        (results / folder).mkdir(parents=True)
        (results / folder / "x").write_text("x")
    for name in ("scaling.md", "strong.csv", "speedup.png", "interleaved.json", "timing.jsonl.md",
                 "my-notes.txt"):
        (results / name).write_text("x")
    (results / "keep").mkdir()
    proc = subprocess.run(["python3", "-m", "stockpredict.common.rundir", "clean", str(results)],
                          capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in results.iterdir()) == ["keep", "my-notes.txt", "timing.jsonl.md"]
    assert proc.stdout.count("clean: removed ") == 7


def test_make_clean_hands_the_results_directory_to_rundir():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), "clean", "RESULTS=/r s"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "-m stockpredict.common.rundir clean" in proc.stdout
