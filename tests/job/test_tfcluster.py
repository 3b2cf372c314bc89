"""TF_CONFIG from the Slurm step (stockpredict/job/engine/tfcluster.py): host lists, tasks per node, ports.
Pure
functions; `scontrol show hostnames` is the reference when it is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from stockpredict.common.errors import UserError
from stockpredict.job.engine.tfcluster import (
    PORT_BASE,
    PORTS_PER_SLOT,
    expand_hostlist,
    expand_tasks_per_node,
    port_base,
    slurm_cluster,
    task_ports,
    tf_config_cluster,
)

HOSTLISTS = {
    "n[009-011]": ["n009", "n010", "n011"],             # SlurmClusterResolver makes this n9, n10, n11
    "node1": ["node1"],
    "node[1-2]": ["node1", "node2"],
    "n[8-10]": ["n8", "n9", "n10"],                     # no padding asked for, none added
    "gpu[01,03-04]-ib,login": ["gpu01-ib", "gpu03-ib", "gpu04-ib", "login"],
    "r[1-2]n[01-02]": ["r1n01", "r1n02", "r2n01", "r2n02"],
    "a[098-101]": ["a098", "a099", "a100", "a101"],
}


@pytest.mark.parametrize("hostlist", sorted(HOSTLISTS))
def test_hostlists_expand_in_order_with_zero_padding(hostlist):
    assert expand_hostlist(hostlist) == HOSTLISTS[hostlist]


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol not installed")
@pytest.mark.parametrize("hostlist", sorted(h for h in HOSTLISTS if "]-" not in h))  # 22.05 rejects "]-ib"
def test_expander_agrees_with_scontrol(hostlist, tmp_path):
    conf = tmp_path / "slurm.conf"  # scontrol wants a configuration even to expand a host list
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=x\nPartitionName=p Nodes=x\n")
    out = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True,
                         env=dict(os.environ, SLURM_CONF=str(conf)))
    assert out.returncode == 0, out.stderr
    assert expand_hostlist(hostlist) == out.stdout.split()


@pytest.mark.parametrize("bad", ["n[1-2", "n1-2]", "n[a-b]", "n[3-1]", ""])
def test_malformed_hostlists_are_one_line_errors(bad):
    with pytest.raises(UserError):
        expand_hostlist(bad)


def test_tasks_per_node():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("1") == [1]
    with pytest.raises(UserError):
        expand_tasks_per_node("2(3)")


def test_ports_come_from_the_job_and_step_and_stay_below_the_ephemeral_range():
    bases = {port_base(job, step, environ={}) for job in range(1, 200) for step in (0, 1)}
    assert len(bases) > 100 and min(bases) >= PORT_BASE
    assert max(bases) + PORTS_PER_SLOT <= 32768  # Linux's ephemeral ports start at 32768
    assert port_base("41", "0", environ={}) != port_base("41", "1", environ={})  # a retried step
    assert port_base("41", "0", environ={}) == port_base(41, 0, environ={})
    assert port_base("41", "0", environ={"STOCKPREDICT_TF_PORT_BASE": "40000"}) == 40000


def test_tasks_sharing_an_address_get_distinct_ports():
    assert task_ports(["a", "b", "c"], 24000) == [24000, 24000, 24000]  # one task per real host
    assert task_ports(["vm", "vm", "vm"], 24000) == [24000, 24001, 24002]  # virtual nodes on one host
    assert task_ports(["a", "a", "b", "b"], 24000) == [24000, 24001, 24000, 24001]  # 2 GPUs per node
    with pytest.raises(UserError, match="at most"):
        task_ports(["vm"] * (PORTS_PER_SLOT + 1), 24000)


def _step(procid: int, **extra) -> dict:
    return {"SLURM_JOB_ID": "41", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(procid),
            "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "n[009-010]",
            "SLURM_STEP_TASKS_PER_NODE": "2(x2)", **extra}


def test_a_step_on_two_real_nodes_with_two_tasks_each():
    base = port_base("41", "0", environ={})
    clusters = [slurm_cluster(_step(r), addresses_of=lambda nodes: {}) for r in range(4)]
    assert {c.workers for c in clusters} == {(f"n009:{base}", f"n009:{base + 1}", f"n010:{base}",
                                              f"n010:{base + 1}")}
    assert [(c.index, c.local_rank) for c in clusters] == [(0, 0), (1, 1), (2, 0), (3, 1)]
    config = json.loads(clusters[3].tf_config())
    assert config["task"] == {"type": "worker", "index": 3} and len(config["cluster"]["worker"]) == 4


def test_virtual_nodes_on_one_host_connect_to_its_address_on_distinct_ports():
    env = dict(_step(1), SLURM_STEP_NODELIST="node[1-2]", SLURM_STEP_TASKS_PER_NODE="1(x2)",
               SLURM_STEP_NUM_TASKS="2", SLURMD_NODENAME="node2")
    cluster = slurm_cluster(env, addresses_of=lambda nodes: {n: "vm" for n in nodes})
    base = port_base("41", "0", environ={})
    assert cluster.workers == (f"vm:{base}", f"vm:{base + 1}")
    assert (cluster.index, cluster.local_rank) == (1, 0)


def test_outside_a_step_or_with_another_distribution():
    assert slurm_cluster({"SLURM_JOB_ID": "41"}) is None  # the batch shell itself: no step
    with pytest.raises(UserError, match="distribution=block"):
        slurm_cluster(_step(1, SLURMD_NODENAME="n010"), addresses_of=lambda nodes: {})  # cyclic
    with pytest.raises(UserError, match="does not match"):
        slurm_cluster(_step(0, SLURM_STEP_TASKS_PER_NODE="4"), addresses_of=lambda nodes: {})


def test_an_existing_tf_config_is_read_back():
    cluster = tf_config_cluster('{"cluster": {"worker": ["h:1", "h:2", "g:1"]}, "task": {"type": "worker", '
                                '"index": 1}}')
    assert (cluster.size, cluster.index, cluster.local_rank) == (3, 1, 1)
    with pytest.raises(UserError, match="TF_CONFIG"):
        tf_config_cluster('{"cluster": {}}')
