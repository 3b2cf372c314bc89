"""TF_CONFIG for tf.distribute's MultiWorkerMirroredStrategy, built from the Slurm step's variables.

TensorFlow's own `SlurmClusterResolver` has three traps on real clusters (docs/training.md, "Engines"):
it drops the zero padding of host names (`n[009-011]` becomes n9..n11, tensorflow/tensorflow#49956),
it takes GPU counts from CUDA_VISIBLE_DEVICES or nvidia-smi (wrong under --gpus-per-task), and it
uses the fixed port 8888 (two jobs on one node collide). This module replaces it with pure functions:

- `expand_hostlist("n[009-011],gpu1")` -> ["n009", "n010", "n011", "gpu1"] (Slurm's syntax, padding kept);
- `expand_tasks_per_node("2(x3),1")` -> [2, 2, 2, 1] (SLURM_STEP_TASKS_PER_NODE);
- `task_ports(...)`: a port base derived from the job and step id, and one port per task sharing an
  address (several ranks per node, or the local test cluster's virtual nodes, which all live on this
  machine);
- `slurm_cluster(environ)` -> `WorkerCluster` (workers, this task's index, local rank) and its
  `tf_config()`, the JSON TensorFlow reads.

TensorFlow-free: `scontrol` (when on PATH) only maps node names to addresses (NodeAddr), which on the
local cluster are this machine's host name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from stockpredict.common.errors import UserError

# Ports: below Linux's ephemeral range (32768-60999), above Slurm's and this project's daemons
# (6817/6818, the local cluster's 17000-22999). PORT_SLOTS job/step slots of PORTS_PER_SLOT ports each.
PORT_BASE = 23000
PORTS_PER_SLOT = 32       # at most this many tasks on one address (e.g. 8 GPUs x 4 virtual nodes)
PORT_SLOTS = 300          # 23000 .. 32599
PORT_BASE_ENV = "STOCKPREDICT_TF_PORT_BASE"  # override the derived base (e.g. a site's firewall range)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: "a[1,2],b" -> ["a[1,2]", "b"]."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise UserError(f"host list {text!r}: unbalanced ']'")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise UserError(f"host list {text!r}: unbalanced '['")
    parts.append(text[start:])
    return [p for p in parts if p]


def _expand_range(spec: str, whole: str) -> list[str]:
    """"009-011" -> ["009", "010", "011"]; the width of the low bound is kept (Slurm's rule)."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", spec)
    if not match:
        raise UserError(f"host list {whole!r}: {spec!r} is not a number or range")
    low, high = match.group(1), match.group(2) or match.group(1)
    if int(high) < int(low):
        raise UserError(f"host list {whole!r}: range {spec!r} runs backwards")
    return [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]


def _expand_name(name: str, whole: str) -> list[str]:
    """One host-list item with any number of bracket groups: "r[1-2]n[01-02]" -> 4 names."""
    match = re.search(r"\[([^\[\]]*)\]", name)
    if not match:
        if "[" in name or "]" in name:
            raise UserError(f"host list {whole!r}: unbalanced brackets in {name!r}")
        return [name]
    head, tail = name[:match.start()], name[match.end():]
    values = [v for part in match.group(1).split(",") for v in _expand_range(part, whole)]
    return [head + value + rest for value in values for rest in _expand_name(tail, whole)]


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list (SLURM_STEP_NODELIST) -> node names in order, zero padding kept.

    Same result as `scontrol show hostnames`: "n[009-011]" -> n009, n010, n011; "a[1,3-4]-ib,b" ->
    a1-ib, a3-ib, a4-ib, b.
    """
    names = [n for item in _split_top_level(hostlist.strip()) for n in _expand_name(item, hostlist)]
    if not names:
        raise UserError(f"host list {hostlist!r} names no host")
    return names


def expand_tasks_per_node(text: str) -> list[int]:
    """SLURM_STEP_TASKS_PER_NODE ("2(x3),1") -> tasks on each node of the step, in node order."""
    counts = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not match:
            raise UserError(f"tasks per node {text!r}: cannot read {item!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def port_base(job_id: str | int | None, step_id: str | int | None = None,
              environ: Mapping[str, str] = os.environ) -> int:
    """The first port of this job step: PORT_BASE + a slot derived from (job id, step id).

    Distinct steps of one job (a retry after preemption in the same allocation) get distinct slots, so a
    new step never waits for the old one's sockets. Jobs whose ids are PORT_SLOTS apart share a slot
    only if they also share a node.
    """
    if environ.get(PORT_BASE_ENV, "").isdigit():
        return int(environ[PORT_BASE_ENV])
    job = int(job_id) if str(job_id or "").isdigit() else 0
    step = int(step_id) if str(step_id or "").isdigit() else 0
    return PORT_BASE + ((job * 7 + step) % PORT_SLOTS) * PORTS_PER_SLOT


def task_ports(addresses: Sequence[str], base: int) -> list[int]:
    """One port per task: tasks on distinct addresses all get `base`; tasks sharing an address (several
    ranks per node, or virtual nodes on one machine) get base, base+1, ... in task order."""
    seen: dict[str, int] = {}
    ports = []
    for address in addresses:
        index = seen.get(address, 0)
        if index >= PORTS_PER_SLOT:
            raise UserError(f"{index + 1} tasks on {address}: at most {PORTS_PER_SLOT} tasks per host "
                            f"(set {PORT_BASE_ENV} to a free range if you need more)")
        seen[address] = index + 1
        ports.append(base + index)
    return ports


@dataclass(frozen=True)
class WorkerCluster:
    """The workers of one job step (host:port in task order) and this task's place among them."""

    workers: tuple[str, ...]
    index: int          # this task's rank
    local_rank: int     # this task's index among the tasks on its node

    @property
    def size(self) -> int:
        return len(self.workers)

    def tf_config(self) -> str:
        """The TF_CONFIG value MultiWorkerMirroredStrategy reads (every worker is a peer; worker 0 is
        the chief by convention)."""
        return json.dumps({"cluster": {"worker": list(self.workers)},
                           "task": {"type": "worker", "index": self.index}})


def scontrol_addresses(nodes: Sequence[str]) -> dict[str, str]:
    """{node name: NodeAddr} from `scontrol show node -o`; {} when scontrol is missing or fails.

    On most clusters NodeAddr is the node name; on the local test cluster every virtual node's address
    is this machine's host name, which is what the workers must connect to.
    """
    if shutil.which("scontrol") is None:
        return {}
    try:
        out = subprocess.run(["scontrol", "show", "node", "-o", ",".join(nodes)], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.splitlines():
        name, addr = re.search(r"NodeName=(\S+)", line), re.search(r"NodeAddr=(\S+)", line)
        if name and addr:
            found[name.group(1)] = addr.group(1)
    return found


def slurm_cluster(environ: Mapping[str, str] = os.environ,
                  addresses_of: Callable[[Sequence[str]], Mapping[str, str]] = scontrol_addresses
                  ) -> WorkerCluster | None:
    """The workers of the current srun step, or None outside one (then: one worker, no TF_CONFIG).

    Tasks are placed on nodes in Slurm's default block order (the first SLURM_STEP_TASKS_PER_NODE[0]
    tasks on the first node, ...); a step started with another --distribution is rejected in one line
    rather than deadlocking on wrong addresses.
    """
    if not environ.get("SLURM_STEP_NODELIST") or not environ.get("SLURM_PROCID", "").isdigit():
        return None
    nodes = expand_hostlist(environ["SLURM_STEP_NODELIST"])
    per_node = expand_tasks_per_node(environ.get("SLURM_STEP_TASKS_PER_NODE") or "1")
    if len(per_node) != len(nodes):
        raise UserError(f"SLURM_STEP_TASKS_PER_NODE={environ.get('SLURM_STEP_TASKS_PER_NODE')!r} does not "
                        f"match the {len(nodes)} nodes of "
                        f"SLURM_STEP_NODELIST={environ['SLURM_STEP_NODELIST']!r}")
    task_nodes = [node for node, count in zip(nodes, per_node) for _ in range(count)]
    rank, size = int(environ["SLURM_PROCID"]), int(environ.get("SLURM_STEP_NUM_TASKS") or len(task_nodes))
    if size != len(task_nodes) or rank >= size:
        raise UserError(f"Slurm step of {size} tasks, but its tasks per node add up to {len(task_nodes)}")
    own = environ.get("SLURMD_NODENAME")
    if own and own != task_nodes[rank]:
        raise UserError(f"task {rank} runs on {own}, but block distribution puts it on {task_nodes[rank]}: "
                        f"the tf engine needs srun's default --distribution=block")
    mapped = addresses_of(nodes)
    addresses = [mapped.get(node, node) for node in task_nodes]
    ports = task_ports(addresses, port_base(environ.get("SLURM_JOB_ID"), environ.get("SLURM_STEP_ID"),
                                            environ))
    local_rank = task_nodes[:rank].count(task_nodes[rank])
    return WorkerCluster(workers=tuple(f"{a}:{p}" for a, p in zip(addresses, ports)), index=rank,
                         local_rank=local_rank)


def tf_config_cluster(tf_config: str) -> WorkerCluster:
    """A WorkerCluster from an existing TF_CONFIG (set by hand or by another launcher)."""
    try:
        parsed = json.loads(tf_config)
        workers = tuple(parsed["cluster"]["worker"])
        index = int(parsed["task"]["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"TF_CONFIG is not usable ({err}); expected "
                        '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": N}}') from None
    hosts = [w.rsplit(":", 1)[0] for w in workers]
    return WorkerCluster(workers=workers, index=index, local_rank=hosts[:index].count(hosts[index]))
