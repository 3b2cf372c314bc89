"""Which NCCL Horovod's GPU build compiles against, found without hand-set HOROVOD_NCCL_* variables.

`make setup TF_EXTRA=gpu` installs `tensorflow[and-cuda]`, which brings NCCL as the pip wheel
`nvidia-nccl-cu12`: headers in site-packages/nvidia/nccl/include, the library as lib/libnccl.so.2 only.
Horovod's build looks for `libnccl.so` (unversioned), so it fails on that layout. `find_nccl` picks, in
this order:

1. HOROVOD_NCCL_HOME / HOROVOD_NCCL_INCLUDE / HOROVOD_NCCL_LIB already set: used as given;
2. a site module's NCCL (`module load nccl` sets NCCL_HOME, NCCL_ROOT or NCCL_DIR): its include/ and lib/;
3. the pip wheel in the environment's site-packages: the missing `libnccl.so -> libnccl.so.2` link is
   created next to it (inside the venv, nothing outside changes).

    python -m stockpredict.nccl [--site-packages DIR]   # prints KEY=VALUE lines for Horovod's build

and says on stderr which NCCL it chose and its version (from nccl.h). No NCCL: one line naming the fix.
TensorFlow-free; the Makefile runs it before `pip install horovod`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from stockpredict.common.errors import UserError, run_cli

SITE_MODULE_VARS = ("NCCL_HOME", "NCCL_ROOT", "NCCL_DIR")


@dataclass(frozen=True)
class Nccl:
    """An NCCL installation: header and library directories, its version and where it came from."""

    include: Path
    lib: Path
    version: str | None   # "2.21.5" from nccl.h, None if unreadable
    source: str           # "HOROVOD_NCCL_* as set", "site module (...)" or "pip wheel nvidia-nccl-cu12"

    def horovod_env(self) -> dict[str, str]:
        """The variables Horovod's setup.py reads for an NCCL GPU build."""
        return {"HOROVOD_GPU_OPERATIONS": "NCCL", "HOROVOD_NCCL_INCLUDE": str(self.include),
                "HOROVOD_NCCL_LIB": str(self.lib), "HOROVOD_NCCL_HOME": str(self.include.parent)}

    def describe(self) -> str:
        return f"NCCL {self.version or '(version unknown)'} from {self.lib} ({self.source})"


def header_version(include: Path) -> str | None:
    """NCCL_MAJOR.NCCL_MINOR.NCCL_PATCH from include/nccl.h; None if absent."""
    try:
        text = (include / "nccl.h").read_text(errors="replace")
    except OSError:
        return None
    parts = [re.search(rf"#define\s+NCCL_{name}\s+(\d+)", text) for name in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(p.group(1) for p in parts) if all(parts) else None


def _library(lib: Path) -> Path | None:
    """libnccl.so, or the newest versioned libnccl.so.N in `lib`."""
    if (lib / "libnccl.so").exists():
        return lib / "libnccl.so"
    versioned = sorted(lib.glob("libnccl.so.*"))
    return versioned[-1] if versioned else None


def link_unversioned(lib: Path) -> Path:
    """Create lib/libnccl.so -> libnccl.so.N (relative link) if missing; the link's path."""
    link = lib / "libnccl.so"
    if not link.exists():
        target = _library(lib)
        if target is None:
            raise UserError(f"no libnccl.so* in {lib}")
        if link.is_symlink():  # a dangling link from an older wheel
            link.unlink()
        link.symlink_to(target.name)
    return link


def find_nccl(site_packages: Sequence[Path], environ: Mapping[str, str] = os.environ) -> Nccl:
    """The NCCL for Horovod's build (see the module docstring for the order)."""
    if any(environ.get(f"HOROVOD_NCCL_{k}") for k in ("HOME", "INCLUDE", "LIB")):
        home = Path(environ.get("HOROVOD_NCCL_HOME", ""))
        include = Path(environ.get("HOROVOD_NCCL_INCLUDE") or home / "include")
        lib = Path(environ.get("HOROVOD_NCCL_LIB") or home / "lib")
        return Nccl(include, lib, header_version(include), "HOROVOD_NCCL_* as set")
    for var in SITE_MODULE_VARS:
        home = environ.get(var)
        if home and (Path(home) / "include" / "nccl.h").is_file():
            lib = next((Path(home) / d for d in ("lib", "lib64") if _library(Path(home) / d)), None)
            if lib is not None:
                include = Path(home) / "include"
                return Nccl(include, lib, header_version(include), f"site module ({var}={home})")
    for site in site_packages:
        root = Path(site) / "nvidia" / "nccl"
        if (root / "include" / "nccl.h").is_file() and _library(root / "lib") is not None:
            link_unversioned(root / "lib")
            return Nccl(root / "include", root / "lib", header_version(root / "include"),
                        "pip wheel nvidia-nccl-cu12")
    raise UserError("no NCCL found for Horovod's GPU build: `make setup TF_EXTRA=gpu` installs it with "
                    "TensorFlow (pip nvidia-nccl-cu12), or `module load nccl` (sets NCCL_HOME), or set "
                    "HOROVOD_NCCL_HOME")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stockpredict.nccl",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--site-packages", action="append", type=Path,
                        help="where to look for the pip wheel (default: this interpreter's)")
    args = parser.parse_args(argv)
    paths = sysconfig.get_paths()
    sites = args.site_packages or [Path(paths["purelib"]), Path(paths["platlib"])]
    nccl = find_nccl(sites)
    print(f"setup: building Horovod with {nccl.describe()}", file=sys.stderr)
    for key, value in nccl.horovod_env().items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
