"""Shared fixtures. The `slurm_cluster` fixture starts the real local Slurm cluster (slurm/local-cluster.sh)
once per session and stops it afterwards if it started it. Under CI=true a cluster that cannot start is
a failure, never a silent skip."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "slurm" / "local-cluster.sh"
CLUSTER_DIR = Path(os.environ.get("CLUSTER_DIR", REPO / ".cluster"))
CLUSTER_NODES = 4
VENV_BIN = Path(sys.executable).parent
# The tf engine's environment (make setup ENGINE=tf; `make test` builds it): TF 2.21 + tf-keras.
TF_VENV = Path(os.environ.get("STOCKPREDICT_TF_VENV", REPO / ".venv-tf"))
TF_PYTHON = TF_VENV / "bin" / "python"

sys.path.insert(0, str(REPO))
# The test folders mirror the package (tests/<part>/ for stockpredict/<part>/, tests/preprocess/,
# tests/cluster/ for slurm/). A few test modules share helpers (hand-made timing logs, the full-disk
# tmpfs, the golden cases) and import each other by basename, which is unique across the folders: put
# every folder on the path, whichever pytest collects first.
TESTS = Path(__file__).resolve().parent
sys.path[1:1] = [str(TESTS / part)
                 for part in ("common", "control", "job", "report", "preprocess", "cluster")]
from stockpredict.control import slurmjobs  # noqa: E402


@dataclass(frozen=True)
class Cluster:
    """Handle on the running local cluster: its environment and helpers to submit and wait."""

    conf: Path
    env: dict

    def sbatch(self, script: Path, *args: str, cwd: Path | None = None) -> str:
        return slurmjobs.sbatch(script, args, env=self.env, cwd=cwd)

    def wait(self, job_id: str, timeout_s: float = 300) -> str:
        return slurmjobs.wait_for_jobs([job_id], timeout_s, env=self.env, poll_s=1.0)[job_id]

    def info(self, job_id: str) -> dict:
        return slurmjobs.job_info(job_id, env=self.env)


def _running() -> bool:
    pid_file = CLUSTER_DIR / "run" / "slurmctld.pid"
    try:
        os.kill(int(pid_file.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Cluster tests need one process: on several workers their jobs would overlap on the pinned
        # virtual nodes (an `urgent` test job would preempt another test's job), and the worker that
        # started the cluster stops it at its session end under the others. pytest-xdist 3.8's
        # --dist loadgroup cannot keep them on one worker under pytest 9 (it renames item._nodeid,
        # which pytest 9 no longer reads), so `make test` runs in one process.
        pytest.fail("the local cluster's tests run in one pytest process: use -n 0, or -m 'not cluster'")
    was_running = _running()
    proc = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up", str(CLUSTER_NODES)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        message = f"local Slurm cluster did not start: {(proc.stderr or proc.stdout).strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    conf = CLUSTER_DIR / "etc" / "slurm.conf"
    # Jobs inherit this environment (sbatch --export=ALL): the venv's python and horovodrun come first.
    env = dict(os.environ, SLURM_CONF=str(conf), PATH=f"{VENV_BIN}:{os.environ['PATH']}",
               PYTHONPATH=str(REPO))
    yield Cluster(conf=conf, env=env)
    if not was_running:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "down"], capture_output=True, text=True)


def require_tf_venv() -> Path:
    """The tf environment's python; a failure under CI=true (make test builds it), else a skip."""
    if not TF_PYTHON.exists():
        message = f"no tf engine environment at {TF_VENV}: build it with `make setup ENGINE=tf`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return TF_PYTHON


@pytest.fixture(params=["horovod", "tf"])
def engine(request) -> str:
    """Both engines: Horovod in this interpreter (TF 2.15), tf.distribute in .venv-tf (TF 2.21)."""
    if request.param == "tf":
        require_tf_venv()
    return request.param


@pytest.fixture
def job_dir(tmp_path_factory):
    """A fresh directory for one job's script and output, visible to every virtual node."""
    return tmp_path_factory.mktemp("job")


def read_json_lines(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def wait_until(predicate, timeout_s: float, poll_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return False


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A preprocessed synthetic universe (8 tickers x 10 days, per-ticker normalisation, schema 1) with a
    learnable mean-reverting signal: a model using the window beats the persistence forecast."""
    from preprocess.synthetic import build_tiny_dataset

    return build_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"))


# --- generated hostile inputs (Hypothesis) ---------------------------------------------------------
# `make test` (and so CI) sets STOCKPREDICT_HYPOTHESIS=full: every property test tries its full count,
# derandomized so a CI run is reproducible. `make test-fast` and a bare pytest try a twentieth of them
# (at least 20), from a fresh random seed each time, so the edit loop keeps searching new corners.
HYPOTHESIS_FULL = os.environ.get("STOCKPREDICT_HYPOTHESIS") == "full"


def hypothesis_settings(full_examples: int):
    """Settings of one property test that tries `full_examples` cases under `make test`."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=full_examples if HYPOTHESIS_FULL else max(20, full_examples // 20),
                    deadline=None, derandomize=HYPOTHESIS_FULL, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])
