"""The login node's side of the interleaved benchmark (stockpredict/job/interleaved.py): the srun step
that runs it and a follower that passes rank 0's lines on as they come. TensorFlow-free.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from stockpredict.common.benchmarks import INTERLEAVED_PREFIX as PREFIX
from stockpredict.common.errors import UserError


def srun_command(data: str | Path, out: str | Path, nodes: int = 2, cpus_per_task: int | None = None,
                 global_batch: int = 256, rounds: int = 15, steps: int = 20) -> list[str]:
    """The srun step that runs this module on `nodes` nodes, one rank and `cpus_per_task` cores each."""
    return ["srun", "--mpi=pmix", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            f"--cpus-per-task={cpus_per_task or 1}", sys.executable, "-m", "stockpredict.interleaved",
            "--data", str(data), "--global-batch", str(global_batch), "--rounds", str(rounds),
            "--steps", str(steps), "--out", str(out)]


def follow(cmd: list[str], on_line: Callable[[str], None], timeout_s: float) -> None:
    """Run `cmd`, handing rank 0's lines to `on_line` as they come (never silent); UserError with the
    last lines of output when it fails."""
    tail: list[str] = []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        timer = threading.Timer(timeout_s, proc.kill)  # a hung step ends its output, and so this loop
        timer.start()
        try:
            for line in proc.stdout:
                if line.startswith(PREFIX):
                    on_line(line[len(PREFIX):].strip())
                else:
                    tail = (tail + [line.rstrip()])[-5:]
            status = proc.wait()
        finally:
            timed_out = not timer.is_alive()
            timer.cancel()
    if timed_out:
        raise UserError(f"the interleaved benchmark ran over {timeout_s:.0f} s and was stopped")
    if status != 0:
        last = "; ".join(t for t in tail if t) or "no output"
        raise UserError(f"the interleaved benchmark failed (srun exit {status}): {last}")
