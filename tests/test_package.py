"""A non-editable install (a wheel) carries the job templates and profiles and renders the same scripts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_jobscript import CASES, GOLDEN

from conftest import REPO

# Everything a build needs, not the environment, data or outputs of this checkout.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".cluster", "data", "results", "build", "*.egg-info",
                                     "__pycache__", ".pytest_cache")

# Runs in the installed copy, from a directory outside the checkout: render every golden case and load
# every profile, and say which files it used.
_RENDER = """
import json, sys
import stockpredict.control.jobscript as render
cases = json.loads(sys.stdin.read())
print(json.dumps({
    "module": render.__file__,
    "scripts": {name: render.render_job(render.make_spec(values)) for name, values in cases.items()},
    "profiles": {name: render.load_profile(name) for name in render.available_profiles()},
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project built as a wheel from a copy of the checkout and installed with pip --target."""
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=_NOT_SOURCE)  # build/ and egg-info land in the copy
    wheels, target = tmp / "wheels", tmp / "site"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(wheels), str(src)]
    proc = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = wheels.glob("stockpredict-*.whl")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return target


@pytest.mark.slow
def test_an_installed_wheel_renders_the_golden_scripts_and_every_profile(installed, tmp_path):
    env = {"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", _RENDER], input=json.dumps(CASES), capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert Path(out["module"]).is_relative_to(installed)   # the installed copy, not this checkout
    assert not (installed / "stockpredict" / "templates").is_symlink()
    for name, script in out["scripts"].items():
        assert script == (GOLDEN / f"{name}.sbatch").read_text(), name

    from stockpredict.control.jobscript import available_profiles, load_profile

    assert sorted(out["profiles"]) == available_profiles() == ["local", "university-gpu"]
    for name, values in out["profiles"].items():
        # `{repo}` in a setup line is the directory above the package, which differs by design.
        here = json.loads(json.dumps(load_profile(name)))
        here_setup = [line.replace(str(REPO), "<repo>") for line in here.pop("setup", [])]
        there_setup = [line.replace(str(installed), "<repo>") for line in values.pop("setup", [])]
        assert (values, there_setup) == (here, here_setup), name
