"""Where this checkout and its environments are: the repository root and each engine's venv in it."""

from __future__ import annotations

from pathlib import Path

# stockpredict/common/checkout.py -> the repository (an editable install; the checkout's Makefile and
# slurm/ live there).
REPO = Path(__file__).resolve().parents[2]
# The package directory: templates/ and profiles/ are package data in it (links into the checkout).
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Per engine, the environment `make setup [ENGINE=tf]` builds in the checkout (`{venv}` in a profile).
ENGINE_VENVS = {"horovod": ".venv", "tf": ".venv-tf"}


def toolkit_provenance(repo: Path = REPO) -> dict[str, object]:
    """What code a run ran, as ReFrame and JUBE record it: `{"version", "commit", "dirty"}`.

    `version` is the installed distribution's (pyproject.toml), `commit` the checkout's HEAD (40 hex
    digits) and `dirty` whether tracked files differ from it (`git status --porcelain
    --untracked-files=no`: untracked files such as results/ or a scratch script are not the toolkit's
    code). Without git, outside a checkout (a wheel install) or when git refuses the directory (another
    user's checkout), `commit` and `dirty` are None: unknown, never guessed.
    """
    import subprocess
    from importlib import metadata

    try:
        version: str | None = metadata.version("stockpredict")
    except metadata.PackageNotFoundError:
        version = None

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    head = git("rev-parse", "--verify", "HEAD")
    commit = head.strip() if head and len(head.strip()) == 40 else None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"version": version, "commit": commit, "dirty": None if status is None else bool(status.strip())}
