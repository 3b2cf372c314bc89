"""How the stall timeout reaches the trainer: STALL_TIMEOUT= (make), --stall-timeout (submit), the profile
key stall_timeout, the trainer's default 300 s (stockpredict/job/watchdog.py). Dry runs, no cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from stockpredict.common.errors import UserError
from stockpredict.common.train_config import TrainConfig
from stockpredict.control.submit import train_spec


def _argv(spec) -> list[str]:
    return list(spec.command)


def _stall_flag(argv: list[str]) -> str | None:
    return argv[argv.index("--stall-timeout") + 1] if "--stall-timeout" in argv else None


def test_profile_key_then_flag_win_over_the_default(tmp_path):
    config = TrainConfig(data="/d.h5", run_dir="")
    # The shipped profiles state the default (300): the trainer's argv stays as it always was.
    assert _stall_flag(_argv(train_spec("local", tmp_path, config))) is None
    site = tmp_path / "hangsite.toml"
    site.write_text("stall_timeout = 90\n")
    assert _stall_flag(_argv(train_spec(str(site), tmp_path, config))) == "90"
    assert _stall_flag(_argv(train_spec(str(site), tmp_path, config, stall_timeout=20))) == "20"
    assert _stall_flag(_argv(train_spec("local", tmp_path, config, stall_timeout=0))) == "0"


@pytest.mark.parametrize("text, message", [("stall_timeout = -5\n", "stall_timeout"),
                                           ('stall_timeout = "5m"\n', "must be an integer")])
def test_a_bad_profile_value_is_one_line(tmp_path, text, message):
    site = tmp_path / "badhang.toml"
    site.write_text(text)
    with pytest.raises(UserError, match=message):
        train_spec(str(site), tmp_path, TrainConfig(data="/d.h5", run_dir=""))


def test_make_submit_stall_timeout_reaches_the_script(tmp_path):
    res = tmp_path / "res dir"
    proc = subprocess.run(["make", "--no-print-directory", "submit", "DRY_RUN=1", "NODES=2",
                           "STALL_TIMEOUT=20", f"VENV={Path(sys.prefix)}", "SETUP_DONE=", f"RESULTS={res}",
                           f"DATA={tmp_path / 'd.h5'}"], capture_output=True, text=True, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert " --stall-timeout 20 " in proc.stdout
    bad = subprocess.run(["make", "--no-print-directory", "submit", "DRY_RUN=1", "STALL_TIMEOUT=soon",
                          f"VENV={Path(sys.prefix)}", "SETUP_DONE=", f"RESULTS={res}",
                          f"DATA={tmp_path / 'd.h5'}"], capture_output=True, text=True, cwd=REPO,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=120)
    assert bad.returncode != 0 and "--stall-timeout" in bad.stderr and "Traceback" not in bad.stderr
