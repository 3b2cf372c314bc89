"""Stable names for moved modules: `python -m stockpredict.train` (which every job script already
written to results/runs/<id>/job.sbatch runs again when Slurm requeues it), the documented imports
(`from stockpredict.submit import submit_train`) and the console scripts keep working after the layout
of docs/architecture.md. A stable-name module is two lines calling `alias`.
"""

from __future__ import annotations

import importlib
import runpy
import sys


def alias(name: str, target: str) -> None:
    """Make module `name` the module `target`: run `target` as the program under `python -m name`, else
    put `target` in sys.modules under `name` (the same module object: attributes, monkeypatching and
    pickling agree)."""
    if name == "__main__":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
        return
    sys.modules[name] = importlib.import_module(target)
