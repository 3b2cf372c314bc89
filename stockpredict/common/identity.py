"""What a run trained on and with: the dataset's identity and the model configuration.

The trainer records both in `run_start` (fields `dataset_id` and `model`, see stockpredict/common/timing.py);
the report compares runs only when both agree (docs/report.md, "Comparability key"). No TensorFlow here:
the control side and tests compute the same identity from the same file.

    dataset_identity("data/seq.h5")  -> {"fingerprint": "9f2c...", "name": "seq", "windows": {...}}
    model_identity(config_dict, seq_len=60, n_features=2) -> {"lstm_units": 50, ..., "seq_len": 60, ...}

The fingerprint depends on the file's content, never its path: users regenerate files under the same
name, and copy one file to several places.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from stockpredict.common import timing
from stockpredict.common.errors import UserError
from stockpredict.common.layout import SPLITS

# Root attributes the preprocessing stage writes that fix the windows' content: the raw inputs' SHA-256
# per file, the resolved preprocessing config, and what the config implies. Derived counts (dropped,
# skipped, rows) follow from these and are left out.
CONTENT_ATTRS = ("schema_version", "config", "input_sha256", "features", "target_feature", "normalization",
                 "seq_len", "horizon")
# Without input hashes and config (a file from another tool), the fingerprint hashes this many windows
# from the start, middle and end of every split's arrays: a few hundred KB read, not the whole file.
SAMPLE_WINDOWS = 64
# The model settings that change what a run computes (and so its time per epoch and its accuracy).
MODEL_FIELDS = timing.MODEL_FIELDS
FINGERPRINT_VERSION = 1  # part of the hashed text: a change of recipe must not collide with old values


def _plain(value: Any) -> Any:
    """An HDF5 attribute as JSON-able data; JSON text attributes (config, input_sha256) are parsed."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, (dict, list)) else value
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _window_counts(h5: h5py.File) -> dict[str, int]:
    return {split: int(h5[f"{split}/y"].shape[0]) for split in SPLITS if f"{split}/y" in h5}


def _sample_digest(h5: h5py.File) -> str:
    """SHA-256 over shapes, dtypes and a few windows of every dataset of every split."""
    digest = hashlib.sha256()
    for split in SPLITS:
        if split not in h5:
            continue
        for name in sorted(h5[split]):
            data = h5[split][name]
            if not isinstance(data, h5py.Dataset):
                continue
            digest.update(f"{split}/{name} {data.shape} {data.dtype.str}\n".encode())
            n = data.shape[0] if data.shape else 0
            starts = sorted({0, max(0, n // 2 - SAMPLE_WINDOWS // 2), max(0, n - SAMPLE_WINDOWS)})
            for start in starts if n else ():
                digest.update(np.ascontiguousarray(data[start:start + SAMPLE_WINDOWS]).tobytes())
    return digest.hexdigest()


def fingerprint_basis(h5: h5py.File) -> dict[str, Any]:
    """What the fingerprint hashes: the content attributes and window counts, or a byte sample."""
    windows = _window_counts(h5)
    attrs = h5.attrs
    if "input_sha256" in attrs and "config" in attrs:
        recorded = {name: _plain(attrs[name]) for name in CONTENT_ATTRS if name in attrs}
        return {"version": FINGERPRINT_VERSION, "source": "attrs", "attrs": recorded, "windows": windows}
    return {"version": FINGERPRINT_VERSION, "source": "sample", "windows": windows,
            "sample_sha256": _sample_digest(h5)}


def fingerprint_basis_of(path: str | Path) -> dict[str, Any]:
    """fingerprint_basis of the file at `path` (to see what a fingerprint rests on)."""
    with _open(path) as h5:
        return fingerprint_basis(h5)


def dataset_identity(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """`run_start.dataset_id`: {"fingerprint", "name", "windows"}. `name` (a short human label)
    defaults to the file name without its suffix; only the fingerprint decides comparability."""
    basis = fingerprint_basis_of(path)
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {"fingerprint": digest, "name": name or Path(path).stem, "windows": basis["windows"]}


def dataset_fingerprint(path: str | Path) -> str:
    """SHA-256 (hex) of a sequences file's content identity: its recorded input hashes, preprocessing
    config and window counts; a sample of its bytes when those attributes are absent. Not the path."""
    return dataset_identity(path)["fingerprint"]


def model_identity(config: Mapping[str, Any], seq_len: int, n_features: int) -> dict[str, Any]:
    """`run_start.model`: the model settings found in `config` (the trainer's config as a dict; fields
    it does not have are left out), plus the window shape (minutes, features) the model reads."""
    model = {name: config[name] for name in MODEL_FIELDS if config.get(name) is not None}
    model.update(seq_len=int(seq_len), n_features=int(n_features))
    return model


def _open(path: str | Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read sequences file {path}: {err}") from None
