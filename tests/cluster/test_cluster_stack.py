"""Smoke tests that prove the stack: TensorFlow + Horovod under Slurm (MPI via PMIx) and horovodrun (Gloo)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, read_json_lines

ALLREDUCE = REPO / "tests" / "programs" / "allreduce.py"


def _write_job(job_dir, nodes: int, extra_directives: str = "") -> "Path":
    script = job_dir / "allreduce.sbatch"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --job-name=smoke-allreduce
        #SBATCH --nodes={nodes}
        #SBATCH --ntasks-per-node=1
        #SBATCH --output={job_dir}/slurm-%j.out
        #SBATCH --time=00:10:00
        {extra_directives}
        set -euo pipefail
        srun --mpi=pmix --kill-on-bad-exit=1 {sys.executable} {ALLREDUCE}
        """))
    return script


def _run_allreduce_job(cluster, job_dir, nodes, extra=""):
    job_id = cluster.sbatch(_write_job(job_dir, nodes, extra))
    state = cluster.wait(job_id, timeout_s=300)
    output = (job_dir / f"slurm-{job_id}.out").read_text()
    assert state == "COMPLETED", f"job {job_id} ended {state}:\n{output}"
    return sorted(read_json_lines(job_dir / f"slurm-{job_id}.out"), key=lambda r: r["rank"])


@pytest.mark.cluster
def test_two_node_srun_pmix_allreduce(slurm_cluster, job_dir):
    ranks = _run_allreduce_job(slurm_cluster, job_dir, nodes=2)
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["size"] == 2 and r["sum"] == 3.0 for r in ranks)
    assert {r["controller"] for r in ranks} == {"mpi"}
    assert {r["slurm_node"] for r in ranks} == {"node1", "node2"}


def _accounting_on() -> bool:
    from conftest import CLUSTER_DIR
    conf = (CLUSTER_DIR / "etc" / "slurm.conf").read_text()
    return "AccountingStorageType=accounting_storage/slurmdbd" in conf


def _sacct_row(cluster, job_id: str, fields: str) -> list[str]:
    """The job's own sacct row (no steps); waits briefly, since slurmctld sends the end record to slurmdbd."""
    import time
    for _ in range(60):
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", fields],
                             capture_output=True, text=True, check=True, env=cluster.env).stdout.strip()
        if out and "COMPLETED" in out:
            return out.split("|")
        time.sleep(0.5)
    return out.split("|")


@pytest.mark.cluster
def test_sacct_answers_for_a_finished_job(slurm_cluster, job_dir):
    if not _accounting_on():
        pytest.skip("local cluster runs without accounting (slurmdbd or mariadb-server not installed)")
    job_id = slurm_cluster.sbatch(_write_job(job_dir, 2))
    assert slurm_cluster.wait(job_id, timeout_s=300) == "COMPLETED"
    fields = "JobName,State,NodeList,ExitCode,AllocTRES"
    name, state, nodes, exit_code, tres = _sacct_row(slurm_cluster, job_id, fields)
    assert (name, state, exit_code) == ("smoke-allreduce", "COMPLETED", "0:0")
    assert re.fullmatch(r"node\[\d-\d\]|node\d,node\d", nodes), nodes  # any two of the four nodes
    assert "node=2" in tres
    # `make status` lists the finished job (found by the job id a run directory records) from sacct.
    run = job_dir / "results" / "runs" / "20261207-000000-000-n2-g0-b32"
    run.mkdir(parents=True)
    (run / "submit.json").write_text(f'{{"job_id": "{job_id}"}}')
    status = subprocess.run([sys.executable, "-m", "stockpredict.submit", "status", "--results",
                             str(job_dir / "results")], capture_output=True, text=True, env=slurm_cluster.env,
                            cwd=REPO, timeout=60)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("jobs of the last 7 days from sacct (accounting)"), status.stdout
    row = next(line.split() for line in status.stdout.splitlines() if line.split()[:1] == [job_id])
    assert row[1] == "COMPLETED" and row[5:] == [run.name, "0:0", nodes], status.stdout


@pytest.mark.cluster
def test_four_nodes_one_gpu_each(slurm_cluster, job_dir):
    ranks = _run_allreduce_job(slurm_cluster, job_dir, nodes=4, extra="#SBATCH --gpus-per-node=1")
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    assert all(r["size"] == 4 and r["sum"] == 10.0 for r in ranks)
    assert len({r["slurm_node"] for r in ranks}) == 4
    # Slurm binds one (fake) GPU per node; the task sees it as device 0.
    assert [r["cuda_visible_devices"] for r in ranks] == ["0", "0", "0", "0"]


