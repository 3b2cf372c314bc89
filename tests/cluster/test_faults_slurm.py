"""Failures on the local Slurm cluster (issues 8, 14 and 16): the time-limit signal + requeue + resume, a
preemption by a job in the `urgent` partition (SIGTERM, grace time, requeue, resume mid-epoch), a dead
rank (fails fast, never requeued), a zero-length newest checkpoint, a disk that fills during a checkpoint,
and concurrent submissions. Real sbatch, real srun --mpi=pmix (plain srun for the tf engine), real trainer,
real HDF5 file. The requeue and dead-rank tests run for both engines (the `engine` fixture)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_faults_units import fill, tmpfs

from conftest import REPO, read_json_lines, wait_until
from stockpredict.common.signals import REQUEUE_SIGNALS
from stockpredict.job import checkpoints
from stockpredict.report.restarts import restarts_of

pytestmark = pytest.mark.cluster


def _submit(cluster, tiny_dataset, results: Path, *argv: str) -> tuple[str, Path]:
    proc = subprocess.run([sys.executable, "-m", "stockpredict.submit", "train", "--data", str(tiny_dataset),
                           "--results", str(results), *argv], capture_output=True, text=True,
                          env=cluster.env, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.splitlines()[0].removeprefix("Submitted batch job ")
    run_id = proc.stdout.splitlines()[1].split()[1].rstrip(":")
    return job_id, results / "runs" / run_id


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "timing.jsonl"
    return read_json_lines(path) if path.exists() else []


def _scontrol(cluster, *args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, env=cluster.env, capture_output=True)


@pytest.mark.parametrize("requeue_signal", REQUEUE_SIGNALS)
def test_signal_during_epoch_two_requeues_and_resumes(slurm_cluster, tiny_dataset, tmp_path, engine,
                                                      requeue_signal):
    """Each allowed requeue signal (make SIGNAL=) on each engine: the batch shell forwards it, the ranks
    checkpoint mid-run and exit 75, the job requeues and resumes (USR1 in an old script:
    test_old_job_scripts.py)."""
    job_id, run_dir = _submit(slurm_cluster, tiny_dataset, tmp_path, "--nodes", "2", "--gpus-per-node", "1",
                              "--epochs", "5", "--batch-size", "64", "--engine", engine,
                              "--requeue-signal", requeue_signal)
    assert f"#SBATCH --signal=B:{requeue_signal}@120" in (run_dir / "job.sbatch").read_text().splitlines()
    # 5 short epochs: after the epoch-1 event the signal needs time to land before the run ends.
    epoch_done = lambda: any(e["event"] == "epoch" and e["epoch"] == 1 for e in _events(run_dir))  # noqa: E731
    assert wait_until(epoch_done, timeout_s=180), (run_dir / f"slurm-{job_id}.out").read_text()
    # What Slurm does before the time limit (--signal=B:<signal>@...): signal the batch shell only.
    subprocess.run(["scancel", "--batch", f"--signal={requeue_signal}", job_id], check=True,
                   env=slurm_cluster.env)
    requeued = lambda: slurm_cluster.info(job_id).get("Restarts") == "1"  # noqa: E731
    assert wait_until(requeued, timeout_s=90), (run_dir / f"slurm-{job_id}.out").read_text()
    _release_when_pending(slurm_cluster, job_id)  # not after its ~2.5 min BeginTime
    state = slurm_cluster.wait(job_id, timeout_s=240)
    log_text = (run_dir / f"slurm-{job_id}.out").read_text()
    assert state == "COMPLETED", log_text
    assert "requeueing job" in log_text
    assert f"ranks stopped after SIG{requeue_signal} and wrote a checkpoint" in log_text
    assert f"stop signal (SIG{requeue_signal}): checkpoint after" in (run_dir / "train.log").read_text()

    events = _events(run_dir)
    starts = [e for e in events if e["event"] == "run_start"]
    ends = [e for e in events if e["event"] == "run_end"]
    assert len(starts) == 2 and starts[1]["resumed_from_epoch"] >= 1
    assert [e["status"] for e in ends] == ["preempted", "completed"]
    assert sorted(e["epoch"] for e in events if e["event"] == "epoch") == [1, 2, 3, 4, 5]
    assert (run_dir / "model.keras").exists()
    assert all((s["engine"], s["ranks"], s["nodes"]) == (engine, 2, 2) for s in starts)
    checksums = json.loads((run_dir / "metrics.json").read_text())["weights_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # both workers end with equal weights


def _step_daemons(job_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(f"[{job_id}." in part for part in (proc.info["cmdline"] or [])):
            found.append(proc)
    return found


def _rank_process(run_dir: Path, job_id: str, rank: str) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if "stockpredict.train" in cmdline and str(run_dir) in cmdline:
                env = proc.environ()
                if env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_PROCID") == rank:
                    return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_killed_rank_fails_the_job_within_60_seconds(slurm_cluster, tiny_dataset, tmp_path, engine):
    job_id, run_dir = _submit(slurm_cluster, tiny_dataset, tmp_path, "--nodes", "2", "--gpus-per-node", "1",
                              "--epochs", "20", "--batch-size", "64", "--engine", engine)
    assert wait_until(lambda: any(e["event"] == "run_start" for e in _events(run_dir)), timeout_s=180)
    victim = _rank_process(run_dir, job_id, rank="1")
    assert victim is not None, "rank 1 of the job is not running"
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    state = slurm_cluster.wait(job_id, timeout_s=60)  # raises TimeoutError if the job hangs
    elapsed = time.monotonic() - killed_at
    log_text = (run_dir / f"slurm-{job_id}.out").read_text()
    assert state == "FAILED", log_text
    assert elapsed < 60
    assert "stockpredict: training FAILED" in log_text
    # The survivor got SIGTERM from srun --kill-on-bad-exit: no preemption, so no requeue.
    assert slurm_cluster.info(job_id).get("Restarts") == "0" and "requeueing" not in log_text
    ends = [e for e in _events(run_dir) if e["event"] == "run_end"]
    assert ends and ends[-1]["status"] == "failed"


def test_simultaneous_submissions_get_disjoint_run_dirs(slurm_cluster, tiny_dataset, tmp_path):
    argv = [sys.executable, "-m", "stockpredict.submit", "train", "--data", str(tiny_dataset), "--results",
            str(tmp_path), "--nodes", "1", "--epochs", "1", "--batch-size", "128"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=slurm_cluster.env, cwd=REPO) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    job_ids = [out.splitlines()[0].removeprefix("Submitted batch job ") for out, _ in outputs]
    run_dirs = sorted((tmp_path / "runs").iterdir())
    assert len(set(job_ids)) == 2 and len(run_dirs) == 2
    states = {j: slurm_cluster.wait(j, timeout_s=240) for j in job_ids}
    assert set(states.values()) == {"COMPLETED"}, states
    owners = set()
    for run_dir in run_dirs:
        record = json.loads((run_dir / "submit.json").read_text())
        events = _events(run_dir)
        # Each directory holds exactly one job's files: its own log, and a timing log of that job only.
        assert [p.name for p in run_dir.glob("slurm-*.out")] == [f"slurm-{record['job_id']}.out"]
        assert {e["job_id"] for e in events if e["event"] == "run_start"} == {record["job_id"]}
        owners.add(record["job_id"])
    assert owners == set(job_ids)


def _release_when_pending(cluster, job_id: str, daemons_of: str | None = None) -> None:
    """Start a requeued job now instead of after its ~2.5 min BeginTime, which Slurm sets for two reasons
    this must respect. A restart reuses step id <job>.0, and on these virtual nodes (one host) a lingering
    slurmstepd still holds that step's PMIx socket: wait for the first attempt's step daemons
    (`daemons_of`: the raw SLURM_JOB_ID they are named by) to exit. And slurmd refuses a batch launch whose
    credential was made in the same whole second as the requeue's kill ("Job N already killed, do not launch
    batch job": the new attempt then ends FAILED at once): so release it only once the clock has moved on
    two seconds from when the job was seen pending, which is after that kill."""
    assert wait_until(lambda: cluster.info(job_id).get("JobState") == "PENDING", timeout_s=60)
    pending_seen = time.time()
    assert wait_until(lambda: not _step_daemons(daemons_of or job_id), timeout_s=60)
    time.sleep(max(0.0, int(pending_seen) + 2 - time.time()))
    _scontrol(cluster, "update", f"JobId={job_id}", "StartTime=now")


def test_preempted_by_an_urgent_job_resumes_mid_epoch(slurm_cluster, tiny_dataset, tmp_path):
    """A job in partition `urgent` needs the training job's nodes: Slurm sends SIGTERM to the ranks (not
    to the batch shell), the ranks agree, rank 0 checkpoints mid-epoch inside the grace time, the script
    sees PreemptTime and requeues, and the next attempt resumes at that step."""
    # Batch 8: about 1000 steps per epoch, so epochs 2 and 3 last many seconds after the urgent job is
    # queued. At batch 64 (124 steps) a quiet machine trained epoch 2 in 1.5 s, the SIGTERM came after the
    # last stop check, the run completed inside the grace time, and Slurm (rightly) did not requeue it; at
    # batch 16 CI once saw the SIGTERM land in epoch 3's first steps, before its first stop check.
    job_id, run_dir = _submit(slurm_cluster, tiny_dataset, tmp_path, "--nodes", "2", "--gpus-per-node", "1",
                              "--epochs", "3", "--batch-size", "8")
    log_path = run_dir / f"slurm-{job_id}.out"
    # After epoch 1: the first stop check of an attempt comes after its first 20 steps, which include
    # building the training graph, and that took longer than the 30 s GraceTime on this loaded 2-core VM.
    epoch_logged = lambda: any(e["event"] == "epoch" for e in _events(run_dir))  # noqa: E731
    assert wait_until(epoch_logged, timeout_s=240, poll_s=0.2), log_path.read_text()
    nodes = slurm_cluster.info(job_id)["NodeList"]
    urgent = subprocess.run(["sbatch", "--parsable", "--partition=urgent", "--nodes=2", f"--nodelist={nodes}",
                             f"--output={tmp_path}/urgent-%j.out", "--wrap", "sleep 1"],
                            env=slurm_cluster.env, capture_output=True, text=True, check=True).stdout.strip()
    assert wait_until(lambda: slurm_cluster.info(job_id).get("Restarts") == "1", timeout_s=60), \
        log_path.read_text()
    assert slurm_cluster.wait(urgent, timeout_s=60) == "COMPLETED"
    _release_when_pending(slurm_cluster, job_id)
    state = slurm_cluster.wait(job_id, timeout_s=240)
    log_text = log_path.read_text()
    assert state == "COMPLETED", log_text
    assert "ranks stopped after preemption (SIGTERM from Slurm) and wrote a checkpoint" in log_text

    events = _events(run_dir)
    starts = [e for e in events if e["event"] == "run_start"]
    assert [e["status"] for e in events if e["event"] == "run_end"] == ["preempted", "completed"]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]  # each epoch logged once
    assert len(starts) == 2 and starts[1]["attempt"] == 1
    assert starts[1]["resumed_from_epoch"] in (1, 2) and starts[1]["resumed_from_step"] > 0  # mid-epoch
    # No step lost: the next attempt resumed exactly where the preempted one wrote its checkpoint.
    train_log = (run_dir / "train.log").read_text()
    stopped = (f"stop signal (SIGTERM): checkpoint after {starts[1]['resumed_from_epoch']} epoch(s) + "
               f"{starts[1]['resumed_from_step']} step(s) written")
    assert stopped in train_log, train_log
    (restart,) = restarts_of(events)
    assert restart.lost_seconds is not None
    print(f"lost to the preemption: {restart.lost_seconds} s; {stopped}")


def test_zero_length_newest_checkpoint_falls_back_and_completes(slurm_cluster, tiny_dataset, tmp_path):
    job_id, run_dir = _submit(slurm_cluster, tiny_dataset, tmp_path, "--nodes", "1", "--epochs", "2",
                              "--batch-size", "256")
    assert slurm_cluster.wait(job_id, timeout_s=240) == "COMPLETED"
    newest = checkpoints.list_checkpoints(run_dir)[-1][2]
    (newest / "weights.data-00000-of-00001").write_bytes(b"")  # what a node crash can leave behind
    for name in ("model.keras", "metrics.json"):
        (run_dir / name).unlink()
    again = slurm_cluster.sbatch(run_dir / "job.sbatch", cwd=run_dir)
    state = slurm_cluster.wait(again, timeout_s=240)
    log_text = (run_dir / f"slurm-{again}.out").read_text()
    assert state == "COMPLETED", log_text
    assert (f"checkpoint {newest.name} is unreadable (weights.data-00000-of-00001 has 0 bytes, expected"
            in log_text)
    assert "resuming from ckpt-e0001-s0000000 instead" in log_text
    starts = [e for e in _events(run_dir) if e["event"] == "run_start"]
    assert (starts[-1]["resumed_from_epoch"], starts[-1]["resumed_from_step"]) == (1, 0)
    assert _events(run_dir)[-1]["status"] == "completed" and (run_dir / "model.keras").exists()


def test_disk_full_during_a_checkpoint_fails_the_job_and_the_previous_checkpoint_resumes(
        slurm_cluster, tiny_dataset, tmp_path):
    job_id, run_dir = _submit(slurm_cluster, tiny_dataset, tmp_path, "--nodes", "2", "--gpus-per-node", "1",
                              "--epochs", "2", "--batch-size", "64")
    log_path = run_dir / f"slurm-{job_id}.out"
    with tmpfs(run_dir / "checkpoints", 1024):  # before the first checkpoint: the job is still starting
        assert wait_until(lambda: any(e["event"] == "epoch" for e in _events(run_dir)), timeout_s=180), \
            log_path.read_text()
        fill(run_dir / "checkpoints")  # epoch 2's checkpoint finds the disk full
        state = slurm_cluster.wait(job_id, timeout_s=120)
        log_text = log_path.read_text()
        assert state == "FAILED", log_text
        assert slurm_cluster.info(job_id).get("Restarts") == "0" and "requeueing" not in log_text
        target = run_dir / "checkpoints" / "ckpt-e0002-s0000000"
        assert (f"error: cannot write {target}: No space left on device (ENOSPC); free space (or quota) "
                "there and rerun") in log_text
        assert "stockpredict: training FAILED" in log_text
        events = _events(run_dir)  # every line whole; the script closed the attempt as failed
        assert [e["event"] for e in events] == ["run_start", "epoch", "run_end"]
        assert events[-1]["status"] == "failed"
        assert checkpoints.read_state(run_dir / "checkpoints" / "ckpt-e0001-s0000000")["epochs_done"] == 1
        (run_dir / "checkpoints" / "filler").unlink()
        again = slurm_cluster.sbatch(run_dir / "job.sbatch", cwd=run_dir)
        assert slurm_cluster.wait(again, timeout_s=240) == "COMPLETED", \
            (run_dir / f"slurm-{again}.out").read_text()
    starts = [e for e in _events(run_dir) if e["event"] == "run_start"]
    assert starts[-1]["resumed_from_epoch"] == 1
    assert [e["epoch"] for e in _events(run_dir) if e["event"] == "epoch"] == [1, 2]


def test_a_sweep_is_one_array_and_a_signalled_task_resumes_alone(slurm_cluster, tiny_dataset, tmp_path):
    """make sweep on one node count: one job array, a task per batch size, each in its own run directory
    with every file of a run. The requeue signal to task 0 requeues task 0 only (named <array>_0, not by
    its SLURM_JOB_ID, which may be the array's id); task 1 runs through once."""
    proc = subprocess.run([sys.executable, "-m", "stockpredict.submit", "sweep", "--data", str(tiny_dataset),
                           "--results", str(tmp_path), "--nodes-list", "1", "--batch-list", "64 128",
                           "--epochs", "4", "--array-max", "2"],
                          capture_output=True, text=True, env=slurm_cluster.env, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Submitted batch job ") and sum("Submitted batch job" in x for x in lines) == 1
    array_id = lines[0].removeprefix("Submitted batch job ")
    (array_dir,) = (tmp_path / "arrays").iterdir()
    assert "#SBATCH --array=0-1%2" in (array_dir / "job.sbatch").read_text().splitlines()
    runs = sorted((tmp_path / "runs").iterdir(), key=lambda p: p.name[-1])
    assert [p.name.rsplit("-", 2)[1:] for p in runs] == [["b64", "t0"], ["b128", "t1"]]
    records = [json.loads((p / "submit.json").read_text()) for p in runs]
    assert [r["job_id"] for r in records] == [f"{array_id}_0", f"{array_id}_1"]
    task0, task1 = f"{array_id}_0", f"{array_id}_1"
    cli = [sys.executable, "-m", "stockpredict.submit"]
    status = subprocess.run([*cli, "status", "--results", str(tmp_path)], capture_output=True, text=True,
                            env=slurm_cluster.env, cwd=REPO, timeout=60)
    assert status.returncode == 0, status.stderr
    shown = {line.split()[0]: line.split()[5] for line in status.stdout.splitlines()[2:]
             if len(line.split()) > 5 and line.split()[5] != "-"}  # "-": another test's job
    assert shown == {task0: runs[0].name, task1: runs[1].name}, status.stdout  # each task is its run

    epoch_done = lambda: any(e["event"] == "epoch" for e in _events(runs[0]))  # noqa: E731
    assert wait_until(epoch_done, timeout_s=240), (runs[0] / f"slurm-{task0}.out").read_text()
    subprocess.run(["scancel", "--batch", "--signal=USR2", task0], check=True, env=slurm_cluster.env)
    assert wait_until(lambda: slurm_cluster.info(task0).get("Restarts") == "1", timeout_s=90), \
        (runs[0] / f"slurm-{task0}.out").read_text()
    raw_id = slurm_cluster.info(task0)["JobId"]  # the task's own SLURM_JOB_ID: its step daemons' name
    _release_when_pending(slurm_cluster, task0, daemons_of=raw_id)
    states = {task: slurm_cluster.wait(task, timeout_s=300) for task in (task0, task1)}
    logs = [(run / f"slurm-{task}.out").read_text() for run, task in zip(runs, (task0, task1))]
    assert states == {task0: "COMPLETED", task1: "COMPLETED"}, logs
    assert f"requeueing job {task0} to resume from it" in logs[0]
    assert slurm_cluster.info(task1).get("Restarts") == "0" and "requeueing" not in logs[1]
    for run, task, attempts in ((runs[0], task0, 2), (runs[1], task1, 1)):
        events = _events(run)
        starts = [e for e in events if e["event"] == "run_start"]
        assert [s["job_id"] for s in starts] == [task] * attempts
        assert sorted(e["epoch"] for e in events if e["event"] == "epoch") == [1, 2, 3, 4]
        assert (run / "model.keras").exists() and (run / f"slurm-{task}.out").is_symlink()
    per_rank = [[e["batch_size_per_rank"] for e in _events(r) if e["event"] == "run_start"] for r in runs]
    assert per_rank == [[64, 64], [128]]
    logs = subprocess.run([*cli, "logs", array_dir.name, "--results", str(tmp_path)], capture_output=True,
                          text=True, env=slurm_cluster.env, cwd=REPO, timeout=60)
    assert logs.returncode == 0 and all(f"slurm-{t}.out (last" in logs.stdout for t in (task0, task1))
