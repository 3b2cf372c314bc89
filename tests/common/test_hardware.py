"""The TensorFlow-free CPU affinity helpers (stockpredict/common/hardware.py), checked against the real
process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from stockpredict.common import hardware


def test_affinity_is_what_the_os_reports_and_follows_taskset():
    assert hardware.cpu_affinity() == sorted(os.sched_getaffinity(0))
    assert hardware.affinity_summary()["cpu_affinity_count"] == len(os.sched_getaffinity(0))
    # A child started under taskset on one core sees exactly that core.
    core = hardware.cpu_affinity()[-1]
    out = subprocess.run(["taskset", "-c", str(core), sys.executable, "-c",
                          "import json; "
                          "from stockpredict.common.hardware import cpu_affinity, intra_op_threads; "
                          "print(json.dumps([cpu_affinity(), intra_op_threads()]))"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert json.loads(out) == [[core], 1]


def test_intra_op_threads_split_the_owned_cores_among_ranks():
    owned = len(os.sched_getaffinity(0))
    assert hardware.intra_op_threads(1) == owned
    assert hardware.intra_op_threads(owned) == 1
    assert hardware.intra_op_threads(owned * 3) == 1     # never zero threads
    with pytest.raises(ValueError):
        hardware.intra_op_threads(0)


def test_usable_node_counts_keep_only_counts_with_a_core_per_node():
    assert hardware.usable_node_counts((1, 2, 4), cpus=2) == ([1, 2], [4])
    assert hardware.usable_node_counts((1, 2, 4), cpus=4) == ([1, 2, 4], [])
    assert hardware.usable_node_counts((1, 2, 4, 8), cpus=6) == ([1, 2, 4], [8])