@pytest.mark.slow
def test_horovodrun_gloo_two_ranks():
    horovodrun = REPO / ".venv" / "bin" / "horovodrun"
    proc = subprocess.run(
        [str(horovodrun), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(ALLREDUCE)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # horovodrun prefixes each rank's lines with "[rank]<stdout>:"
    records = [line.split(":", 1)[1] for line in proc.stdout.splitlines() if "<stdout>:{" in line]
    import json

    ranks = sorted((json.loads(r) for r in records), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["sum"] == 3.0 and r["controller"] == "gloo" for r in ranks)


@pytest.mark.cluster
def test_cluster_up_twice_is_harmless_and_pid_files_name_its_daemons(slurm_cluster):
    from conftest import CLUSTER_DIR, CLUSTER_SCRIPT

    again = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up", "2"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "already running with 4 nodes" in again.stdout   # never shrunk under running jobs
    conf = (CLUSTER_DIR / "etc" / "slurm.conf").read_text()
    munge_dir = Path(re.search(r"^AuthInfo=socket=(.+)/munge\.socket$", conf, re.MULTILINE).group(1))
    pid_files = sorted((CLUSTER_DIR / "run").glob("*.pid")) + [munge_dir / "munged.pid"]
    commands = {f.name: open(f"/proc/{int(f.read_text())}/cmdline").read().replace("\0", " ")
                for f in pid_files}
    expected = ["munged.pid", "slurmctld.pid", *(["slurmdbd.pid"] if _accounting_on() else []),
                *(f"slurmd-node{k}.pid" for k in range(1, 5))]
    assert sorted(commands) == sorted(expected)
    assert all(name.split(".")[0].split("-")[0] in cmd for name, cmd in commands.items()), commands


def _free_port_block(size: int) -> int:
    """A port p with p..p+size-1 free on 127.0.0.1 now (at most a race with another process)."""
    for base in range(21000, 40000, 97):
        probes = [socket.socket() for _ in range(size)]
        try:
            for k, probe in enumerate(probes):
                probe.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    pytest.skip("no free block of ports")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("slurmctld"), reason="needs root and Slurm")
@pytest.mark.parametrize("taken", ["ctld", "db"])
def test_a_port_held_by_another_cluster_is_one_line_before_anything_starts(tmp_path, taken):
    """A second checkout's `make cluster-up` (or make test) while another one's cluster holds the ports:
    one line naming the port and both fixes, nothing written or started."""
    from conftest import CLUSTER_SCRIPT

    if taken == "db" and not shutil.which("mariadbd"):
        pytest.skip("no accounting packages: the database port is not used")
    ctld = _free_port_block(4)  # ctld, slurmdbd (+1), the database (+2), node1's slurmd (+3)
    slurmd_base = ctld + 2
    held = ctld if taken == "ctld" else ctld + 2  # the database port: derived from the ctld port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", held))
        holder.listen()
        # Without CLUSTER_DBD_PORT/CLUSTER_DB_PORT from the caller's shell: the ports derive from ctld here.
        env = {k: v for k, v in os.environ.items() if k not in ("CLUSTER_DBD_PORT", "CLUSTER_DB_PORT")}
        env.update(CLUSTER_DIR=str(tmp_path / "cluster"), CLUSTER_CTLD_PORT=str(ctld),
                   CLUSTER_SLURMD_BASE_PORT=str(slurmd_base))
        proc = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up", "1"], capture_output=True, text=True,
                              env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"local-cluster: port {held} is already in use (another checkout's local cluster? run make "
        "cluster-down there), or choose free ports: CLUSTER_CTLD_PORT=<p> CLUSTER_SLURMD_BASE_PORT=<q>"]
    assert not (tmp_path / "cluster" / "etc" / "slurm.conf").exists()
    assert not list((tmp_path / "cluster").glob("run/*.pid"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_cluster_script_refuses_to_run_without_root():
    from conftest import CLUSTER_SCRIPT

    # The script comes on stdin so that 'nobody' needs no access to the checkout's directories.
    with open(CLUSTER_SCRIPT) as script:
        proc = subprocess.run(["runuser", "-u", "nobody", "--", "bash", "-s", "up", "1"], stdin=script,
                              capture_output=True, text=True, cwd="/tmp")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "local-cluster: must run as root (slurmd runs jobs as their owner); " \
                                  "try: sudo make cluster-up"


@pytest.mark.cluster
def test_virtual_nodes_run_their_tasks_on_cores_of_their_own(slurm_cluster, job_dir):
    """The local cluster pins each slurmd to its own core(s) (etc/node-cpus) and tasks inherit it: the
    tasks of a job on as many nodes as this machine has cores (at most 4) get disjoint CPU affinities."""
    from conftest import CLUSTER_DIR
    from stockpredict.common.hardware import cpu_affinity

    nodes = max(2, min(4, len(cpu_affinity())))
    probe = "import json, os; from stockpredict.common.hardware import affinity_summary; " \
            "print(json.dumps(dict(node=os.environ['SLURMD_NODENAME'], **affinity_summary())))"
    script = job_dir / "affinity.sbatch"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --nodes={nodes}
        #SBATCH --ntasks-per-node=1
        #SBATCH --output={job_dir}/slurm-%j.out
        #SBATCH --time=00:05:00
        set -euo pipefail
        srun --kill-on-bad-exit=1 {sys.executable} -c "{probe}"
        """))
    job_id = slurm_cluster.sbatch(script)
    state = slurm_cluster.wait(job_id, timeout_s=120)
    output = (job_dir / f"slurm-{job_id}.out").read_text()
    assert state == "COMPLETED", output
    tasks = read_json_lines(job_dir / f"slurm-{job_id}.out")
    assert len({t["node"] for t in tasks}) == nodes, output
    cpu_sets = [set(t["cpu_affinity"]) for t in tasks]
    assert all(cpus for cpus in cpu_sets) and sum(map(len, cpu_sets)) == len(set().union(*cpu_sets)), tasks
    # The same layout the cluster script wrote for those nodes.
    layout = dict(line.split() for line in (CLUSTER_DIR / "etc" / "node-cpus").read_text().splitlines())
    for task in tasks:
        expected = layout[task["node"]]
        first, _, last = expected.partition("-")
        assert task["cpu_affinity"] == list(range(int(first), int(last or first) + 1)), (task, expected)
