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
