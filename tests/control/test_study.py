"""`make study`: the chain of jobs it submits (sbatch arguments recorded by a stand-in sbatch on PATH),
what a re-run skips, its bad input, and what `make status` says of each stage. The real chain on the
local cluster is tests/cluster/test_study_slurm.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from stockpredict.control import study

MAKE_NO_SETUP = ["make", "--no-print-directory", "-C", str(REPO), "SETUP_DONE=",
                 f"VENV={Path(sys.executable).parent.parent}"]


def _fake_slurm(bin_dir: Path, queue: tuple[str, ...] = ()) -> Path:
    """An sbatch that records its arguments and answers 101, 102, ... (with --parsable), and a squeue
    listing `queue`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    calls, counter = bin_dir / "calls", bin_dir / "counter"
    counter.write_text("100")
    calls.unlink(missing_ok=True)
    (bin_dir / "sbatch").write_text(
        "#!/bin/bash\n"
        f"printf '%s\\n' \"$@\" >> {shlex.quote(str(calls))}; echo ---- >> {shlex.quote(str(calls))}\n"
        f"n=$(( $(cat {shlex.quote(str(counter))}) + 1 )); echo $n > {shlex.quote(str(counter))}; echo $n\n")
    (bin_dir / "squeue").write_text("#!/bin/bash\n" + "".join(f"echo {job}\n" for job in queue))
    for name in ("sbatch", "squeue"):
        (bin_dir / name).chmod(0o755)
    return calls


def _calls(calls: Path) -> list[list[str]]:
    return [c.split("\n")[:-1] if c.endswith("\n") else c.split("\n")
            for c in (part.strip("\n") for part in calls.read_text().split("----")) if c]


