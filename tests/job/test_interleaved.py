"""stockpredict/job/interleaved.py: the summary of the rounds, and the srun step that runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stockpredict.common.errors import UserError
from stockpredict.control.interleaved_launch import follow, srun_command
from stockpredict.job.interleaved import summarise


def test_the_speedup_is_the_median_of_each_rounds_own_ratio():
    # The host slows down between rounds: the 1-rank median over the 2-rank median would say 1.5x,
    # while every round, timed within the same second, says 2x or more.
    summary = summarise([20.0, 30.0, 44.0], [10.0, 15.0, 20.0])
    assert summary["speedup"] == pytest.approx(2.0)
    assert summary["one_rank_ms_per_step"] == 30.0 and summary["n_rank_ms_per_step"] == 15.0
    q1, median, q3 = summary["speedup_quartiles"]
    assert q1 <= median <= q3 and median == pytest.approx(2.0)


def test_one_round_and_mismatched_rounds():
    assert summarise([30.0], [20.0])["speedup_quartiles"] == [1.5, 1.5, 1.5]
    with pytest.raises(ValueError):
        summarise([30.0, 31.0], [20.0])
    with pytest.raises(ValueError):
        summarise([], [])


def test_the_srun_step_runs_the_module_on_one_rank_per_node():
    cmd = srun_command("d.h5", "o.json", nodes=2, cpus_per_task=3, rounds=4, steps=7)
    assert cmd[:6] == ["srun", "--mpi=pmix", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                       "--cpus-per-task=3"]
    assert cmd[6:9] == [sys.executable, "-m", "stockpredict.interleaved"]
    assert cmd[cmd.index("--rounds") + 1] == "4" and cmd[cmd.index("--steps") + 1] == "7"


def test_follow_passes_on_rank_0s_lines_and_fails_in_one_line():
    seen = []
    follow([sys.executable, "-c", "print('noise'); print('interleaved: round 1/1: ok')"], seen.append, 60)
    assert seen == ["round 1/1: ok"]
    with pytest.raises(UserError, match=r"srun exit 3\): boom$"):
        follow([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], seen.append, 60)


def test_bad_arguments_exit_before_tensorflow_loads():
    cmd = [sys.executable, "-m", "stockpredict.interleaved", "--data", "x.h5", "--rounds", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "must be >= 1" in proc.stderr and "Traceback" not in proc.stderr


def test_follow_stops_a_step_that_runs_over_its_time():
    with pytest.raises(UserError, match="ran over 1 s"):
        follow([sys.executable, "-c", "import time; time.sleep(60)"], print, 1)


@pytest.mark.parametrize("args, env, message", [
    (["--data", "missing.h5"], {}, "error: no sequences file at missing.h5 (make preprocess writes one)"),
    (["--data", __file__], {"SLURM_NTASKS": "1"}, "error: run it as 2 or more ranks, e.g. srun --mpi=pmix"),
])
def test_a_missing_file_or_a_single_process_is_one_line(args, env, message):
    environ = {k: v for k, v in os.environ.items() if k not in ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-m", "stockpredict.interleaved", *args], capture_output=True,
                          text=True, timeout=60, env={**environ, **env})
    assert proc.returncode == 2 and proc.stderr.startswith(message) and len(proc.stderr.splitlines()) == 1
