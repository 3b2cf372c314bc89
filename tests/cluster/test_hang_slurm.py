"""A hung rank on the local Slurm cluster (issue 25): rank 1 of a 2-node job is stopped with SIGSTOP
mid-run, as a frozen node or a stalled file system stops it. Rank 0's stall watchdog
(stockpredict/job/watchdog.py) names it and ends the job, which fails (not requeued: docs/training.md,
"Hangs"). Both engines (the `engine` fixture); real sbatch, srun, trainer and HDF5 file."""

from __future__ import annotations

import signal
import time

import psutil
import pytest
from test_faults_slurm import _events, _rank_process, _submit

from conftest import wait_until

pytestmark = pytest.mark.cluster

STALL_TIMEOUT = 20  # seconds; the default is 300


def test_stopped_rank_ends_the_job_naming_it(slurm_cluster, tiny_dataset, tmp_path, engine):
    job_id, run_dir = _submit(slurm_cluster, tiny_dataset, tmp_path, "--nodes", "2", "--gpus-per-node", "1",
                              "--epochs", "20", "--batch-size", "64", "--engine", engine,
                              "--stall-timeout", str(STALL_TIMEOUT))
    assert f"--stall-timeout {STALL_TIMEOUT}" in (run_dir / "job.sbatch").read_text()
    epoch_done = lambda: any(e["event"] == "epoch" for e in _events(run_dir))  # noqa: E731
    assert wait_until(epoch_done, timeout_s=180), (run_dir / f"slurm-{job_id}.out").read_text()
    victim = _rank_process(run_dir, job_id, rank="1")
    assert victim is not None, "rank 1 of the job is not running"
    host = victim.environ()["SLURMD_NODENAME"]
    try:
        victim.send_signal(signal.SIGSTOP)  # in epoch 2: rank 0 then waits in its next allreduce
        stopped_at = time.monotonic()
        # The goal's bound: the job ends within the stall timeout + 60 s (TimeoutError otherwise).
        state = slurm_cluster.wait(job_id, timeout_s=STALL_TIMEOUT + 60)
        ended_after = time.monotonic() - stopped_at
    finally:
        try:  # nothing may outlive the test: a stopped process ignores everything but SIGKILL
            victim.send_signal(signal.SIGCONT)
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    log_text = (run_dir / f"slurm-{job_id}.out").read_text()
    print(f"{engine}: job {job_id} ended {ended_after:.1f} s after SIGSTOP")
    assert state == "FAILED", log_text
    named = [line for line in log_text.splitlines() if f"rank 1 on host {host} stopped answering" in line]
    assert len(named) == 1, log_text
    print(named[0])
    assert named[0].startswith("error: ") and f"stall timeout {STALL_TIMEOUT} s" in named[0]
    assert "stockpredict: training FAILED" in log_text and "requeueing" not in log_text
    assert slurm_cluster.info(job_id).get("Restarts") == "0"
    ends = [e for e in _events(run_dir) if e["event"] == "run_end"]
    assert ends and ends[-1]["status"] == "failed"
