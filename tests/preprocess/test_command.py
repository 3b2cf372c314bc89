"""The preprocessing command line as a user runs it: real processes, real signals, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from preprocess.pipeline import build_dataset
from preprocess.synthetic import write_universe

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


@pytest.fixture(scope="module")
def universe(tmp_path_factory):
    """16 tickers x 5 days: the write phase lasts long enough (~0.1 s) to be interrupted."""
    raw = tmp_path_factory.mktemp("cli") / "raw"
    write_universe(raw, tickers=16, days=5, seed=3)
    return raw


def _assert_one_line_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and pattern in errors[0], proc.stderr


def test_help_lists_the_options():
    proc = subprocess.run([str(VENV_BIN / "stockpredict-preprocess"), "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    for option in ("--raw", "--out", "--force", "--workers", "--split", "--fill-gaps", "--tz", "--normalize",
                   "--representation"):
        assert option in proc.stdout


def test_a_run_prints_the_summary_and_warns_about_skipped_files(universe, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("AAPL.csv", "MSFT.csv"):
        (raw / name).write_bytes((universe / name).read_bytes())
    (raw / "BAD.csv").write_text("timestamp,close,volume\n2024-03-04T14:30:00+00:00,abc,1\n")
    out = tmp_path / "seq.h5"
    proc = run("preprocess", "--raw", str(raw), "--out", str(out), "--workers", "2", "--split", "random")
    assert proc.returncode == 0, proc.stderr
    assert "skipping BAD.csv row 2: non-numeric close 'abc'" in proc.stderr
    assert "leak" in proc.stderr  # the random-split warning
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal
    for row in ("tickers", "2 used, 1 skipped", "windows train", "windows val", "windows test", "seconds",
                "windows/s"):
        assert row in proc.stdout
    assert h5py.is_hdf5(out)


@pytest.mark.parametrize("args,pattern", [
    (["--raw", "{tmp}/nope"], "does not exist"),
    (["--raw", "{tmp}"], "has no <TICKER>.csv files"),
    (["--raw", "{raw}", "--features", "volume"], "must include 'close'"),
    (["--raw", "{raw}", "--tz", "Nowhere/Town"], "unknown time zone"),
    (["--raw", "{raw}", "--workers", "0"], "--workers must be >= 1"),
])
def test_user_errors_are_one_line_and_leave_no_output(universe, tmp_path, args, pattern):
    out = tmp_path / "out" / "seq.h5"
    args = [a.format(tmp=tmp_path, raw=universe) for a in args]
    proc = run("preprocess", *args, "--out", str(out))
    _assert_one_line_error(proc, pattern)
    assert not out.exists()


def test_an_existing_output_is_kept_unless_force(universe, tmp_path):
    out = tmp_path / "seq.h5"
    out.write_text("previous result")
    _assert_one_line_error(run("preprocess", "--raw", str(universe), "--out", str(out)), "pass --force")
    assert out.read_text() == "previous result"
    assert run("preprocess", "--raw", str(universe), "--out", str(out), "--force").returncode == 0
    assert h5py.is_hdf5(out)


def _start_and_signal(raw: Path, out: Path, signum: int) -> subprocess.Popen:
    """Start a run and send `signum` while the temporary output exists (i.e. mid-write)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "preprocess", "--raw", str(raw), "--out", str(out),
                             "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    temp = out.parent / f".{out.name}.{proc.pid}.tmp"
    deadline = time.monotonic() + 60
    while not temp.exists():
        assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.kill(proc.pid, signum)
    proc.wait(timeout=60)
    return proc


def test_sigkill_mid_write_leaves_no_output_and_the_rerun_matches_an_uninterrupted_run(universe, tmp_path):
    reference = tmp_path / "reference.h5"
    build_dataset(universe, reference, workers=2, progress=False)
    out = tmp_path / "seq.h5"
    proc = _start_and_signal(universe, out, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert list(tmp_path.glob(f".{out.name}.*.tmp"))  # SIGKILL cannot clean up: the temp stays aside
    rerun = run("preprocess", "--raw", str(universe), "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert out.read_bytes() == reference.read_bytes()
    assert not list(tmp_path.glob(f".{out.name}.*.tmp"))  # the stale temp of the killed run is gone


@pytest.mark.parametrize("signum,status,message", [(signal.SIGTERM, 143, None),
                                                    (signal.SIGINT, 130, "error: interrupted")])
def test_sigterm_and_sigint_mid_write_remove_the_temporary_file(universe, tmp_path, signum, status, message):
    out = tmp_path / "seq.h5"
    proc = _start_and_signal(universe, out, signum)
    stderr = proc.stderr.read()
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    if message:
        assert message in stderr
    assert not out.exists()
    assert not list(tmp_path.glob(f".{out.name}*"))


def test_a_progress_bar_over_tickers_is_drawn_on_a_terminal(universe, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "preprocess", "--raw", str(universe), "--out",
                             str(tmp_path / "seq.h5")], stdout=subprocess.DEVNULL, stderr=slave,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    os.close(slave)
    drawn = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        drawn += data
    os.close(master)
    assert proc.wait(timeout=60) == 0
    text = drawn.decode(errors="replace")
    assert "reading: 100%" in text and "16/16" in text and "writing: 100%" in text
