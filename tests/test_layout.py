"""The layout of docs/architecture.md holds: the import-linter contracts can fail, and every name that
job scripts, the Makefile, users and the console scripts rely on still answers after the move."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import tomllib

from conftest import REPO, VENV_BIN

# Every `python -m NAME` a rendered job script (the golden files and a script rendered before the
# layout change), a template or the Makefile runs.
SOURCES = [*sorted((REPO / "tests" / "golden").glob("*.sbatch")), REPO / "tests" / "fixtures" /
           "job_before_layout_v1.sbatch", *sorted((REPO / "templates").glob("*.j2")), REPO / "Makefile"]


def _module_names() -> list[str]:
    names = set()
    for path in SOURCES:
        names |= set(re.findall(r"-m ((?:stockpredict|preprocess)[\w.]*)", path.read_text()))
    return sorted(names)


def test_the_job_scripts_and_the_makefile_name_modules_that_answer():
    names = _module_names()
    assert {"stockpredict.train", "stockpredict.checkpoints", "stockpredict.timing", "stockpredict.submit",
            "stockpredict.report", "preprocess"} <= set(names)
    for name in names:
        proc = subprocess.run([sys.executable, "-m", name, "--help"], capture_output=True, text=True,
                              cwd=REPO,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
        assert proc.returncode == 0 and "usage" in proc.stdout.lower(), (name, proc.stderr[-500:])


def test_the_batch_shells_helpers_keep_their_subcommands():
    for argv in (["stockpredict.checkpoints", "guard", "--help"], ["stockpredict.timing", "close", "--help"]):
        proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0 and "usage" in proc.stdout, proc.stderr


def test_every_console_script_answers():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(scripts) >= 6
    for name in scripts:
        proc = subprocess.run([str(VENV_BIN / name), "--help"], capture_output=True, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
        assert proc.returncode == 0 and "usage" in proc.stdout.lower(), (name, proc.stderr[-500:])


def test_the_documented_python_api_is_the_moved_modules_themselves():
    import stockpredict.config
    import stockpredict.control.jobscript
    import stockpredict.control.submit
    import stockpredict.render
    import stockpredict.submit
    from stockpredict.config import TrainConfig
    from stockpredict.render import JobSpec, render_job
    from stockpredict.submit import new_run_dir, submit_train, submit_training

    assert stockpredict.submit is stockpredict.control.submit   # one module: monkeypatching agrees
    assert stockpredict.render is stockpredict.control.jobscript
    assert TrainConfig is stockpredict.config.TrainConfig
    assert callable(render_job) and JobSpec.__module__ == "stockpredict.control.jobscript"
    assert all(callable(f) for f in (new_run_dir, submit_train, submit_training))
    from stockpredict import report

    assert callable(report.main) and callable(report.build_report)


@pytest.mark.parametrize("violation, contract", [
    ("stockpredict/common/layout.py", "import no TensorFlow"),
    ("stockpredict/control/follow.py", "import no TensorFlow"),
    ("preprocess/windows.py", "import no TensorFlow"),
])
def test_the_contracts_can_fail(tmp_path, violation, contract):
    for part in ("stockpredict", "preprocess"):
        shutil.copytree(REPO / part, tmp_path / part, symlinks=True)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    lint = [str(VENV_BIN / "lint-imports"), "--no-cache"]
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    kept = subprocess.run(lint, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert kept.returncode == 0, kept.stdout
    target = tmp_path / violation
    target.write_text(target.read_text() + "\n\ndef _probe():\n    import tensorflow  # noqa: F401\n")
    broken = subprocess.run(lint, capture_output=True, text=True, cwd=tmp_path, env=env)
    said = " ".join(broken.stdout.split())  # import-linter wraps long contract names
    assert broken.returncode == 1 and "BROKEN" in said and contract in said, broken.stdout


def test_the_job_side_may_not_import_the_login_nodes_side(tmp_path):
    for part in ("stockpredict", "preprocess"):
        shutil.copytree(REPO / part, tmp_path / part, symlinks=True)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / "stockpredict" / "job" / "model.py"
    target.write_text(target.read_text() + "\nfrom stockpredict.control import follow  # noqa: E402,F401\n")
    proc = subprocess.run([str(VENV_BIN / "lint-imports"), "--no-cache"], capture_output=True, text=True,
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert proc.returncode == 1 and "job side never imports" in " ".join(proc.stdout.split()), proc.stdout
