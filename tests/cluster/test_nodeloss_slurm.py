"""A node dies (issue 25): a 2-node job loses its second node mid-run, as in a power loss: that node's slurmd
and every process of the job on it get SIGKILL at once, no signal first. The surviving rank ends, the batch
script finds the node that stopped answering, waits for Slurm to mark it down, requeues; the next attempt
runs on nodes that answer, resumes from the last checkpoint and completes. Then `local-cluster.sh up` (the
`make cluster-up` path) restarts the dead slurmd and returns the node to service, for the later tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
from test_faults_slurm import _events, _release_when_pending, _submit

from conftest import CLUSTER_DIR, CLUSTER_NODES, CLUSTER_SCRIPT, wait_until
from stockpredict.report.restarts import restarts_of

pytestmark = pytest.mark.cluster


def _node_processes(node: str, job_id: str) -> list[psutil.Process]:
    """The job's processes on `node`: its ranks (SLURMD_NODENAME) and their slurmstepd, with every
    descendant of that slurmstepd."""
    stepds: set[psutil.Process] = set()
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("SLURMD_NODENAME") == node and env.get("SLURM_JOB_ID") == job_id:
                stepds.update(p for p in proc.parents() if p.name().startswith("slurmstepd"))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    found = set(stepds)
    for stepd in stepds:
        try:
            found.update(stepd.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return list(found)


def _power_off(node: str, job_id: str) -> int:
    """SIGKILL the node's slurmd and the job's processes on it, all at once; how many processes died."""
    slurmd = int((CLUSTER_DIR / "run" / f"slurmd-{node}.pid").read_text())
    victims = _node_processes(node, job_id)
    os.kill(slurmd, signal.SIGKILL)
    for proc in victims:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return len(victims)


def _node_state(cluster, node: str) -> str:
    return subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], env=cluster.env, capture_output=True,
                          text=True).stdout.strip()


def test_a_node_lost_mid_run_is_requeued_and_resumes_on_healthy_nodes(slurm_cluster, tiny_dataset, tmp_path,
                                                                       engine):
    _lose_a_node(slurm_cluster, tiny_dataset, tmp_path, engine, survivor_exits=False)


def test_when_the_surviving_rank_exits_the_script_finds_the_dead_node_and_requeues(slurm_cluster,
                                                                                  tiny_dataset, tmp_path):
    """The other way a node loss goes: the survivor ends at once (here: killed with the node), srun exits,
    and the batch script's one-task srun probe finds the node gone before Slurm does."""
    log_text = _lose_a_node(slurm_cluster, tiny_dataset, tmp_path, "horovod", survivor_exits=True)
    assert "stopped answering (node failure)" in log_text, log_text


def _lose_a_node(slurm_cluster, tiny_dataset, tmp_path, engine: str, survivor_exits: bool) -> str:
    # Batch 16: epochs of a few seconds, so the node dies inside epoch 2 (or 3), after checkpoint 1.
    job_id, run_dir = _submit(slurm_cluster, tiny_dataset, tmp_path, "--nodes", "2", "--gpus-per-node", "1",
                              "--epochs", "4", "--batch-size", "16", "--engine", engine)
    log_path = run_dir / f"slurm-{job_id}.out"
    epoch_done = lambda: any(e["event"] == "epoch" for e in _events(run_dir))  # noqa: E731
    assert wait_until(epoch_done, timeout_s=240, poll_s=0.2), log_path.read_text()
    info = slurm_cluster.info(job_id)
    hosts = subprocess.run(["scontrol", "show", "hostnames", info["NodeList"]], env=slurm_cluster.env,
                           capture_output=True, text=True, check=True).stdout.split()
    (victim,) = [h for h in hosts if h != info["BatchHost"]]
    try:
        assert _power_off(victim, job_id) >= 2  # at least its slurmstepd and its rank
        if survivor_exits:
            for proc in _node_processes(info["BatchHost"], job_id):
                if "stockpredict.train" in " ".join(proc.cmdline()):
                    proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert wait_until(lambda: slurm_cluster.info(job_id).get("Restarts") == "1", timeout_s=150), \
            log_path.read_text()
        time_to_requeue = time.monotonic() - killed_at
        assert "*" in _node_state(slurm_cluster, victim) or "down" in _node_state(slurm_cluster, victim)
        # Requeued by Slurm, the job waits its BeginTime: release it. Requeued by the script after the node
        # went down, it was seen to start again at once, on other nodes.
        assert wait_until(lambda: slurm_cluster.info(job_id).get("JobState") in ("PENDING", "RUNNING"),
                          timeout_s=60)
        if slurm_cluster.info(job_id).get("JobState") == "PENDING":
            _release_when_pending(slurm_cluster, job_id)
        state = slurm_cluster.wait(job_id, timeout_s=240)
        log_text = log_path.read_text()
        assert state == "COMPLETED", log_text
        # Either the surviving rank ended first and the script found the dead node, or it waited on the
        # lost peer until Slurm marked the node down and requeued the job itself (both seen here).
        assert (f"node(s) {victim} of job {job_id} stopped answering (node failure)" in log_text
                or f"JOB {job_id} ON {info['BatchHost']} CANCELLED AT" in log_text and "DUE TO NODE FAILURE"
                in log_text), log_text
        assert victim not in subprocess.run(
            ["scontrol", "show", "hostnames", slurm_cluster.info(job_id)["NodeList"]], env=slurm_cluster.env,
            capture_output=True, text=True, check=True).stdout.split()

        events = _events(run_dir)
        starts = [e for e in events if e["event"] == "run_start"]
        assert [e["status"] for e in events if e["event"] == "run_end"] == ["preempted", "completed"]
        assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4]  # each epoch once
        epochs_before = sum(1 for e in events[:events.index(starts[1])] if e["event"] == "epoch")
        assert starts[1]["resumed_from_epoch"] == epochs_before  # from the last checkpoint written
        (restart,) = restarts_of(events)
        # Lost work <= one checkpoint interval (an epoch) plus the attempt's start-up.
        epoch_seconds = max(e["train_seconds"] + e["val_seconds"] for e in events if e["event"] == "epoch")
        first_epoch_at = next(e for e in events if e["event"] == "epoch")
        assert restart.lost_seconds is not None
        print(f"node loss ({engine}): requeued {time_to_requeue:.1f} s after the kill; "
              f"lost {restart.lost_seconds} s "
              f"(epoch {epoch_seconds:.1f} s); resumed from epoch {starts[1]['resumed_from_epoch']}; "
              f"first epoch {first_epoch_at['train_seconds']:.1f} s")
    finally:
        # `make cluster-up` heals the cluster: the dead slurmd restarts and the node returns to service.
        proc = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up", str(CLUSTER_NODES)], capture_output=True,
                              text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert f"restarted the slurmd of {victim}" in proc.stdout, proc.stdout
    assert wait_until(lambda: _node_state(slurm_cluster, victim) == "idle", timeout_s=60), \
        _node_state(slurm_cluster, victim)
    return log_text
