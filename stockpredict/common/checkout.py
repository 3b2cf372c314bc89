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
