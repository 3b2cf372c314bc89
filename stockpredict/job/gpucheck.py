"""GPU preflight for both engines: what `make gpu-check PROFILE=mysite` runs on one GPU node.

    python -m stockpredict.gpucheck                  # every engine, each in its own environment
    python -m stockpredict.gpucheck --engine tf      # one engine, in this interpreter

For each engine it prints one line per check, `<engine>: ok ...` or `<engine>: FAIL ...; fix: ...`:
- the GPUs TensorFlow sees;
- whether the seed's LSTM layer runs the cuDNN kernel (Keras 2 reports the kernel it used);
- the build: Horovod's `horovodrun --check-build` must list NCCL; TensorFlow must be a CUDA build;
- with 2 or more GPUs, the median time of an allreduce of the model's gradient size (12,300 floats)
  over 2 GPUs: Horovod (2 processes, NCCL) or tf.distribute (MirroredStrategy, NCCL all-reduce).
Exit status 0 when every check passed, 1 otherwise. See docs/submission.md, "GPU preflight".
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from stockpredict.common.checkout import ENGINE_VENVS, REPO
from stockpredict.common.errors import run_cli

GRADIENT_FLOATS = 12_300   # the seed model's parameters: one allreduce of its gradient per step
ALLREDUCE_REPEATS = 50
SETUP_FIX = {"horovod": "make setup TF_EXTRA=gpu", "tf": "make setup ENGINE=tf TF_EXTRA=gpu"}


class Report:
    """Collects one engine's check lines; `failed` once any check failed."""

    def __init__(self, engine: str, out: Callable[[str], None] = print):
        self.engine, self.out, self.failed = engine, out, False

    def ok(self, what: str) -> None:
        self.out(f"{self.engine}: ok {what}")

    def fail(self, what: str, fix: str) -> None:
        self.failed = True
        self.out(f"{self.engine}: FAIL {what}; fix: {fix}")


def check_gpus(report: Report, tf) -> int:
    gpus = tf.config.list_physical_devices("GPU")
    bound = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:
        report.ok(f"TensorFlow sees {len(gpus)} GPU(s): {', '.join(g.name for g in gpus)} "
                  f"(CUDA_VISIBLE_DEVICES={bound})")
    elif not tf.test.is_built_with_cuda():
        report.fail(f"TensorFlow {tf.__version__} is a CPU-only build", SETUP_FIX[report.engine])
    else:
        report.fail(f"TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES={bound})",
                    "ask Slurm for one (GPUS=1 or gpus_per_node in the profile) and load the site's CUDA "
                    "module in the profile's setup lines")
    return len(gpus)


def check_cudnn_lstm(report: Report, tf) -> None:
    """Keras 2's LSTM returns the kernel it ran when built with return_runtime=True: 2 = cuDNN."""
    layer = tf.keras.layers.LSTM(50, return_runtime=True)
    x = tf.random.normal((8, 60, 2))
    _, runtime = layer(x)
    if int(runtime.numpy()) == 2:
        report.ok("the LSTM layer runs the cuDNN kernel")
    else:
        info = tf.sysconfig.get_build_info()
        report.fail(f"the LSTM layer runs the generic kernel, not cuDNN (cuDNN in this build: "
                    f"{info.get('cudnn_version')})",
                    "a visible GPU and cuDNN (the site's cudnn module, or the pip wheels that "
                    f"`{SETUP_FIX[report.engine]}` installs)")


def horovod_nccl_built(check_build: str) -> bool:
    """True if `horovodrun --check-build` lists NCCL among the tensor operations ([X] NCCL)."""
    return re.search(r"\[X\]\s+NCCL", check_build) is not None


def check_build(report: Report, tf) -> None:
    if report.engine == "horovod":
        horovodrun = Path(sys.executable).parent / "horovodrun"
        try:
            out = subprocess.run([str(horovodrun), "--check-build"], capture_output=True, text=True,
                                 timeout=120).stdout
        except (OSError, subprocess.SubprocessError) as err:
            report.fail(f"horovodrun --check-build did not run ({err})", SETUP_FIX["horovod"])
            return
        if horovod_nccl_built(out):
            report.ok("horovodrun --check-build lists NCCL")
        else:
            report.fail("Horovod was built without NCCL", "pip uninstall -y horovod, then "
                        f"{SETUP_FIX['horovod']} (it finds NCCL itself and says which)")
        return
    info = tf.sysconfig.get_build_info()
    if info.get("is_cuda_build"):
        report.ok(f"TensorFlow {tf.__version__} is a CUDA build (CUDA {info.get('cuda_version')}, cuDNN "
                  f"{info.get('cudnn_version')}); tf.distribute uses NCCL for GPU all-reduce")
    else:
        report.fail(f"TensorFlow {tf.__version__} is not a CUDA build", SETUP_FIX["tf"])


