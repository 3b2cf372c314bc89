"""Which CPUs this process may run on, and how many intra-op threads a rank should use. TensorFlow-free.

On the local test cluster every virtual node (one `slurmd -N nodeK`) is started pinned to its own
core(s) by slurm/local-cluster.sh, and its jobs' tasks inherit that CPU affinity. Recording the affinity
of every rank in `run_start.hardware` makes the pinning visible in the timing log: ranks on different
virtual nodes must show different CPU sets, otherwise a scaling measurement timed ranks sharing cores.

    cpu_affinity()            -> [0]          (sorted CPU ids this process may run on)
    affinity_summary()        -> {"cpu_affinity": [0], "cpu_affinity_count": 1}
    intra_op_threads(1)       -> 1            (one thread per owned core, split among the node's ranks)
"""

from __future__ import annotations

import os


def cpu_affinity(pid: int = 0) -> list[int]:
    """Sorted ids of the CPUs `pid` (0: this process) may run on; every CPU where the OS cannot tell."""
    try:
        return sorted(os.sched_getaffinity(pid))
    except (AttributeError, OSError):  # macOS has no sched_getaffinity
        return list(range(os.cpu_count() or 1))


def affinity_summary(pid: int = 0) -> dict:
    """The `run_start.hardware` fields about pinning: the CPU ids and how many there are."""
    cpus = cpu_affinity(pid)
    return {"cpu_affinity": cpus, "cpu_affinity_count": len(cpus)}


def intra_op_threads(ranks_on_this_cpuset: int = 1, pid: int = 0) -> int:
    """TensorFlow intra-op threads for one rank: the CPUs it may use, shared evenly by the ranks that
    share that CPU set (e.g. Slurm's ntasks-per-node when the node's tasks are not bound); at least 1.
    More threads than cores only makes the ranks preempt each other."""
    if ranks_on_this_cpuset < 1:
        raise ValueError(f"ranks_on_this_cpuset must be >= 1, got {ranks_on_this_cpuset}")
    return max(1, len(cpu_affinity(pid)) // ranks_on_this_cpuset)


def usable_node_counts(candidates: list[int] | tuple[int, ...], cpus: int) -> tuple[list[int], list[int]]:
    """Split node counts into those whose virtual nodes all get cores of their own on `cpus` cores
    and those that would share cores (and so time-share instead of scaling)."""
    fits = [n for n in candidates if n <= cpus]
    return fits, [n for n in candidates if n > cpus]
