"""The toolkit's provenance (run_start `toolkit`): version, git commit and dirty flag, read from a real
git repository; unknown (None), never guessed, outside one."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from stockpredict.common.checkout import REPO, toolkit_provenance

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_commit_and_dirty_flag_follow_the_tracked_files(tmp_path):
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    _git(repo, "add", "code.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "first")
    clean = toolkit_provenance(repo)
    assert clean["commit"] == _git(repo, "rev-parse", "HEAD") and clean["dirty"] is False
    (repo / "results.csv").write_text("an untracked output is not the toolkit's code\n")
    assert toolkit_provenance(repo)["dirty"] is False
    (repo / "code.py").write_text("x = 2\n")
    assert toolkit_provenance(repo) == dict(clean, dirty=True)


def test_outside_a_checkout_commit_and_dirty_are_unknown(tmp_path):
    found = toolkit_provenance(tmp_path)
    assert found["commit"] is None and found["dirty"] is None


def test_this_checkout_names_its_installed_version_and_head():
    found = toolkit_provenance()
    assert found["version"] and found["commit"] == _git(REPO, "rev-parse", "HEAD")
