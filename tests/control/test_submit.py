"""Submission: run directories, sweeps, the command line, and real jobs on the local Slurm cluster."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO, read_json_lines
from stockpredict.common.accounting import sacct_rows
from stockpredict.common.errors import UserError
from stockpredict.common.train_config import TrainConfig, parse_args
from stockpredict.control import slurmjobs, submit

# `-o .venv/.setup-done`: run the Makefile's real submit/sweep lines without re-running `make setup`.
MAKE = ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.setup-done"]
# The same without any setup step: the venv running this test, SETUP_DONE= (see the Makefile).
MAKE_NO_SETUP = ["make", "--no-print-directory", "-C", str(REPO), "SETUP_DONE=",
                 f"VENV={Path(sys.executable).parent.parent}"]
RUN_ID_RE = re.compile(r"^\d{8}-\d{6}-\d{3}-n(\d+)-g(\d+)-b(\d+)$")


def _cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stockpredict.submit", *argv], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


# --- pure functions ---------------------------------------------------------------------------------

def test_run_id_shows_nodes_gpus_batch_and_a_millisecond_timestamp():
    from datetime import datetime

    run_id = submit.run_id_for(4, 1, 32, now=datetime(2026, 11, 26, 14, 30, 12, 417_999))
    assert run_id == "20261126-143012-417-n4-g1-b32"


def test_concurrent_run_directories_are_disjoint(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: submit.new_run_dir(tmp_path, "n1-g0-b32"), range(40)))
    assert len(set(dirs)) == 40 and all(d.is_dir() and RUN_ID_RE.match(d.name) for d in dirs)


def test_strong_sweep_divides_the_global_batch():
    grid = submit.sweep_grid([1, 2, 4], [256], "strong", ranks_per_node=1)
    assert [(r["ranks"], r["batch_per_rank"], r["global_batch"]) for r in grid] == [
        (1, 256, 256), (2, 128, 256), (4, 64, 256)]


def test_weak_sweep_keeps_the_per_rank_batch_and_repeats():
    grid = submit.sweep_grid([1, 2], [32], "weak", ranks_per_node=2, repeats=2)
    assert [(r["ranks"], r["batch_per_rank"], r["global_batch"], r["repeat"]) for r in grid] == [
        (2, 32, 64, 1), (2, 32, 64, 2), (4, 32, 128, 1), (4, 32, 128, 2)]


def test_strong_sweep_rejects_an_indivisible_batch():
    with pytest.raises(UserError, match="global batch 100 .* 8 ranks"):
        submit.sweep_grid([1, 8], [100], "strong", ranks_per_node=1)


@pytest.mark.parametrize("text, minutes", [("30", 30), ("1:30", 2), ("01:30:00", 90), ("2-0", 2880),
                                           ("1-02:03", 1563), ("1-00:00:01", 1441)])
def test_slurm_time_to_minutes(text, minutes):
    assert submit._minutes(text) == minutes


# --- the command line without a cluster ------------------------------------------------------------

def test_dry_run_prints_the_script_and_creates_nothing_under_runs(tmp_path):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    res = tmp_path / "res"
    proc = _cli("train", "--nodes", "2", "--gpus-per-node", "1", "--batch-size", "64", "--data", str(data),
                "--dry-run", "--results", str(res))
    assert proc.returncode == 0, proc.stderr
    assert not (res / "runs").exists()
    # The copy kept in dry-runs/ is the printed script, which names the run directory a real run gets.
    (kept,) = (res / "dry-runs").iterdir()
    assert RUN_ID_RE.match(kept.name).groups() == ("2", "1", "64")
    script = (kept / "job.sbatch").read_text()
    assert proc.stdout.startswith(script) and "Submitted batch job" not in proc.stdout
    assert f"--run-dir {res / 'runs' / kept.name} --resume --batch-size 64" in script
    assert f"#SBATCH --output={res / 'runs' / kept.name}/slurm-%j.out" in script
    record = json.loads((kept / "submit.json").read_text())
    assert record["job"]["nodes"] == 2 and record["train"]["batch_size"] == 64 and record["job_id"] is None
    assert record["dry_run"] is True


def test_dry_run_renders_without_the_data_file_with_a_one_line_warning(tmp_path):
    missing = tmp_path / "not yet" / "seq.h5"
    proc = _cli("train", "--data", str(missing), "--dry-run", "--results", str(tmp_path / "res"))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and f"data file {missing} not found" in warnings[0]
    assert f"--data {shlex.quote(str(missing))}" in proc.stdout
    assert not (tmp_path / "res" / "runs").exists()


def test_sweep_dry_run_keeps_its_scripts_outside_runs_and_warns_once(tmp_path):
    res = tmp_path / "res"
    proc = _cli("sweep", "--data", str(tmp_path / "missing.h5"), "--nodes-list", "1 2", "--batch-list", "64",
                "--dry-run", "--results", str(res), "--no-array")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("not found") == 1
    assert not (res / "runs").exists()
    kept = sorted(p.name for p in (res / "dry-runs").iterdir())
    rows = [line.split() for line in proc.stdout.splitlines() if line.lstrip().startswith("dry-run")]
    assert [row[1] for row in rows] == kept and len(kept) == 2
    assert "nothing submitted" in proc.stdout


def test_a_sweep_is_one_job_array_per_node_count_with_a_task_per_batch_and_repeat(tmp_path):
    res = tmp_path / "res"
    proc = _cli("sweep", "--data", str(tmp_path / "missing.h5"), "--nodes-list", "1 2", "--batch-list",
                "64 128", "--repeats", "2", "--array-max", "3", "--dry-run", "--results", str(res))
    assert proc.returncode == 0, proc.stderr
    assert not (res / "runs").exists() and not (res / "arrays").exists()
    arrays = sorted((res / "dry-runs").iterdir())
    assert [a.name.rsplit("-", 2)[1:] for a in arrays] == [["n1", "g0"], ["n2", "g0"]]
    rows = [line.split() for line in proc.stdout.splitlines() if line.lstrip().startswith("dry-run")]
    assert len(rows) == 8  # 2 node counts x 2 batch sizes x 2 repeats
    for array in arrays:
        script = (array / "job.sbatch").read_text()
        assert "#SBATCH --array=0-3%3" in script.splitlines()
        tasks = json.loads((array / "submit.json").read_text())["tasks"]
        assert tasks == [row[1] for row in rows if row[1].startswith(array.name)]
        for index, run_id in enumerate(tasks):  # each task trains in the run directory it is named by
            assert run_id.endswith(f"-t{index}") and f"--run-dir {res.resolve() / 'runs' / run_id} " in script
    # strong scaling: the global batch is kept, split over the ranks
    assert [(row[2], row[4], row[5]) for row in rows][::2] == [("1", "64", "64"), ("1", "128", "128"),
                                                             ("2", "32", "64"), ("2", "64", "128")]


def test_a_bad_array_cap_is_one_line_and_creates_nothing(tmp_path):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    proc = _cli("sweep", "--data", str(data), "--nodes-list", "1", "--batch-list", "64", "--array-max", "0",
                "--dry-run", "--results", str(tmp_path / "res"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "ARRAY_MAX" in proc.stderr
    assert not (tmp_path / "res").exists()


def test_allreduce_dry_run_renders_the_benchmark_as_a_run_through_the_train_template(tmp_path):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    res = tmp_path / "res"
    proc = _cli("allreduce", "--nodes", "2", "--iterations", "50", "--epochs", "4", "--data", str(data),
                "--cpus-per-task", "2", "--dry-run", "--results", str(res))
    assert proc.returncode == 0, proc.stderr
    assert not (res / "runs").exists()
    (kept,) = (res / "dry-runs").iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}-\d{3}-allreduce-n2-g0", kept.name)
    script = (kept / "job.sbatch").read_text()
    assert proc.stdout.startswith(script)
    run_dir = res / "runs" / kept.name
    (launch,) = [line for line in script.splitlines() if " -m stockpredict.allreduce_bench " in line]
    assert shlex.split(launch.rstrip(" &")) == [
        "srun", "--mpi=pmix", "--kill-on-bad-exit=1", "python", "-m", "stockpredict.allreduce_bench",
        "--run-dir", str(run_dir), "--iterations", "50", "--epochs", "4", "--data", str(data),
        "--threads", "2"]
    # A benchmark has nothing to resume: no requeue, no signal; it counts as done when allreduce.json exists.
    assert "--requeue" not in script and "--signal" not in script and "scontrol requeue" not in script
    assert '"$RUN_DIR"/allreduce.json' in script and "model.keras" not in script
    record = json.loads((kept / "submit.json").read_text())
    assert record["job"]["kind"] == "allreduce" and record["job"]["nodes"] == 2
    assert record["allreduce"]["iterations"] == 50 and record["allreduce"]["run_dir"] == str(run_dir)
    assert record["allreduce"]["threads"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--iterations", "0"], "--iterations must be a positive integer, not 0"),
    (["--nodes", "2", "--job-name", "x$(touch CANARY)"], "job name"),
    (["--data", "/no/such/file.h5"], "data file /no/such/file.h5 not found"),
])
def test_allreduce_bad_input_is_one_line_and_leaves_no_run_dir(tmp_path, argv, message):
    proc = _cli("allreduce", "--results", str(tmp_path / "res"), *argv)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").rglob("job.sbatch"))
    assert not list(tmp_path.rglob("CANARY"))


def test_missing_data_file_stops_a_real_submission(tmp_path):
    proc = _cli("train", "--data", "/no/such/file.h5", "--results", str(tmp_path / "res"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "data file /no/such/file.h5 not found" in proc.stderr
    assert not (tmp_path / "res").exists()


def test_fractional_warmup_and_every_trainer_flag_reach_the_job_script(tmp_path):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    proc = _cli("train", "--data", str(data), "--dry-run", "--results", str(tmp_path / "res"),
                "--epochs", "3", "--warmup-epochs", "0.5", "--lr", "0.002", "--seed", "4",
                "--cpus-per-task", "2")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "res" / "runs").exists()  # a dry run keeps its files under dry-runs/
    (kept,) = (tmp_path / "res" / "dry-runs").iterdir()
    run_dir = tmp_path / "res" / "runs" / kept.name  # where the job would run
    script = (kept / "job.sbatch").read_text()
    line = next(line for line in script.splitlines() if "stockpredict.train" in line)
    argv = line.split("-m stockpredict.train ", 1)[1].removesuffix(" &").split()
    # the job's trainer parses exactly the config that submit.json records
    record = json.loads((kept / "submit.json").read_text())["train"]
    assert dataclasses.asdict(parse_args(argv)) == record
    assert record["warmup_epochs"] == 0.5 and record["resume"] and record["threads"] == 2
    assert record["run_dir"] == str(run_dir) and record["data"] == str(data.resolve())


def test_engine_tf_renders_plain_srun_in_the_tf_environment_and_horovod_stays_as_it_was(tmp_path):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    scripts = {}
    for engine in ("horovod", "tf"):
        proc = _cli("train", "--data", str(data), "--dry-run", "--results", str(tmp_path / engine),
                    "--nodes", "2", "--engine", engine)
        assert proc.returncode == 0, proc.stderr
        (kept,) = (tmp_path / engine / "dry-runs").iterdir()
        scripts[engine] = (kept / "job.sbatch").read_text()
        assert kept.name.endswith(f"-n2-g0-b{TrainConfig.batch_size}" + ("-tf" if engine == "tf" else ""))
        assert json.loads((kept / "submit.json").read_text())["train"]["engine"] == engine
    launch = {e: next(line for line in text.splitlines() if "stockpredict.train" in line)
              for e, text in scripts.items()}
    assert launch["tf"].startswith("srun --kill-on-bad-exit=1 python -m stockpredict.train ")
    assert launch["tf"].endswith(" --engine tf &")
    assert launch["horovod"].startswith("srun --mpi=pmix --kill-on-bad-exit=1 ")
    assert "--engine" not in launch["horovod"]
    assert f"source {REPO}/.venv-tf/bin/activate" in scripts["tf"]
    assert f"source {REPO}/.venv/bin/activate" in scripts["horovod"]
    # the same script as before the tf engine existed, apart from the run directory's name
    assert scripts["horovod"].count(".venv") == 1 and ".venv-tf" not in scripts["horovod"]


def test_engine_tf_with_an_mpi_launcher_is_a_one_line_error(tmp_path):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    proc = _cli("train", "--data", str(data), "--dry-run", "--results", str(tmp_path / "res"),
                "--engine", "tf", "--launcher", "srun-pmix")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "launcher 'srun-pmix' cannot start the tf engine; use srun" in proc.stderr
    proc = _cli("train", "--data", str(data), "--dry-run", "--results", str(tmp_path / "res"),
                "--launcher", "srun")
    assert proc.returncode == 2 and "cannot start the horovod engine" in proc.stderr


def test_make_submit_engine_tf_dry_run(tmp_path):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    proc = subprocess.run([*MAKE_NO_SETUP, "submit", "ENGINE=tf", "DRY_RUN=1", "NODES=2", f"DATA={data}",
                           f"RESULTS={tmp_path / 'res'}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "srun --kill-on-bad-exit=1 python -m stockpredict.train" in proc.stdout
    assert "--engine tf &" in proc.stdout and ".venv-tf/bin/activate" in proc.stdout
    proc = subprocess.run([*MAKE_NO_SETUP, "sweep", "ENGINE=tf", "DRY_RUN=1", "NODES_LIST=1 2",
                           "BATCH_LIST=64",
                           f"DATA={data}", f"RESULTS={tmp_path / 'sweep'}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    scripts = sorted((tmp_path / "sweep" / "dry-runs").glob("*-tf/job.sbatch"))
    assert len(scripts) == 2 and all("--engine tf) ;;" in p.read_text() for p in scripts)  # job arrays
    assert all('srun --kill-on-bad-exit=1 "${program[@]}" &' in p.read_text() for p in scripts)


def _frameworks_after_importing(modules: list[str]) -> list[str]:
    """The tensorflow/horovod/keras modules a fresh interpreter holds after importing `modules`."""
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'horovod',"
            " 'keras', 'tf_keras'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _package_modules(*packages: str) -> list[str]:
    names = []
    for package in packages:
        folder = REPO / package.replace(".", "/")
        names += [f"{package}.{p.stem}" if p.stem != "__init__" else package
                  for p in sorted(folder.glob("*.py")) if p.stem != "__main__"]
    return names


def test_the_control_side_imports_neither_tensorflow_nor_horovod():
    """Every module of common/, control/, report/ and preprocess/ (import-linter checks the imports as
    written; this checks what importing them really loads), the batch shell's helpers and the stable
    names the job scripts and users import."""
    modules = (_package_modules("stockpredict.common", "stockpredict.control", "stockpredict.report",
                                "preprocess")
               + ["stockpredict.job.checkpoints", "stockpredict.job.preemption",
                  "stockpredict.job.engine.tfcluster",
                  "stockpredict.submit", "stockpredict.render", "stockpredict.config", "stockpredict.timing",
                  "stockpredict.checkpoints", "stockpredict.demo"])
    assert len(modules) > 40
    assert _frameworks_after_importing(modules) == []
    # the check is able to fail: the trainer's loop does import them
    assert "tensorflow" in _frameworks_after_importing(["stockpredict.job.loop"])


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "0"], "nodes must be an integer >= 1"),
    (["--time", "soon"], "time limit 'soon' is not valid"),
    (["--partition", "debug; rm -rf ~"], "partition"),
    (["--job-name", "x$(touch CANARY)"], "job name"),
    (["--profile", "nope"], "no profile 'nope'"),
    (["--launcher", "ssh"], "launcher 'ssh'"),
])
def test_bad_input_is_one_line_and_leaves_no_run_dir(tmp_path, argv, message):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    args = ["train", "--data", str(data), "--dry-run", "--results", str(tmp_path / "res"), *argv]
    proc = _cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "res").rglob("job.sbatch"))
    assert not list(tmp_path.rglob("CANARY"))


def test_sweep_rejects_indivisible_grid_before_submitting_anything(tmp_path):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    proc = _cli("sweep", "--data", str(data), "--nodes-list", "1 3", "--batch-list", "64", "--dry-run",
                "--results", str(tmp_path / "res"))
    assert proc.returncode == 2 and "does not divide evenly over 3 ranks" in proc.stderr
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").rglob("job.sbatch"))


def test_without_sbatch_the_message_points_to_cluster_up_or_dry_run(tmp_path):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + ":/nonexistent")
    proc = _cli("train", "--data", str(data), "--results", str(tmp_path / "res"), env=env)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "make cluster-up" in proc.stderr and "DRY_RUN=1" in proc.stderr
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").rglob("job.sbatch"))


@pytest.mark.parametrize("printed, job_id", [("4711\n", "4711"), ("4711;fed-west\n", "4711"),
                                             ("notice: project quota 80% used\n4712\n", "4712"),
                                             ("Submitted batch job 4713\n", "4713")])
def test_the_job_id_is_read_from_sbatch_parsable_id_or_id_semicolon_cluster(printed, job_id):
    assert slurmjobs.parse_job_id(printed) == job_id


@pytest.mark.parametrize("printed", ["", "sbatch: queued\n", "47x11\n", "4711;bad cluster\n"])
def test_an_answer_without_a_job_id_is_one_line(printed):
    with pytest.raises(UserError, match="sbatch printed no job id"):
        slurmjobs.parse_job_id(printed)


def fake_sbatch(bin_dir: Path, answer: str) -> Path:
    """An sbatch on PATH that records its arguments (one per line) and prints `answer` (the real one
    runs in the cluster tests; this one gives the federated `id;cluster` answer a local Slurm never
    prints)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    calls = bin_dir / "calls"
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\nprintf '%s\\n' \"$@\" >> {shlex.quote(str(calls))}\n"
                                    f"echo ---- >> {shlex.quote(str(calls))}\nprintf '%s\\n' "
                                    f"{shlex.quote(answer)}\n")
    (bin_dir / "sbatch").chmod(0o755)
    return calls


