"""common/accounting.py: sacct's answer or None, never an exception or a hang (fake sacct programs on PATH;
the real one is exercised by the cluster tests: make status and the report job's cost table)."""

from __future__ import annotations

import os
from pathlib import Path

from stockpredict.common.accounting import sacct_rows, sacct_text


def _fake_sacct(tmp_path: Path, body: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text(f"#!/bin/bash\n{body}\n")
    (bin_dir / "sacct").chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin")


def test_the_answer_comes_back_with_the_arguments_given(tmp_path):
    env = _fake_sacct(tmp_path, 'echo "args: $*"')
    assert sacct_text(["-X", "-j", "41"], env=env) == "args: -X -j 41\n"


def test_accounting_off_a_hang_or_no_sacct_is_none(tmp_path):
    off = _fake_sacct(tmp_path, "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1")
    assert sacct_text(["-X"], env=off) is None
    (tmp_path / "bin" / "sacct").write_text("#!/bin/bash\nsleep 30\n")
    assert sacct_text(["-X"], env=off, timeout=0.5) is None
    assert sacct_text(["-X"], env=dict(os.environ, PATH=str(tmp_path / "empty"))) is None


def test_rows_follow_a_header_when_there_is_one_and_skip_torn_lines():
    text = "JobID|State|JobName|Elapsed\n7|COMPLETED|a|b|00:00:09\n8|FAILED\n\n9|RUNNING|n|00:01:00\n"
    rows = sacct_rows(text, ["JobID", "Elapsed"])  # the header wins over the fields asked for
    assert rows == [{"JobID": "7", "State": "COMPLETED", "JobName": "a|b", "Elapsed": "00:00:09"},
                    {"JobID": "9", "State": "RUNNING", "JobName": "n", "Elapsed": "00:01:00"}]
    # No JobName to take the surplus: it is dropped.
    assert sacct_rows("7|x|y\n", ["JobID", "State"]) == [{"JobID": "7", "State": "x"}]
    assert sacct_rows("", ["JobID"]) == []
