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
- **tf**: TensorFlow 2.21 with tf-keras from constraints-tf.txt; pip wheels only, no compiler.

Every command is printed, shell-quoted, before it runs. A failing step ends the setup with its exit
status and one line saying which step failed.
"""

from __future__ import annotations

import argparse
import os
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


def horovod_installed(python: Path) -> bool:
    proc = subprocess.run([str(python), "-c", "import horovod.tensorflow"], capture_output=True)
    return proc.returncode == 0


def install_horovod(steps: Steps, python: Path, tf_extra: str) -> None:
    """Horovod from the build cache, or built against the installed TensorFlow (and stored there)."""
    nccl: list[str] = []
    if tf_extra == "gpu":
        nccl = steps.run([str(python), "-m", "stockpredict.nccl"], capture=True).split()
    build_env = {**HOROVOD_BUILD_ENV, **dict(item.split("=", 1) for item in nccl)}
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
    if not python.exists():
        steps.run([system_python, "-m", "venv", str(venv)])
    steps.run([str(python), "-m", "pip", "install", "-q", *BUILD_TOOLS])
    extras = EXTRAS[engine].format(tf_extra=tf_extra)
    steps.run([str(python), "-m", "pip", "install", "-q", "-c", CONSTRAINTS[engine], "-e", f".[{extras}]"])
    if engine == "tf":
        check_tf_keras(steps, python)
        return
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