def test_submit_asks_sbatch_parsable_and_still_prints_the_conventional_line(tmp_path):
    calls = fake_sbatch(tmp_path / "bin", "4711;fed-west")
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    proc = _cli("train", "--data", str(data), "--results", str(tmp_path / "res"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "Submitted batch job 4711"  # the contract, without ";fed-west"
    argv = calls.read_text().split("----")[0].split()
    assert argv[0] == "--parsable" and argv[-1].endswith("/job.sbatch")
    (record,) = (tmp_path / "res" / "runs").glob("*/submit.json")
    assert json.loads(record.read_text())["job_id"] == "4711"


def _record(results: Path, sub: str, run_id: str, job_id: str | None) -> None:
    (results / sub / run_id).mkdir(parents=True)
    (results / sub / run_id / "submit.json").write_text(json.dumps({"run_id": run_id, "job_id": job_id}))


QUEUE = ("41|my-own-name|RUNNING|1:02|2|node[1-2]\n"
         "42_3|stockpredict-report|PENDING|0:00|1|(Dependency)\n"
         "43|stockpredict-train|PENDING|0:00|1|(Resources)\n"
         "44|someone-else|RUNNING|9:00|1|node3\n"
         "45|a|b|RUNNING|0:01|1|node4\n")


def test_status_finds_jobs_by_the_recorded_ids_whatever_their_name(tmp_path):
    _record(tmp_path, "runs", "20261126-143012-417-n2-g1-b32", "41")
    _record(tmp_path, "jobs", "20261126-143013-000-report", "42")
    _record(tmp_path, "runs", "20261126-143014-000-n1-g0-b32", None)   # a dry run of old: no job id
    _record(tmp_path, "runs", "20261126-143015-000-n1-g0-b32", "45")
    rows = submit.status_rows(QUEUE, submit._runs_by_job(tmp_path))
    assert [(r[0], r[1], r[2]) for r in rows] == [("41", "my-own-name", "RUNNING"),
                                                  ("42_3", "stockpredict-report", "PENDING"),
                                                  ("43", "stockpredict-train", "PENDING"),
                                                  ("45", "a|b", "RUNNING")]


def test_status_names_each_array_task_by_its_run_and_the_pending_rest_by_its_array(tmp_path):
    for task in (0, 1, 2):
        _record(tmp_path, "runs", f"20261207-040000-000-n1-g0-b64-t{task}", f"50_{task}")
    array = tmp_path / "arrays" / "20261207-040000-000-n1-g0"
    array.mkdir(parents=True)
    (array / "submit.json").write_text(json.dumps({"array_id": "50"}))
    runs = submit._runs_by_job(tmp_path)
    queue = ("50_0|x|RUNNING|0:10|1|node1\n50_1|x|RUNNING|0:10|1|node2\n"
             "50_[2%2]|x|PENDING|0:00|1|(JobArrayTaskLimit)\n")
    assert [(r[0], submit._run_of(r[0], runs)) for r in submit.status_rows(queue, runs)] == [
        ("50_0", "20261207-040000-000-n1-g0-b64-t0"), ("50_1", "20261207-040000-000-n1-g0-b64-t1"),
        ("50_[2%2]", "arrays/20261207-040000-000-n1-g0")]


def _make_status_with(bin_dir: Path, results: Path, **commands: str) -> subprocess.CompletedProcess:
    """`make status` with each named Slurm command replaced by a bash one-liner on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in commands.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return subprocess.run([*MAKE_NO_SETUP, "status", f"RESULTS={results}"], capture_output=True, text=True,
                          env=env, timeout=120)


def test_make_status_shows_a_custom_job_name_with_its_run(tmp_path):
    # A real squeue needs the cluster; this one is an executable on PATH that prints a fixed queue.
    # sacct as on a cluster with accounting_storage/none: it fails, so status reads the queue alone.
    results = tmp_path / "results"
    _record(results, "runs", "20261126-143012-417-n2-g1-b32", "41")
    proc = _make_status_with(tmp_path / "bin", results, squeue=f"printf '%s' {shlex.quote(QUEUE)}",
                             sacct="echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("jobs from the queue only (no accounting")
    assert lines[1].split() == ["JOBID", "STATE", "TIME", "NODES", "NAME", "RUN", "EXIT", "REASON/NODES"]
    assert lines[2].split() == ["41", "RUNNING", "1:02", "2", "my-own-name", "20261126-143012-417-n2-g1-b32",
                                "-", "node[1-2]"]
    assert [line.split()[0] for line in lines[2:]] == ["41", "42_3", "43"]


# `sacct -X -n -P -o JobID,JobName,State,Elapsed,ExitCode,NNodes,NodeList,Reason` as the local cluster
# printed it.
SACCT_SAMPLE = (
    "201|stockpredict-train|COMPLETED|00:01:12|0:0|2|node[1-2]|None\n"
    "202|wrap|COMPLETED|00:00:01|0:0|1|node1|None\n"
    "203|my|own|name|FAILED|00:00:09|1:0|1|node2|NonZeroExitCode\n"
    "204_1|stockpredict-train|CANCELLED by 0|00:00:30|0:15|1|node1|None\n"
    "205|stockpredict-report|PENDING|00:00:00|0:0|1|None assigned|Dependency\n")


def test_sacct_rows_keep_a_name_with_the_delimiter_whole():
    rows = sacct_rows(SACCT_SAMPLE, slurmjobs.SACCT_FIELDS)
    assert [r["JobID"] for r in rows] == ["201", "202", "203", "204_1", "205"]
    assert rows[2]["JobName"] == "my|own|name" and rows[2]["ExitCode"] == "1:0"
    assert rows[2]["NodeList"] == "node2"
    assert rows[0]["Elapsed"] == "00:01:12" and rows[0]["NNodes"] == "2"


def test_make_status_lists_finished_jobs_from_sacct(tmp_path):
    results = tmp_path / "results"
    _record(results, "runs", "20261126-143012-417-n2-g1-b32", "203")
    proc = _make_status_with(tmp_path / "bin", results, sacct=f"printf '%s' {shlex.quote(SACCT_SAMPLE)}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("jobs of the last 7 days from sacct (accounting)")
    rows = {line.split()[0]: line.split() for line in lines[2:] if line.strip()}
    assert sorted(rows) == ["201", "203", "204_1", "205"]          # 202 is not this toolkit's
    assert rows["201"] == ["201", "COMPLETED", "00:01:12", "2", "stockpredict-train", "-", "0:0", "node[1-2]"]
    assert rows["203"][1:4] + rows["203"][5:] == ["FAILED", "00:00:09", "1", "20261126-143012-417-n2-g1-b32",
                                                  "1:0", "node2"]
    assert rows["204_1"][1] == "CANCELLED" and rows["205"][-1] == "(Dependency)"


def test_logs_of_an_unknown_run_says_how_to_ask(tmp_path):
    proc = _cli("logs", "no-such-run", "--results", str(tmp_path))
    assert proc.returncode == 2 and "make logs RUN=<run-id>" in proc.stderr


# --- real jobs on the local cluster ----------------------------------------------------------------

def _submitted(stdout: str) -> list[str]:
    return re.findall(r"^Submitted batch job (\d+)$", stdout, re.MULTILINE)


@pytest.mark.cluster
def test_make_submit_two_nodes_completes_and_writes_timing(slurm_cluster, tiny_dataset, tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run([*MAKE, "submit", "NODES=2", "GPUS=1", "EPOCHS=1", f"DATA={tiny_dataset}",
                           f"RESULTS={results}"], capture_output=True, text=True, env=slurm_cluster.env)
    assert proc.returncode == 0, proc.stderr
    (job_id,) = _submitted(proc.stdout)
    (run_dir,) = (results / "runs").iterdir()
    assert RUN_ID_RE.match(run_dir.name).groups() == ("2", "1", str(TrainConfig.batch_size))  # the default
    assert str(run_dir / f"slurm-{job_id}.out") in proc.stdout
    assert str(run_dir / "timing.jsonl") in proc.stdout
    state = slurm_cluster.wait(job_id, timeout_s=240)
    log_text = (run_dir / f"slurm-{job_id}.out").read_text()
    assert state == "COMPLETED", log_text
    events = read_json_lines(run_dir / "timing.jsonl")
    start = next(e for e in events if e["event"] == "run_start")
    assert start["ranks"] == 2 and start["nodes"] == 2 and start["job_id"] == job_id
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1]
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "completed"

    status = subprocess.run([*MAKE, "status", f"RESULTS={results}"], capture_output=True, text=True,
                            env=slurm_cluster.env)
    assert status.returncode == 0 and "JOBID" in status.stdout, status.stderr
    logs = subprocess.run([*MAKE, "logs", f"RUN={run_dir.name}", f"RESULTS={results}"], capture_output=True,
                          text=True, env=slurm_cluster.env)
    assert logs.returncode == 0, logs.stderr
    assert f"slurm-{job_id}.out" in logs.stdout and "training finished" in logs.stdout


@pytest.mark.cluster
def test_make_allreduce_bench_records_a_run_the_report_fits(slurm_cluster, tiny_dataset, tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run([*MAKE, "allreduce-bench", "NODES=2", "ITERATIONS=20", f"DATA={tiny_dataset}",
                           f"RESULTS={results}"], capture_output=True, text=True, env=slurm_cluster.env)
    assert proc.returncode == 0, proc.stderr
    (job_id,) = _submitted(proc.stdout)
    (run_dir,) = (results / "runs").iterdir()
    state = slurm_cluster.wait(job_id, timeout_s=240)
    log_text = (run_dir / f"slurm-{job_id}.out").read_text()
    assert state == "COMPLETED", log_text
    assert "allreduce benchmark finished" in log_text
    events = read_json_lines(run_dir / "timing.jsonl")
    start = events[0]
    assert (start["kind"], start["ranks"], start["nodes"], start["job_id"]) == ("allreduce", 2, 2, job_id)
    assert [e["steps"] for e in events if e["event"] == "epoch"] == [20, 20, 20]
    assert events[-1]["status"] == "completed" and (run_dir / "allreduce.json").is_file()
    # The report lists it as a benchmark (it has no dataset, so alone it is a one-line error).
    report = subprocess.run([sys.executable, "-m", "stockpredict.report", "--runs", str(results / "runs"),
                             "--out", str(results), "--no-plots"], capture_output=True, text=True, cwd=REPO)
    assert report.returncode == 2, report.stderr
    assert report.stderr.strip().splitlines()[-1] == (
        f"error: only allreduce benchmarks in {results / 'runs'}: no training run to report on")


@pytest.mark.cluster
def test_make_sweep_one_and_two_nodes_completes(slurm_cluster, tiny_dataset, tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run([*MAKE, "sweep", 'NODES_LIST=1 2', "BATCH_LIST=64", "MODE=strong", "EPOCHS=1",
                           f"DATA={tiny_dataset}", f"RESULTS={results}"],
                          capture_output=True, text=True, env=slurm_cluster.env)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"^\s*\d+_\d+\s+\d{8}-", line)]
    assert [(r[2], r[3], r[4], r[5]) for r in rows] == [("1", "1", "64", "64"), ("2", "2", "32", "64")]
    states = {job_id: slurm_cluster.wait(job_id, timeout_s=300) for job_id, *_ in rows}
    assert set(states.values()) == {"COMPLETED"}, states
    for _job_id, run_id, _nodes, ranks, per_rank, *_ in rows:
        start = read_json_lines(results / "runs" / run_id / "timing.jsonl")[0]
        assert start["ranks"] == int(ranks) and start["batch_size_per_rank"] == int(per_rank)
        assert start["global_batch_size"] == 64 and start["mode"] == "strong"


@pytest.mark.cluster
def test_make_report_after_a_training_job_runs_as_a_job_when_it_succeeds(slurm_cluster, tiny_dataset,
                                                                         tmp_path):
    """A chain on the real cluster: the report job waits for the training job (afterok) and builds
    results/scaling.md from its run; a second report job asked to run only if the training failed
    (afternotok) never starts, and squeue says why."""
    results = tmp_path / "results"
    train = subprocess.run([*MAKE, "submit", "NODES=1", "EPOCHS=2", "BATCH=256", f"DATA={tiny_dataset}",
                            f"RESULTS={results}"], capture_output=True, text=True, env=slurm_cluster.env)
    assert train.returncode == 0, train.stderr
    (train_id,) = _submitted(train.stdout)
    job_ids = {}
    for kind in ("afterok", "afternotok"):
        proc = subprocess.run([*MAKE, "report", f"AFTER={train_id}", f"AFTER_KIND={kind}",
                               f"RESULTS={results}"], capture_output=True, text=True, env=slurm_cluster.env)
        assert proc.returncode == 0, proc.stderr
        (job_ids[kind],) = _submitted(proc.stdout)
    assert slurm_cluster.info(job_ids["afterok"]).get("Dependency") == f"afterok:{train_id}(unfulfilled)"
    assert not (results / "scaling.md").exists()  # nothing built on the login node
    try:
        assert slurm_cluster.wait(train_id, timeout_s=240) == "COMPLETED"
        report_state = slurm_cluster.wait(job_ids["afterok"], timeout_s=240)
        (job_dir,) = [p for p in (results / "jobs").iterdir()
                      if json.loads((p / "submit.json").read_text())["job_id"] == job_ids["afterok"]]
        assert report_state == "COMPLETED", (job_dir / f"slurm-{job_ids['afterok']}.out").read_text()
        assert (results / "scaling.md").is_file()
        # The environment table of that report names the code the run ran (run_start.toolkit).
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        with open(results / "environment.csv", newline="") as handle:
            (env_row,) = csv.DictReader(handle)
        assert env_row["runs"] == "1" and env_row["toolkit"].split()[1].startswith(head[:12])
        # What the study cost, built inside the report job: from sacct where the cluster has accounting
        # (slurmdbd started by slurm/local-cluster.sh), else from the run's own records.
        with open(results / "cost.csv", newline="") as handle:
            run_row, total = csv.DictReader(handle)
        accounting = "accounting_storage/slurmdbd" in slurm_cluster.conf.read_text()
        assert (run_row["job_id"], run_row["source"], total["run_id"]) == (
            train_id, "sacct" if accounting else "records", "total")
        elapsed, named = float(run_row["elapsed_seconds"]), float(run_row["named_share"])
        assert elapsed >= float(run_row["train_seconds"]) > 0 and 0.5 < named <= 1.0
        if accounting:
            assert float(run_row["queue_wait_seconds"]) >= 0 and run_row["cpu_efficiency"]
            assert "sacct: 1 of 1 run(s) found" in (results / "scaling.md").read_text()
        never = slurm_cluster.info(job_ids["afternotok"])
        assert (never.get("JobState"), never.get("Reason")) == ("PENDING", "DependencyNeverSatisfied")
    finally:
        subprocess.run(["scancel", *job_ids.values()], env=slurm_cluster.env, capture_output=True)


@pytest.mark.cluster
def test_submitit_path_completes(slurm_cluster, tiny_dataset, tmp_path, monkeypatch, engine):
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    job = submit.submit_training(data=str(tiny_dataset), nodes=2, gpus_per_node=1, epochs=1, batch_size=32,
                                 results=tmp_path / "results", time="00:10:00", engine=engine)
    results = job.results()
    assert results == [0, 0]
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    events = read_json_lines(run_dir / "timing.jsonl")
    assert events[0]["ranks"] == 2 and events[0]["job_id"] == str(job.job_id)
    assert events[0]["engine"] == engine
    assert events[-1]["status"] == "completed" and (run_dir / "model.keras").exists()
    assert json.loads((run_dir / "submit.json").read_text())["submitit"]["cluster"] == "slurm"


# --- dependency chains (AFTER=, AFTER_KIND=) --------------------------------------------------------

@pytest.mark.parametrize("after, kind, expected", [
    ("41", "afterok", ["--dependency=afterok:41"]), ("41:42", "afterany", ["--dependency=afterany:41:42"]),
    ("41 42,43_2", "afternotok", ["--dependency=afternotok:41:42:43_2"]), (["7", "8"], "afterok",
                                                                          ["--dependency=afterok:7:8"]),
    (None, "afterany", [])])
def test_dependency_args_take_several_ids_and_each_kind(after, kind, expected):
    assert submit.dependency_args(after, kind) == expected


@pytest.mark.parametrize("after, kind, message", [("41;id", "afterok", "AFTER"), ("", "afterok", "AFTER"),
                                                  ("x41", "afterok", "AFTER"), ("41", "after", "AFTER_KIND"),
                                                  ("41", "singleton", "AFTER_KIND")])
def test_bad_dependencies_are_one_line_errors(after, kind, message):
    with pytest.raises(UserError, match=message):
        submit.dependency_args(after, kind)


def test_make_submit_sweep_and_report_pass_after_and_after_kind_to_sbatch(tmp_path):
    calls = fake_sbatch(tmp_path / "bin", "4711")
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    results = tmp_path / "res"
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    common = [f"DATA={data}", f"RESULTS={results}", "EPOCHS=1"]
    for target in (["submit", "AFTER=41:42", "AFTER_KIND=afterany"],
                   ["sweep", "NODES_LIST=1 2", "BATCH_LIST=64", "AFTER=41"],
                   ["report", "AFTER=51:52", "AFTER_KIND=afternotok", "NETWORK=ib-hdr"]):
        proc = subprocess.run([*MAKE_NO_SETUP, *target, *common], capture_output=True, text=True, env=env,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("Submitted batch job 4711\n")
        assert target[0] != "sweep" or "    4711_0  " in proc.stdout  # a sweep's runs are array tasks
    submitted = [call.split() for call in calls.read_text().split("----") if call.strip()]
    assert [argv[:2] for argv in submitted] == [["--parsable", "--dependency=afterany:41:42"],
                                                *[["--parsable", "--dependency=afterok:41"]] * 2,
                                                ["--parsable", "--dependency=afternotok:51:52"]]
    report_script = Path(submitted[-1][-1]).read_text()
    (launch,) = [line for line in report_script.splitlines() if " -m stockpredict.report " in line]
    argv = shlex.split(launch.rstrip(" &"))
    assert argv[argv.index("--runs") + 1] == str(results / "runs") and "--network=ib-hdr" in argv
    assert not (results / "scaling.md").exists()  # with AFTER the report is a job, not built here


def test_make_report_with_a_bad_after_kind_is_one_line_and_submits_nothing(tmp_path):
    calls = fake_sbatch(tmp_path / "bin", "4711")
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    proc = subprocess.run([*MAKE_NO_SETUP, "report", "AFTER=41", "AFTER_KIND=whenever",
                           f"RESULTS={tmp_path / 'res'}"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode != 0 and not calls.exists()
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "AFTER_KIND (--after-kind) must be one of afterok, afterany, afternotok" in line
    assert not list((tmp_path / "res").rglob("job.sbatch"))