def tf_allreduce_ms(tf, repeats: int = ALLREDUCE_REPEATS) -> float:
    """Median ms of an NCCL all-reduce of GRADIENT_FLOATS floats over GPUs 0 and 1 (one process)."""
    strategy = tf.distribute.MirroredStrategy(devices=["/gpu:0", "/gpu:1"],
                                              cross_device_ops=tf.distribute.NcclAllReduce())

    @tf.function
    def step():
        def replica():
            value = tf.ones([GRADIENT_FLOATS])
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)
        return strategy.run(replica)

    step()  # build and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), strategy.experimental_local_results(step()))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def horovod_allreduce_worker() -> int:
    """One of 2 Horovod ranks: pin GPU local_rank, time allreduces; rank 0 prints `allreduce_ms=<ms>`."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")
    value = tf.ones([GRADIENT_FLOATS])
    hvd.allreduce(value)
    times = []
    for _ in range(ALLREDUCE_REPEATS):
        start = time.perf_counter()
        hvd.allreduce(value).numpy()
        times.append((time.perf_counter() - start) * 1e3)
    if hvd.rank() == 0:
        print(f"allreduce_ms={statistics.median(times):.3f}")
    return 0


def check_allreduce(report: Report, tf, gpus: int) -> None:
    if gpus < 2:
        report.ok(f"2-GPU allreduce skipped: {gpus} GPU(s) visible (GPUS=2 to time it)")
        return
    try:
        if report.engine == "tf":
            ms = tf_allreduce_ms(tf)
        else:
            horovodrun = Path(sys.executable).parent / "horovodrun"
            proc = subprocess.run([str(horovodrun), "-np", "2", "-H", "localhost:2", sys.executable, "-m",
                                   "stockpredict.gpucheck", "--horovod-allreduce-worker"],
                                  capture_output=True, text=True, timeout=300)
            match = re.search(r"allreduce_ms=([\d.]+)", proc.stdout)
            if not match:
                raise RuntimeError(" ".join((proc.stderr or proc.stdout).split()[-30:]))
            ms = float(match.group(1))
    except Exception as err:  # noqa: BLE001 -- any failure here is a finding, reported in one line
        report.fail(f"2-GPU allreduce failed: {' '.join(str(err).split())[:300]}",
                    "see NCCL_DEBUG=INFO output; check the CUDA/NCCL modules in the profile")
        return
    report.ok(f"2-GPU allreduce of {GRADIENT_FLOATS} floats: {ms:.3f} ms (median of {ALLREDUCE_REPEATS})")


def check_engine(engine: str, out: Callable[[str], None] = print) -> bool:
    """Every check of `engine` in this interpreter; True if all passed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    report = Report(engine, out)
    gpus = check_gpus(report, tf)
    check_cudnn_lstm(report, tf)
    check_build(report, tf)
    check_allreduce(report, tf, gpus)
    return not report.failed


def check_all(engines: Sequence[str] = tuple(ENGINE_VENVS), repo: Path = REPO) -> bool:
    """Each engine's checks in its own environment (repo/.venv, repo/.venv-tf); True if all passed."""
    passed = True
    for engine in engines:
        python = repo / ENGINE_VENVS[engine] / "bin" / "python"
        if not python.exists():
            print(f"{engine}: FAIL no environment {python.parent.parent}; fix: {SETUP_FIX[engine]}",
                  flush=True)
            passed = False
            continue
        proc = subprocess.run([str(python), "-m", "stockpredict.gpucheck", "--engine", engine],
                              env=dict(os.environ, PYTHONPATH=str(repo)), timeout=900)
        passed = passed and proc.returncode == 0
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stockpredict.gpucheck",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=tuple(ENGINE_VENVS),
                        help="check one engine in this interpreter")
    parser.add_argument("--horovod-allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.horovod_allreduce_worker:
        return horovod_allreduce_worker()
    if args.engine:
        return 0 if check_engine(args.engine) else 1
    return 0 if check_all() else 1


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
