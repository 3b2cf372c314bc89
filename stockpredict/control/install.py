"""`make setup`: build an engine's environment (venv, pinned packages, and for Horovod its compiled wheel).

    python3 -m stockpredict.control.install --engine horovod --venv .venv [--tf-extra cpu|gpu]
    python3 -m stockpredict.control.install --engine tf --venv .venv-tf [--tf-extra cpu|gpu]
    ... --dry-run      print the commands without running them

Runs under the system Python before the environment exists, so it uses the standard library only.

- **horovod** (default): TensorFlow 2.15 from constraints.txt, then Horovod 0.28.1 compiled against it
  (pip --no-build-isolation: the build must see the installed TensorFlow). The wheel is kept in a build
  cache keyed by everything the extension links against (stockpredict/control/buildcache.py), so a second
  environment reuses it; STOCKPREDICT_WHEEL_CACHE= (empty) turns the cache off. With --tf-extra gpu,
  stockpredict/control/nccl.py chooses the NCCL to build with. Any HOROVOD_* variable of the caller
  reaches the build. `horovodrun --check-build` must then list TensorFlow, MPI, Gloo (and NCCL for gpu).
  Before anything is installed for a GPU Horovod build, `cuda_preflight` checks the CUDA toolkit Horovod's
  CMake would use (see its docstring); each problem is one line naming the fix, so a wrong or missing
  `module load cuda` costs seconds, not a failed 3-minute compile.
- **tf**: TensorFlow 2.21 with tf-keras from constraints-tf.txt; pip wheels only, no compiler.

Every command is printed, shell-quoted, before it runs. A failing step ends the setup with its exit
status and one line saying which step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

HOROVOD = "horovod==0.28.1"
BUILD_TOOLS = ("pip==26.3", "setuptools==84.2.1", "wheel==0.48.0")
HOROVOD_BUILD_ENV = {"HOROVOD_WITH_TENSORFLOW": "1", "HOROVOD_WITH_MPI": "1", "HOROVOD_WITH_GLOO": "1",
                     "HOROVOD_WITHOUT_PYTORCH": "1", "HOROVOD_WITHOUT_MXNET": "1"}
CONSTRAINTS = {"horovod": "constraints.txt", "tf": "constraints-tf.txt"}
EXTRAS = {"horovod": "{tf_extra},test", "tf": "tf-{tf_extra},test"}
CHECK_BUILD_FILE = "horovod-check-build.txt"
# The CUDA that constraints.txt's TensorFlow (2.15.1) is built for, as its tf.sysconfig.get_build_info()
# reports it; used for the check before TensorFlow is installed, then replaced by the installed TF's own.
PINNED_TF_CUDA = ("2.15.1", "12.2")
# Where sites put the CUDA toolkit, in the order they are tried: Horovod's own variable, the common
# conventions, then environment-module variables (Lmod/EasyBuild), then nvcc on PATH.
CUDA_VARIABLES = ("HOROVOD_CUDA_HOME", "CUDA_HOME", "CUDA_PATH", "CUDA_ROOT", "CUDA_DIR", "EBROOTCUDA")
CUDA_FIX = "`module load cuda/{major}.x` (a CUDA {major} toolkit) or HOROVOD_CUDA_HOME=<its directory>"


class SetupFailed(Exception):
    """A step failed; the message says which, the exit status is the step's."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class Steps:
    """Runs (or, dry, only prints) the setup's commands."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None, capture: bool = False) -> str:
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        print(f"{shown + ' ' if shown else ''}{shlex.join(argv)}", flush=True)
        if self.dry_run:
            return ""
        proc = subprocess.run(list(argv), env={**os.environ, **(env or {})}, text=True,
                              stdout=subprocess.PIPE if capture else None)
        if proc.returncode != 0:
            raise SetupFailed(f"`{shlex.join(argv[:4])} ...` failed (exit {proc.returncode})",
                              proc.returncode)
        return proc.stdout or ""


def wheel_cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """$STOCKPREDICT_WHEEL_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/stockpredict/wheels; None if it is
    set empty."""
    if "STOCKPREDICT_WHEEL_CACHE" in environ:
        value = environ["STOCKPREDICT_WHEEL_CACHE"]
        return Path(value) if value else None
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stockpredict" / "wheels"


def find_cuda_toolkit(environ: Mapping[str, str] = os.environ) -> tuple[Path, str] | None:
    """The CUDA toolkit directory Horovod's build would use and where it was found: the first set of
    CUDA_VARIABLES, else the directory above the bin/ of the first nvcc on PATH (symlinks resolved)."""
    for name in CUDA_VARIABLES:
        if environ.get(name):
            return Path(environ[name]), name
    nvcc = shutil.which("nvcc", path=environ.get("PATH", ""))
    if nvcc:
        return Path(os.path.realpath(nvcc)).parent.parent, "nvcc on PATH"
    return None


def cuda_toolkit_version(root: Path) -> str | None:
    """"major.minor" of the toolkit: `nvcc --version`'s release line, else version.json (CUDA >= 11.1)."""
    nvcc = root / "bin" / "nvcc"
    if os.access(nvcc, os.X_OK):
        try:
            out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        match = re.search(r"release (\d+\.\d+)", out)
        if match:
            return match.group(1)
    try:
        version = json.loads((root / "version.json").read_text())["cuda"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ".".join(str(version).split(".")[:2])


def cudart_present(root: Path) -> bool:
    return any(sorted((root / sub).glob("libcudart.so*"))
               for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"))


def cuda_preflight(tf_cuda: str, tf_source: str, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Problems (one line each, naming the fix) with the CUDA toolkit for Horovod's GPU build; [] if fine.

    `tf_cuda` is the CUDA TensorFlow is built for and `tf_source` says where that number came from. A
    toolkit of another major version is the only line reported (its missing pieces do not matter: the fix
    is another toolkit); otherwise one line per missing nvcc, cuda_runtime.h or libcudart."""
    major = tf_cuda.split(".")[0]
    fix = CUDA_FIX.format(major=major)
    found = find_cuda_toolkit(environ)
    if found is None:
        return [f"no CUDA toolkit found ({', '.join(CUDA_VARIABLES)} unset, no nvcc on PATH); Horovod's GPU "
                f"build needs CUDA {major} for {tf_source} (CUDA {tf_cuda}): {fix}"]
    root, where = found
    if not root.is_dir():
        return [f"the CUDA toolkit {root} (from {where}) does not exist: {fix}"]
    version = cuda_toolkit_version(root)
    if version is not None and version.split(".")[0] != major:
        return [f"the CUDA toolkit {root} (from {where}) is CUDA {version}, but {tf_source} is built for "
                f"CUDA {tf_cuda}: {fix}"]
    problems = []
    if not os.access(root / "bin" / "nvcc", os.X_OK):
        problems.append(f"the CUDA toolkit {root} (from {where}) has no bin/nvcc (a runtime-only install?): "
                        f"{fix}")
    if version is None:
        problems.append(f"the CUDA toolkit {root} (from {where}) tells no version (no working nvcc, no "
                        f"version.json): {fix}")
    if not (root / "include" / "cuda_runtime.h").is_file():
        problems.append(f"the CUDA toolkit {root} (from {where}) has no include/cuda_runtime.h (load the "
                        f"toolkit's development module, not only its runtime): {fix}")
    if not cudart_present(root):
        problems.append(f"the CUDA toolkit {root} (from {where}) has no libcudart.so in lib64/ or lib/: "
                        f"{fix}")
    return problems


def installed_tf_cuda(python: Path) -> tuple[str, str] | None:
    """(CUDA version, description) of the TensorFlow installed in `python`'s venv, from
    tf.sysconfig.get_build_info(); None if TensorFlow does not import there."""
    code = ("import json, tensorflow as tf; info = tf.sysconfig.get_build_info(); "
            "print(json.dumps([tf.__version__, info.get('is_cuda_build', False), info.get('cuda_version')]))")
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    version, is_cuda, cuda = json.loads(proc.stdout.strip().splitlines()[-1])
    if not is_cuda or not cuda:
        raise SetupFailed(f"the installed TensorFlow {version} is not a CUDA build; TF_EXTRA=gpu installs "
                          f"tensorflow[and-cuda] (remove {python.parent.parent} and run make setup "
                          f"TF_EXTRA=gpu)")
    return str(cuda), f"the installed TensorFlow {version} (tf.sysconfig.get_build_info())"


def check_cuda(tf_cuda: str, tf_source: str) -> None:
    problems = cuda_preflight(tf_cuda, tf_source)
    if problems:
        raise SetupFailed("\nsetup: ".join(problems))
    root, where = find_cuda_toolkit()  # type: ignore[misc]
    print(f"setup: CUDA toolkit {root} (from {where}, CUDA {cuda_toolkit_version(root)}) for {tf_source} "
          f"(CUDA {tf_cuda})", flush=True)


def horovod_installed(python: Path) -> bool:
    proc = subprocess.run([str(python), "-c", "import horovod.tensorflow"], capture_output=True)
    return proc.returncode == 0


def install_horovod(steps: Steps, python: Path, tf_extra: str) -> None:
    """Horovod from the build cache, or built against the installed TensorFlow (and stored there)."""
    nccl: list[str] = []
    if tf_extra == "gpu":
        nccl = steps.run([str(python), "-m", "stockpredict.nccl"], capture=True).split()
    build_env = {**HOROVOD_BUILD_ENV, **dict(item.split("=", 1) for item in nccl)}
    toolkit = find_cuda_toolkit() if tf_extra == "gpu" else None
    if toolkit is not None and "HOROVOD_CUDA_HOME" not in os.environ:
        build_env["HOROVOD_CUDA_HOME"] = str(toolkit[0])  # the toolkit checked, not CMake's own pick
    cache = wheel_cache_dir()
    cached: Path | None = None
    if cache is not None:
        key = steps.run([str(python), "-m", "stockpredict.buildcache", "key", HOROVOD, *nccl],
                        env=build_env, capture=True).strip()
        cached = cache / f"horovod-0.28.1-{key}"
    wheels = sorted(cached.glob("horovod-*.whl")) if cached is not None and cached.is_dir() else []
    build_dir = None
    if wheels:
        print(f"setup: horovod 0.28.1 from the build cache {cached} (built here before against the same "
              f"TensorFlow, MPI and compilers; STOCKPREDICT_WHEEL_CACHE= rebuilds)")
    else:
        print("setup: building horovod 0.28.1 against TensorFlow (about 3 minutes on 2 cores)")
        build_dir = Path(tempfile.mkdtemp(prefix="horovod-build."))
        steps.run([str(python), "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-cache-dir",
                   "--no-deps", "-c", CONSTRAINTS["horovod"], "-w", str(build_dir), HOROVOD], env=build_env)
        wheels = sorted(build_dir.glob("horovod-*.whl")) or [build_dir / "horovod-0.28.1.whl"]
        if cached is not None and not steps.dry_run:
            store_wheel(wheels[0], cached)
    try:
        steps.run([str(python), "-m", "pip", "install", "-q", "-c", CONSTRAINTS["horovod"], str(wheels[0])])
    finally:
        if build_dir is not None:
            shutil.rmtree(build_dir, ignore_errors=True)


def store_wheel(wheel: Path, cached: Path) -> None:
    """Put `wheel` into the cache folder `cached` atomically (a rename; a concurrent setup's copy wins)."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=".part.", dir=cached.parent))
    shutil.copy2(wheel, part)
    try:
        part.rename(cached)
        print(f"setup: stored the horovod wheel in {cached}")
    except OSError:
        shutil.rmtree(part, ignore_errors=True)


def check_horovod_build(steps: Steps, venv: Path, tf_extra: str) -> None:
    out = steps.run([str(venv / "bin" / "horovodrun"), "--check-build"], env={"TF_CPP_MIN_LOG_LEVEL": "2"},
                    capture=True)
    print(out, end="")
    if steps.dry_run:
        return
    (venv / CHECK_BUILD_FILE).write_text(out)
    for want in ("TensorFlow", "MPI", "Gloo") + (("NCCL",) if tf_extra == "gpu" else ()):
        if f"[X] {want}" not in out:
            raise SetupFailed(f"horovod was built without {want} (see above)")


def check_tf_keras(steps: Steps, python: Path) -> None:
    code = ("import stockpredict, sys, tensorflow as tf, tf_keras; where = tf.keras.Sequential.__module__; "
            "print('setup: TensorFlow', tf.__version__, 'with tf-keras', tf_keras.__version__, "
            "'as tf.keras'); "
            "sys.exit(0 if where.startswith('tf_keras') else f'setup: tf.keras is {where}, not tf-keras')")
    steps.run([str(python), "-c", code], env={"TF_CPP_MIN_LOG_LEVEL": "2"})


def setup(engine: str, venv: Path, tf_extra: str, system_python: str, dry_run: bool = False) -> None:
    steps = Steps(dry_run)
    python = venv / "bin" / "python"
    gpu_build = engine == "horovod" and tf_extra == "gpu" and not dry_run
    tf_cuda = installed_tf_cuda(python) if gpu_build and python.exists() else None
    if gpu_build:  # before any download or compile: a wrong toolkit is one line in seconds
        check_cuda(*(tf_cuda or (PINNED_TF_CUDA[1], f"the pinned TensorFlow {PINNED_TF_CUDA[0]} (not "
                                                    f"installed yet; its known build)")))
    if not python.exists():
        steps.run([system_python, "-m", "venv", str(venv)])
    steps.run([str(python), "-m", "pip", "install", "-q", *BUILD_TOOLS])
    extras = EXTRAS[engine].format(tf_extra=tf_extra)
    steps.run([str(python), "-m", "pip", "install", "-q", "-c", CONSTRAINTS[engine], "-e", f".[{extras}]"])
    if engine == "tf":
        check_tf_keras(steps, python)
        return
    if gpu_build and tf_cuda is None:  # again with the installed TensorFlow's answer, before the build
        installed = installed_tf_cuda(python)
        if installed is not None:
            check_cuda(*installed)
    if dry_run or not horovod_installed(python):
        install_horovod(steps, python, tf_extra)
    check_horovod_build(steps, venv, tf_extra)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m stockpredict.control.install",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=tuple(CONSTRAINTS), default="horovod")
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--tf-extra", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--python", default=sys.executable, help="the Python that creates the venv")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    try:
        setup(args.engine, args.venv, args.tf_extra, args.python, args.dry_run)
    except SetupFailed as err:
        print(f"setup: {err}", file=sys.stderr)
        return err.status
    print(f"setup: done ({args.venv})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
