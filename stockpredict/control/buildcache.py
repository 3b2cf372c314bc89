"""A build cache for the Horovod wheel, keyed by everything the compiled extension depends on.

`make setup` compiles Horovod from source against the installed TensorFlow (about 3 minutes on 2 cores).
pip's own wheel cache cannot be trusted with that build: its key is the sdist alone, so a wheel built
against TensorFlow 2.15 on CPU would be reused after a switch to a GPU build or another TensorFlow. This
key covers what the compiled extension links against or was configured with:

- Horovod's version, the Python version and the platform;
- the installed TensorFlow distribution and its version (tensorflow, tensorflow-cpu, ...);
- the first line of `--version` of mpirun, mpicxx (Open MPI's wraps g++), g++ and cmake;
- every HOROVOD_* variable in the build's environment, plus the extra KEY=VALUE words given (the NCCL
  choice of stockpredict.nccl).

    python -m stockpredict.buildcache key horovod==0.28.1 [KEY=VALUE ...]   # prints a 16-hex key

The Makefile looks for `<cache>/horovod-<key>/horovod-*.whl`, installs it if present, and otherwise builds
the wheel, installs it and stores it there (`STOCKPREDICT_WHEEL_CACHE`, default
~/.cache/stockpredict/wheels; set it empty to always build). TensorFlow-free.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Mapping, Sequence

from stockpredict.common.errors import run_cli

TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-macos",
                            "tensorflow-intel")
TOOLS = (("mpirun", "--version"), ("mpicxx", "--version"), ("g++", "--version"), ("cmake", "--version"))


def installed_tensorflow() -> list[str]:
    """`name==version` of each TensorFlow distribution installed in this environment."""
    found = []
    for name in TENSORFLOW_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def tool_version(command: Sequence[str]) -> str:
    """The first line of a tool's version output, or `<tool>: missing`."""
    try:
        proc = subprocess.run(list(command), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return f"{command[0]}: missing"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return f"{command[0]}: {lines[0] if lines else 'no output'}"


def key_parts(requirement: str, extra: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The ordered strings the key hashes; each one names what it is."""
    parts = [f"requirement {requirement}", f"python {platform.python_version()} {sys.implementation.name}",
             f"platform {platform.system()} {platform.machine()} {platform.libc_ver()}"]
    parts += [f"installed {dist}" for dist in installed_tensorflow()] or ["installed tensorflow: none"]
    parts += [tool_version(command) for command in TOOLS]
    parts += [f"env {name}={environ[name]}" for name in sorted(environ) if name.startswith("HOROVOD_")]
    parts += [f"extra {word}" for word in extra]
    return parts


def cache_key(parts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stockpredict.buildcache",
                                     description="Build-cache key of a compiled wheel (Horovod).")
    sub = parser.add_subparsers(dest="command", required=True)
    key = sub.add_parser("key", help="print the cache key")
    key.add_argument("requirement", help="e.g. horovod==0.28.1")
    key.add_argument("extra", nargs="*", help="more KEY=VALUE words the build depends on")
    key.add_argument("--explain", action="store_true", help="print what the key covers, one line each")
    ns = parser.parse_args(argv)
    parts = key_parts(ns.requirement, ns.extra, os.environ)
    if ns.explain:
        print("\n".join(parts))
    print(cache_key(parts))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
