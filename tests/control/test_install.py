"""The two engines' stacks: `make setup [ENGINE=tf]` picks its environment and pins, and importing
stockpredict selects Keras 2 on TensorFlow 2.21 (tf-keras) without breaking TensorFlow 2.15."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, TF_PYTHON, require_tf_venv


def _setup_dry(tmp_path, *args: str) -> str:
    """The commands `make setup` would run for a venv that does not exist yet (--dry-run runs nothing)."""
    proc = subprocess.run([sys.executable, "-m", "stockpredict.control.install", "--dry-run",
                           f"--venv={tmp_path / 'venv'}", *args], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_setup_engine_tf_uses_its_own_pins_and_builds_no_horovod(tmp_path):
    tf = _setup_dry(tmp_path, "--engine=tf")
    assert "-c constraints-tf.txt" in tf and ".[tf-cpu,test]" in tf
    assert "horovod" not in tf.lower()
    default = _setup_dry(tmp_path)
    assert "-c constraints.txt" in default and "horovod==0.28.1" in default and ".[cpu,test]" in default
    assert "constraints-tf" not in default
    assert "stockpredict.nccl" not in default  # only with --tf-extra gpu
    assert "stockpredict.nccl" in _setup_dry(tmp_path, "--tf-extra=gpu")


def test_make_setup_is_one_call_of_the_setup_program(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    for engine, expected in (("ENGINE=tf", '--engine="tf"'), ("ENGINE=", '--engine="horovod"')):
        proc = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), "setup",
                               f"VENV={tmp_path / 'venv'}", engine], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "-m stockpredict.control.install" in proc.stdout and expected in proc.stdout
        assert "pip" not in proc.stdout


def test_engine_tf_defaults_the_environment_to_venv_tf():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def venv(*args: str) -> str:
        return subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO), *args,
                               "--eval", "print-venv: ; @echo $(VENV)", "print-venv"],
                              capture_output=True, text=True, env=env).stdout.strip()

    assert (venv("ENGINE=tf"), venv(), venv("ENGINE=horovod"), venv("ENGINE=tf", "VENV=/x")) == (
        ".venv-tf", ".venv", ".venv", "/x")


def test_constraints_pin_tensorflow_and_tf_keras_2_21():
    pins = dict(line.split("==") for line in (REPO / "constraints-tf.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["tensorflow_cpu"] == pins["tf_keras"] == pins["tensorflow"] == "2.21.0"
    assert "horovod" not in pins and pins["h5py"].startswith("3.14")
    assert pins["tensorboard"] == "2.21.0"  # `.venv-tf/bin/tensorboard` views the runs (TF 2.21 lacks it)


def test_tf_keras_is_keras_2_on_tensorflow_2_21():
    require_tf_venv()
    code = ("import stockpredict, tensorflow as tf, tf_keras; "
            "print(tf.__version__, tf_keras.__version__, tf.keras.Sequential.__module__)")
    out = subprocess.run([str(TF_PYTHON), "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert out.returncode == 0, out.stderr
    tf_version, keras_version, module = out.stdout.split()
    assert tf_version == "2.21.0" and keras_version == "2.21.0" and module.startswith("tf_keras"), out.stdout


def test_the_horovod_stack_is_left_alone():
    # TF 2.15 has no tf_keras; setting TF_USE_LEGACY_KERAS there would make tf.keras fail to import.
    code = "import os, stockpredict; print(os.environ.get('TF_USE_LEGACY_KERAS'))"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(env, PYTHONPATH=str(REPO)))
    import importlib.util

    expected = "1" if importlib.util.find_spec("tf_keras") else "None"
    assert out.stdout.strip() == expected


# --- the GPU setup's CUDA preflight (make setup TF_EXTRA=gpu): fake toolkit trees, no GPU needed -------

def _toolkit(root, release: str | None = "12.2", header: bool = True, cudart: bool = True):
    """A directory shaped like a CUDA toolkit: bin/nvcc printing `release`, the runtime header and library."""
    (root / "bin").mkdir(parents=True)
    if release is not None:
        nvcc = root / "bin" / "nvcc"
        nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.140'\n")
        nvcc.chmod(0o755)
    if header:
        (root / "include").mkdir()
        (root / "include" / "cuda_runtime.h").write_text("/* */\n")
    if cudart:
        (root / "lib64").mkdir()
        (root / "lib64" / "libcudart.so.12").write_bytes(b"")
    return root


def test_a_matching_toolkit_passes_and_is_found_in_the_order_sites_set_it(tmp_path):
    from stockpredict.control.install import cuda_preflight, find_cuda_toolkit
    good = _toolkit(tmp_path / "cuda-12.2")
    empty_path = str(tmp_path / "nowhere")
    assert cuda_preflight("12.2", "TF", {"CUDA_HOME": str(good), "PATH": empty_path}) == []
    both = {"HOROVOD_CUDA_HOME": str(good), "CUDA_HOME": "/elsewhere", "PATH": empty_path}
    assert find_cuda_toolkit(both) == (good, "HOROVOD_CUDA_HOME")  # Horovod's own variable first
    (tmp_path / "path").mkdir()
    (tmp_path / "path" / "nvcc").symlink_to(good / "bin" / "nvcc")  # a module's bin/ on PATH
    assert find_cuda_toolkit({"PATH": str(tmp_path / "path")}) == (good, "nvcc on PATH")


def test_another_major_version_is_one_line_naming_both_versions_and_the_fix(tmp_path):
    from stockpredict.control.install import cuda_preflight
    new = _toolkit(tmp_path / "cuda-13.0", release="13.0", header=False)
    (problem,) = cuda_preflight("12.2", "the pinned TensorFlow 2.15.1", {"CUDA_HOME": str(new), "PATH": ""})
    assert "CUDA 13.0" in problem and "CUDA 12.2" in problem and "module load cuda/12.x" in problem


def test_missing_pieces_each_get_a_line_and_no_toolkit_says_where_it_looked(tmp_path):
    from stockpredict.control.install import cuda_preflight
    runtime_only = _toolkit(tmp_path / "rt", release=None, header=False, cudart=True)
    problems = cuda_preflight("12.2", "TF", {"CUDA_HOME": str(runtime_only), "PATH": ""})
    assert len(problems) == 3, problems  # libcudart is there: no line for it
    assert ["no bin/nvcc" in problems[0], "tells no version" in problems[1],
            "no include/cuda_runtime.h" in problems[2]] == [True] * 3, problems
    (none,) = cuda_preflight("12.2", "TF", {"PATH": str(tmp_path / "nowhere")})
    assert none.startswith("no CUDA toolkit found") and "CUDA_HOME" in none and "nvcc" in none
    (gone,) = cuda_preflight("12.2", "TF", {"CUDA_HOME": str(tmp_path / "missing"), "PATH": ""})
    assert "does not exist" in gone


def test_setup_tf_extra_gpu_stops_in_one_line_before_creating_anything(tmp_path):
    new = _toolkit(tmp_path / "cuda-13.0", release="13.0")
    env = {k: v for k, v in os.environ.items() if "CUDA" not in k}
    env.update(CUDA_HOME=str(new), PATH=f"{tmp_path / 'nowhere'}:/usr/bin:/bin")
    proc = subprocess.run([sys.executable, "-m", "stockpredict.control.install", f"--venv={tmp_path / 'v'}",
                           "--tf-extra=gpu"], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "CUDA 13.0" in proc.stderr and "12.2" in proc.stderr
    assert not (tmp_path / "v").exists()  # no venv, no pip, no compile
