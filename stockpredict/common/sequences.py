"""What a sequences file holds, read from its attributes and shapes: the contract's reader for every
stage (the trainer, the benchmarks, the submission side sizing a job). h5py and numpy only.

The names are in stockpredict/common/layout.py; the one reader of windows (every schema) is
stockpredict/common/reader.py, the trainer's epochs of batches stockpredict/job/data.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from stockpredict.common import layout
from stockpredict.common import transform as transforms
from stockpredict.common.errors import UserError
from stockpredict.common.layout import READABLE_SCHEMAS, SCHEMA_VERSION, SPLITS

# Block length of a file without chunks (the default chunk: 2,048 windows of 60 x 2 float32 = 1 MB
# per read); a chunked file's blocks are its chunk length.
BLOCK_WINDOWS = layout.DEFAULT_CHUNK_WINDOWS


@dataclass(frozen=True)
class SequencesInfo:
    """What the trainer needs to know about a sequences file, read from its attributes and shapes."""

    path: str
    features: tuple[str, ...]
    target_feature: str
    close_index: int          # column of the target feature in x; x[:, -1, close_index] = persistence
    seq_len: int              # minutes per window
    n_features: int
    windows: dict             # {"train": n, "val": n, "test": n}
    normalization: str        # "global" or "per_ticker" (min-max statistics of the seed representation)
    norm_min: np.ndarray      # (n_features,) or (n_tickers, n_features), float64
    norm_max: np.ndarray
    block_windows: int = BLOCK_WINDOWS  # /train/x (schema 3: /train/y) chunk length
    schema_version: int = SCHEMA_VERSION
    representation: str = "seed"    # "returns" or "seed" (stockpredict/common/transform.py)
    transform: transforms.Transform | None = None  # model output -> price: transform.target_inverse(...)
    optimum: dict | None = None     # best achievable skill (synthetic data); None = unknown


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_sequences_info(path: str | Path) -> SequencesInfo:
    """Open and validate a sequences file; every problem is a one-line UserError.

    Called identically on every rank before any collective, so all ranks fail (or pass) together.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sequences file not found: {path} (write it with `make preprocess`)")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"{path} is not a readable HDF5 file ({err})") from None
    with handle:
        try:
            return _read_info(path, handle)
        except UserError:
            raise
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:  # h5py on damaged bytes
            detail = " ".join(str(err).split())[:200]
            raise UserError(f"{path}: cannot read it ({detail}); the file is damaged or cut short, re-run "
                            f"preprocessing") from None


