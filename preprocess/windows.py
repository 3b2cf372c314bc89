"""Windows and targets over a ticker's (session, minute) grid, with numpy views instead of copies.

Definitions (session minute 0 = 09:30 exchange time, 390 minutes per session):
    a window ending at minute e covers minutes e-seq_len+1 .. e of one session;
    its target is the close at minute e + horizon of the same session;
    e runs over seq_len-1 .. 390-horizon-1, so a session has 390 - seq_len - horizon + 1 candidate windows
    (326 for seq_len=60, horizon=5). No window or target crosses a session boundary.
A candidate is dropped when any of its minutes or its target minute is missing, NaN, has a non-positive
price or a negative volume; the reason recorded is the first of those that applies.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from preprocess.bars import SESSION_MINUTES
from preprocess.preprocess_config import PRICE_FEATURES

# Per-minute problem codes; a window takes the largest code among its minutes, so the order here is
# the priority of the reported drop reason.
OK = 0
DROP_REASONS = {4: "missing_minute", 3: "nan_value", 2: "nonpositive_price", 1: "negative_volume"}


def windows_per_session(seq_len: int, horizon: int) -> int:
    """Number of candidate windows in one complete session."""
    return SESSION_MINUTES - seq_len - horizon + 1


def minute_codes(values: np.ndarray, present: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    """int8 (n_sessions, 390): 0 for a usable minute, else the drop-reason code of its worst problem."""
    codes = np.zeros(present.shape, dtype=np.int8)
    prices = [j for j, f in enumerate(features) if f in PRICE_FEATURES]
    volumes = [j for j, f in enumerate(features) if f not in PRICE_FEATURES]
    with np.errstate(invalid="ignore"):
        if volumes:
            codes[(values[:, :, volumes] < 0).any(axis=2)] = 1
        codes[(values[:, :, prices] <= 0).any(axis=2)] = 2
    codes[np.isnan(values).any(axis=2)] = 3
    codes[~present] = 4
    return codes


def window_status(codes: np.ndarray, seq_len: int, horizon: int) -> np.ndarray:
    """int8 (n_sessions, n_windows): 0 where the window and its target are usable, else a reason code."""
    n = windows_per_session(seq_len, horizon)
    worst_input = sliding_window_view(codes, seq_len, axis=1)[:, :n].max(axis=2)
    target = codes[:, seq_len - 1 + horizon: seq_len - 1 + horizon + n]
    return np.maximum(worst_input, target)


def window_inputs(values: np.ndarray, seq_len: int, horizon: int) -> np.ndarray:
    """Read-only view (n_sessions, n_windows, seq_len, n_features) of every candidate window's inputs."""
    n = windows_per_session(seq_len, horizon)
    # sliding_window_view puts the window axis last:
    # (s, start, feature, minute) -> (s, start, minute, feature)
    return sliding_window_view(values, seq_len, axis=1)[:, :n].transpose(0, 1, 3, 2)


def window_targets(close: np.ndarray, seq_len: int, horizon: int) -> np.ndarray:
    """(n_sessions, n_windows) close at minute e + horizon for each candidate window end e."""
    n = windows_per_session(seq_len, horizon)
    return close[:, seq_len - 1 + horizon: seq_len - 1 + horizon + n]


def window_end_minutes(seq_len: int, horizon: int) -> np.ndarray:
    """Session minute e (0 = 09:30) of each candidate window's last input minute."""
    return np.arange(seq_len - 1, seq_len - 1 + windows_per_session(seq_len, horizon))


def coverage(mask: np.ndarray, seq_len: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Minutes touched by the selected windows: (input minutes, target minutes), bool (n_sessions, 390)."""
    n_sessions, n = mask.shape
    edges = np.zeros((n_sessions, SESSION_MINUTES + 1), dtype=np.int32)
    edges[:, :n] += mask
    edges[:, seq_len:seq_len + n] -= mask
    inputs = np.cumsum(edges, axis=1)[:, :SESSION_MINUTES] > 0
    targets = np.zeros((n_sessions, SESSION_MINUTES), dtype=bool)
    targets[:, seq_len - 1 + horizon: seq_len - 1 + horizon + n] = mask
    return inputs, targets