def _study(tmp_path: Path, *args: str, queue: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess,
                                                                                 Path]:
    calls = _fake_slurm(tmp_path / "bin", queue)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    proc = subprocess.run([*MAKE_NO_SETUP, "study", f"RESULTS={tmp_path / 'res'}", "NODES_LIST=1 2",
                           "BATCH_LIST=64", "EPOCHS=1", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    return proc, calls


def _dependencies(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith(("--dependency", "--kill-on-invalid-dep"))]


def test_a_study_from_raw_bars_is_preprocess_then_one_array_per_node_count_then_the_report(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    data = tmp_path / "seq.h5"  # made by the preprocessing job
    proc, calls = _study(tmp_path, f"RAW={raw}", f"DATA={data}", "NETWORK=ib-hdr")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:4] == [f"Submitted batch job {n}" for n in (101, 102, 103, 104)]
    submitted = _calls(calls)
    after_prep = ["--dependency=afterok:101", study.KILL_INVALID]
    assert [_dependencies(argv) for argv in submitted] == [
        [], after_prep, after_prep, ["--dependency=afterok:101,afterany:102:103", study.KILL_INVALID]]
    scripts = [Path(argv[-1]).read_text() for argv in submitted]
    (prep,) = [line for line in scripts[0].splitlines() if " -m preprocess " in line]
    argv = shlex.split(prep.rstrip(" &"))
    assert argv[argv.index("--raw") + 1] == str(raw) and argv[argv.index("--out") + 1] == str(data)
    assert "--array=0-0" in scripts[1] and "--nodes=1" in scripts[1] and "--nodes=2" in scripts[2]
    (report,) = [line for line in scripts[3].splitlines() if " -m stockpredict.report " in line]
    assert "--network=ib-hdr" in shlex.split(report.rstrip(" &"))
    (record_path,) = (tmp_path / "res" / "studies").glob("*/study.json")
    record = json.loads(record_path.read_text())
    assert [(s["name"], s["job_id"], s["after"]) for s in record["stages"]] == [
        ("preprocess", "101", []), ("sweep n1", "102", ["preprocess"]), ("sweep n2", "103", ["preprocess"]),
        ("report", "104", ["preprocess", "sweep n1", "sweep n2"])]
    assert all(len(s["runs"]) == 1 for s in record["stages"][1:3])
    assert "make status" in proc.stdout and "scaling.md is written when job 104 ends" in proc.stdout


def _complete(run_dir: Path) -> None:
    (run_dir / "model.keras").write_bytes(b"model")
    (run_dir / "timing.jsonl").write_text(json.dumps({"schema": 1, "event": "run_end", "status": "completed",
                                                      "total_seconds": 1.0, "test": None}) + "\n")


def test_a_rerun_skips_completed_runs_waits_for_queued_ones_and_resubmits_the_rest(tmp_path):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")  # exists: no preprocessing
    first, _ = _study(tmp_path, f"DATA={data}", "REPEATS=2")
    assert first.returncode == 0, first.stderr
    record = json.loads(next((tmp_path / "res" / "studies").glob("*/study.json")).read_text())
    n1, n2 = (stage["runs"] for stage in record["stages"][:2])  # no preprocess stage
    runs = tmp_path / "res" / "runs"
    _complete(runs / n1[0])
    _complete(runs / n1[1])
    _complete(runs / n2[0])
    queued_job = json.loads((runs / n2[1] / "submit.json").read_text())["job_id"]
    second, calls = _study(tmp_path, f"DATA={data}", "REPEATS=2", queue=(queued_job,))
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("study: skipping") == 3
    assert f"run {n2[1]} is in the queue as job {queued_job}" in second.stdout
    (report,) = _calls(calls)  # nothing left to train: only the report, after the queued run
    assert _dependencies(report) == [f"--dependency=afterany:{queued_job}", study.KILL_INVALID]
    # A run that neither completed nor is queued (it failed) is trained again.
    third, calls = _study(tmp_path, f"DATA={data}", "REPEATS=2")
    assert third.returncode == 0, third.stderr
    array, report = _calls(calls)
    assert "--array=0-0" in Path(array[-1]).read_text() and "--nodes=2" in Path(array[-1]).read_text()
    assert _dependencies(report) == [f"--dependency=afterany:{array_id(third.stdout)}", study.KILL_INVALID]


def array_id(stdout: str) -> str:
    (first, *_) = [line for line in stdout.splitlines() if line.startswith("Submitted batch job ")]
    return first.split()[-1]


def test_force_rebuilds_existing_data_and_retrains_everything(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    skip, calls = _study(tmp_path, f"RAW={raw}", f"DATA={data}")
    assert skip.returncode == 0, skip.stderr
    assert "exists, not rebuilt from RAW (FORCE=1 rebuilds it" in skip.stdout
    assert len(_calls(calls)) == 3  # two arrays and the report
    forced, calls = _study(tmp_path, f"RAW={raw}", f"DATA={data}", "FORCE=1")
    assert forced.returncode == 0, forced.stderr
    prep, *_ = _calls(calls)
    assert len(_calls(calls)) == 4 and " --force" in Path(prep[-1]).read_text()


@pytest.mark.parametrize("args, message", [
    (("RAW=/nonexistent/raw",), "RAW /nonexistent/raw does not exist"),
    (("DATA=/nonexistent/seq.h5",), "data file /nonexistent/seq.h5 not found: give RAW="),
    (("DATA=/nonexistent/seq.h5", "RAW=/tmp", "BATCH_LIST=63"), "does not divide evenly over 2 ranks"),
    (("DATA=/nonexistent/seq.h5", "RAW=/tmp", "AFTER=x1"), "AFTER (--after) wants Slurm job ids"),
])
def test_bad_study_input_is_one_line_and_submits_nothing(tmp_path, args, message):
    proc, calls = _study(tmp_path, *args)
    assert proc.returncode == 2, proc.stdout
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert message in line and "Traceback" not in proc.stderr
    assert not calls.exists() and not (tmp_path / "res" / "runs").exists()
    assert not (tmp_path / "res" / "studies").exists()


def test_a_dry_run_study_submits_nothing_and_keeps_its_scripts(tmp_path):
    proc, calls = _study(tmp_path, "RAW=/tmp", f"DATA={tmp_path / 'seq.h5'}", "DRY_RUN=1")
    assert proc.returncode == 0, proc.stderr
    assert not calls.exists() and "Submitted batch job" not in proc.stdout
    assert not (tmp_path / "res" / "runs").exists()
    (record,) = (tmp_path / "res" / "dry-runs").glob("*-study/study.json")
    stages = json.loads(record.read_text())["stages"]
    assert [s["name"] for s in stages] == ["preprocess", "sweep n1", "sweep n2", "report"]
    assert all((Path(s["dir"]) / "job.sbatch").is_file() for s in stages)


# --- what make status says --------------------------------------------------------------------------

def _record(tmp_path: Path) -> dict:
    jobs = tmp_path / "jobs"
    (jobs / "p").mkdir(parents=True)
    (jobs / "p" / "slurm-41.out").write_text(
        "error: no minute bars in /x/raw: expected <TICKER>.csv files\n"
        "stockpredict: preprocess job 41 FAILED (exit status 2); see the messages above\n")
    return {"study_id": "s", "data": "/x/seq.h5", "stages": [
        {"name": "preprocess", "kind": "preprocess", "job_id": "41", "dir": str(jobs / "p"), "after": []},
        {"name": "sweep n1", "kind": "sweep", "job_id": "42", "dir": "/x", "after": ["preprocess"],
         "runs": ["r1", "r2"]},
        {"name": "report", "kind": "report", "job_id": "43", "dir": str(jobs / "r"),
         "after": ["preprocess", "sweep n1"]}]}


def test_status_names_the_failed_stage_its_error_and_why_the_later_ones_did_not_run(tmp_path):
    known = {"41": [{"JobState": "FAILED", "Reason": "NonZeroExitCode"}],
             "42": [{"JobState": "CANCELLED", "Reason": "DependencyNeverSatisfied"}],
             "43": [{"JobState": "CANCELLED", "Reason": "DependencyNeverSatisfied"}]}
    lines = study.study_lines(_record(tmp_path), tmp_path, lambda job: known.get(job, []))
    assert lines[1].split()[:4] == ["preprocess", "job", "41", "FAILED"]
    assert lines[1].endswith("error: no minute bars in /x/raw: expected <TICKER>.csv files")
    assert lines[2].split()[:5] == ["sweep", "n1", "job", "42", "CANCELLED"]
    assert lines[2].endswith("not run: preprocess (job 41) ended FAILED")
    assert lines[3].endswith("not run: preprocess (job 41) ended FAILED; sweep n1 (job 42) ended CANCELLED")


def test_status_reads_the_files_once_slurm_forgot_the_jobs(tmp_path):
    lines = study.study_lines(_record(tmp_path), tmp_path, lambda job: [])
    assert "FAILED" in lines[1] and "error: no minute bars" in lines[1]
    assert "2 not started" in lines[2]
    assert lines[3].split()[3] == "NOT" and "not run: preprocess (job 41) ended FAILED" in lines[3]


def test_status_of_a_study_waiting_on_its_dependencies(tmp_path):
    record = _record(tmp_path)
    (tmp_path / "jobs" / "p" / "slurm-41.out").unlink()
    known = {"41": [{"JobState": "RUNNING", "Reason": "None"}],
             "42": [{"JobState": "PENDING", "Reason": "Dependency"}],
             "43": [{"JobState": "PENDING", "Reason": "Dependency"}]}
    lines = study.study_lines(record, tmp_path, lambda job: known.get(job, []))
    assert lines[1].split()[3] == "RUNNING"
    assert lines[2].split()[4] == "PENDING" and lines[2].endswith("2 not started; waiting for preprocess")
    assert lines[3].endswith("waiting for preprocess, sweep n1")


def test_run_signature_ignores_where_a_run_ran_and_nothing_else():
    job = {"nodes": 2, "gpus_per_node": 0, "tasks_per_node": None, "time": "00:10:00"}
    train = {"data": "/d.h5", "run_dir": "/r/1", "batch_size": 64, "epochs": 1}
    same = study.run_signature(dict(job, time="01:00:00"), dict(train, run_dir="/r/2"))
    assert study.run_signature(job, train) == same
    assert study.run_signature(dict(job, nodes=1), train) != same
    assert study.run_signature(job, dict(train, epochs=2)) != same
    assert study.run_signature(job, dict(train, data="/e.h5")) != same