def _read_info(path: Path, handle: h5py.File) -> SequencesInfo:
    attrs = handle.attrs
    version = attrs.get("schema_version")
    if version is None or int(version) not in READABLE_SCHEMAS:
        raise UserError(f"{path}: schema_version is {None if version is None else int(version)}, "
                        f"this trainer reads schema_version {' or '.join(map(str, READABLE_SCHEMAS))}; "
                        f"re-run preprocessing (make preprocess) with this version of the toolkit")
    version = int(version)
    if version >= 3:
        datasets = (layout.SERIES, layout.START, layout.Y, layout.TICKER, layout.LAST_CLOSE,
                    layout.SEGMENT_START, layout.SEGMENT_TICKER)
    else:
        datasets = ("x", "y", "ticker") + (("last_close",) if version >= 2 else ())
    missing = [f"/{s}/{d}" for s in SPLITS for d in datasets if f"{s}/{d}" not in handle]
    missing += [a for a in ("features", "target_feature", "norm_min", "norm_max") if a not in attrs]
    missing += [a for a in ("representation", "transform") if version >= 2 and a not in attrs]
    missing += [a for a in (layout.ATTR_SEQ_LEN,) if version >= 3 and a not in attrs]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)} (not a sequences file?)")
    features = tuple(_text(f) for f in attrs["features"])
    target = _text(attrs["target_feature"])
    if target not in features:
        raise UserError(f"{path}: target_feature {target!r} is not among features {list(features)}")
    windows = {}
    if version >= 3:
        seq_len = int(attrs[layout.ATTR_SEQ_LEN])
        for split in SPLITS:
            group = handle[split]
            series = group[layout.SERIES].shape
            n = group[layout.Y].shape[0]
            if len(series) != 2 or series[1] != len(features):
                raise UserError(f"{path}: /{split}/series has shape {series}, expected (minutes, "
                                f"{len(features)})")
            if any(group[d].shape[0] != n for d in (layout.START, layout.TICKER, layout.LAST_CLOSE)):
                raise UserError(f"{path}: /{split} arrays disagree in length (y {n})")
            windows[split] = int(n)
        block = layout.chunk_windows(handle[f"train/{layout.Y}"], BLOCK_WINDOWS)
    else:
        x_shape = handle["train/x"].shape
        if len(x_shape) != 3 or x_shape[2] != len(features):
            raise UserError(f"{path}: /train/x has shape {x_shape}, expected (n, seq_len, "
                            f"{len(features)})")
        for split in SPLITS:
            shape, n_y = handle[f"{split}/x"].shape, handle[f"{split}/y"].shape[0]
            if shape[1:] != x_shape[1:] or n_y != shape[0] or handle[f"{split}/ticker"].shape[0] != n_y:
                raise UserError(f"{path}: /{split} arrays disagree in shape ({shape}, y {n_y})")
            windows[split] = int(shape[0])
        seq_len = int(x_shape[1])
        block = layout.chunk_windows(handle["train/x"], BLOCK_WINDOWS)
    if windows["train"] == 0:
        raise UserError(f"{path}: the train split is empty (0 windows); check the preprocessing "
                        f"window counts (attrs 'window_counts')")
    try:
        transform = transforms.from_attrs(attrs)
    except (transforms.TransformError, KeyError) as err:
        raise UserError(f"{path}: cannot read how to invert its representation ({err}); re-run "
                        f"preprocessing") from None
    if version >= 2 and _text(attrs["representation"]) != transform.name:
        raise UserError(f"{path}: attribute representation {_text(attrs['representation'])!r} disagrees "
                        f"with its transform {transform.name!r}; re-run preprocessing")
    if tuple(transform.features) != features:
        raise UserError(f"{path}: the transform's features {list(transform.features)} differ from "
                        f"the file's {list(features)}; re-run preprocessing")
    return SequencesInfo(
        path=str(path), features=features, target_feature=target,
        close_index=features.index(target), seq_len=seq_len, n_features=len(features),
        windows=windows, normalization=_text(attrs.get("normalization", "global")),
        norm_min=np.asarray(attrs["norm_min"], np.float64),
        norm_max=np.asarray(attrs["norm_max"], np.float64),
        block_windows=block,
        schema_version=version, representation=transform.name, transform=transform,
        optimum=read_optimum(attrs),
    )


def read_optimum(attrs) -> dict | None:
    """The `optimum` attribute as a dict (kalman_skill, window_skill, horizon, seq_len, method, ...), or
    None when unknown: real data, a schema-1 file, or an unreadable value."""
    text = _text(attrs.get("optimum", "unknown"))
    if text == "unknown":
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) and "kalman_skill" in value else None


def describe_windows(info: SequencesInfo) -> str:
    """One line for logs: window counts and shape."""
    scaling = (f"{info.normalization} min-max" if info.representation == "seed" else
               "log returns vs the last close, standardised")
    best = ("unknown" if info.optimum is None else
            f"{info.optimum['kalman_skill']:.3f} (Kalman), {info.optimum['window_skill']:.3f} (window)")
    return (f"{json.dumps(info.windows)} windows of {info.seq_len} min x {info.n_features} features "
            f"({', '.join(info.features)}; target {info.target_feature}; representation "
            f"{info.representation}: {scaling}; best achievable skill {best})")
