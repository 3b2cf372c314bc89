"""The Horovod wheel's build-cache key (stockpredict/control/buildcache.py): it changes with everything the
compiled
extension depends on, and only with that."""

from __future__ import annotations

import subprocess
import sys

from stockpredict.control import buildcache


def _key(monkeypatch, tensorflow=("tensorflow-cpu==2.15.1",), environ=None, extra=(), tools=None):
    monkeypatch.setattr(buildcache, "installed_tensorflow", lambda: list(tensorflow))
    monkeypatch.setattr(buildcache, "tool_version",
                        lambda command: f"{command[0]}: {(tools or {}).get(command[0], '1.0')}")
    parts = buildcache.key_parts("horovod==0.28.1", list(extra), environ or {"PATH": "/usr/bin"})
    return buildcache.cache_key(parts)


def test_the_key_is_stable_and_ignores_unrelated_environment(monkeypatch):
    first = _key(monkeypatch)
    assert first == _key(monkeypatch, environ={"PATH": "/elsewhere", "HOME": "/root"})
    assert len(first) == 16 and int(first, 16) >= 0


def test_the_key_changes_with_what_the_build_links_against(monkeypatch):
    base = _key(monkeypatch)
    changed = [
        _key(monkeypatch, tensorflow=("tensorflow==2.15.1",)),               # GPU build (TF_EXTRA=gpu)
        _key(monkeypatch, tensorflow=("tensorflow-cpu==2.15.0",)),           # another TensorFlow
        _key(monkeypatch, environ={"HOROVOD_GPU_OPERATIONS": "NCCL"}),        # a build switch
        _key(monkeypatch, extra=("HOROVOD_NCCL_HOME=/opt/nccl",)),  # stockpredict.control.nccl's choice
        _key(monkeypatch, tools={"mpirun": "mpirun (Open MPI) 5.0.3"}),      # another MPI
        _key(monkeypatch, tools={"g++": "g++ 13.2.0"}),                       # another compiler
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_the_cli_prints_a_key_and_what_it_covers():
    proc = subprocess.run([sys.executable, "-m", "stockpredict.buildcache", "key", "horovod==0.28.1", "A=1",
                           "--explain"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "requirement horovod==0.28.1" and "extra A=1" in lines
    assert any(line.startswith("mpirun: ") for line in lines) and len(lines[-1]) == 16
