"""GPU preflight without a GPU: which NCCL Horovod's GPU build uses (stockpredict/control/nccl.py), the
gpu-check
job's rendering and submission, and what the checks report on this CPU-only machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TF_PYTHON, require_tf_venv
from stockpredict.common.errors import UserError
from stockpredict.control.nccl import find_nccl, header_version
from stockpredict.job import gpucheck

NCCL_H = "#define NCCL_MAJOR 2\n#define NCCL_MINOR 21\n#define NCCL_PATCH 5\n#define NCCL_SUFFIX \"\"\n"


def pip_wheel(site: Path) -> Path:
    """The layout nvidia-nccl-cu12 installs: headers, and the library only as libnccl.so.2."""
    root = site / "nvidia" / "nccl"
    (root / "include").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "include" / "nccl.h").write_text(NCCL_H)
    (root / "lib" / "libnccl.so.2").write_bytes(b"\x7fELF")
    return root


def test_the_pip_wheel_gets_its_unversioned_library_link_and_horovod_its_paths(tmp_path):
    root = pip_wheel(tmp_path / "site-packages")
    nccl = find_nccl([tmp_path / "elsewhere", tmp_path / "site-packages"], environ={})
    link = root / "lib" / "libnccl.so"
    assert link.is_symlink() and link.readlink() == Path("libnccl.so.2")  # relative, inside the venv
    assert (nccl.version, nccl.source) == ("2.21.5", "pip wheel nvidia-nccl-cu12")
    assert nccl.horovod_env() == {"HOROVOD_GPU_OPERATIONS": "NCCL",
                                  "HOROVOD_NCCL_INCLUDE": str(root / "include"),
                                  "HOROVOD_NCCL_LIB": str(root / "lib"), "HOROVOD_NCCL_HOME": str(root)}
    assert find_nccl([tmp_path / "site-packages"], environ={}).lib == root / "lib"  # again: link kept


def test_a_site_module_or_hand_set_variables_win_over_the_wheel(tmp_path):
    pip_wheel(tmp_path / "site")
    module = tmp_path / "opt" / "nccl-2.19"
    (module / "include").mkdir(parents=True)
    (module / "lib64").mkdir()
    (module / "include" / "nccl.h").write_text(NCCL_H.replace("MINOR 21", "MINOR 19"))
    (module / "lib64" / "libnccl.so").write_bytes(b"")
    nccl = find_nccl([tmp_path / "site"], environ={"NCCL_HOME": str(module)})
    assert (nccl.lib, nccl.version) == (module / "lib64", "2.19.5") and "site module" in nccl.source
    given = find_nccl([tmp_path / "site"], environ={"HOROVOD_NCCL_HOME": str(module)})
    assert given.source == "HOROVOD_NCCL_* as set" and given.include == module / "include"
    assert header_version(tmp_path) is None


def test_no_nccl_is_one_line_naming_the_fixes(tmp_path):
    with pytest.raises(UserError, match="TF_EXTRA=gpu.*module load nccl"):
        find_nccl([tmp_path], environ={})
    proc = subprocess.run([sys.executable, "-m", "stockpredict.nccl", "--site-packages", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def test_the_cli_prints_the_build_variables_and_says_which_nccl(tmp_path):
    pip_wheel(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "stockpredict.nccl", "--site-packages", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "NCCL 2.21.5 from" in proc.stderr and "pip wheel nvidia-nccl-cu12" in proc.stderr
    assert dict(line.split("=", 1) for line in proc.stdout.splitlines())["HOROVOD_GPU_OPERATIONS"] == "NCCL"


def test_check_build_parsing():
    built = "Available Tensor Operations:\n    [X] NCCL\n    [ ] DDL\n    [X] MPI\n"
    assert gpucheck.horovod_nccl_built(built)
    assert not gpucheck.horovod_nccl_built(built.replace("[X] NCCL", "[ ] NCCL"))


def test_missing_environments_are_one_line_failures_naming_make_setup(tmp_path, capsys):
    assert gpucheck.check_all(repo=tmp_path) is False
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"horovod: FAIL no environment {tmp_path / '.venv'}; fix: make setup TF_EXTRA=gpu",
        f"tf: FAIL no environment {tmp_path / '.venv-tf'}; fix: make setup ENGINE=tf TF_EXTRA=gpu"]


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stockpredict.submit", *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_gpu_check_job_renders_one_gpu_node_and_refuses_cpu_only(tmp_path):
    proc = _cli("gpu-check", "--dry-run", "--results", str(tmp_path), "--gpus-per-node", "2")
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --gpus-per-node=2" in proc.stdout and "#SBATCH --nodes=1" in proc.stdout
    assert "#SBATCH --time=00:15:00" in proc.stdout and "\npython -m stockpredict.gpucheck &\n" in proc.stdout
    proc = _cli("gpu-check", "--dry-run", "--results", str(tmp_path))  # the local profile has no GPU count
    assert proc.returncode == 2 and "gpu-check needs a GPU node: pass GPUS=1" in proc.stderr


@pytest.mark.slow
def test_on_this_cpu_machine_the_tf_checks_fail_in_one_line_each():
    require_tf_venv()
    proc = subprocess.run([str(TF_PYTHON), "-m", "stockpredict.gpucheck", "--engine", "tf"],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("tf: ")]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(lines) == 4 and "TensorFlow sees no GPU" in lines[0] and "fix: " in lines[0]
    assert "not cuDNN" in lines[1] and lines[3].startswith("tf: ok 2-GPU allreduce skipped: 0 GPU(s)")
