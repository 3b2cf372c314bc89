"""The preprocessing configuration: one frozen dataclass, every default visible and commented.

The resolved config is stored as JSON in the `config` attribute of every sequences file. Options that
change only how the run executes (worker count, overwriting) are not part of it, so the same input and
config give the same file whatever the worker count.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from stockpredict.common.errors import UserError, reject_unknown_keys
from stockpredict.common.layout import SCHEMA_VERSION, WRITABLE_SCHEMAS
from stockpredict.common.transform import REPRESENTATIONS

PRICE_FEATURES = ("open", "high", "low", "close")
KNOWN_FEATURES = PRICE_FEATURES + ("volume",)
TARGET_FEATURE = "close"
BAR_LABELS = ("start", "end")  # what a bar's timestamp marks: its minute's start, or its end


@dataclass(frozen=True)
class PreprocessConfig:
    """What turns raw minute bars into windows. Units: minutes for lengths, fractions of trading days."""

    features: tuple[str, ...] = ("close", "volume")  # order of x's last axis; must include "close"
    seq_len: int = 60            # minutes of history per window (e-59..e for seq_len=60)
    horizon: int = 5             # target = close at minute e + horizon of the same session
    split: str = "chronological"  # "chronological" by session date, or "random" (the seed's; leaks)
    train_frac: float = 0.7      # fraction of trading days (chronological) or windows (random)
    val_frac: float = 0.2        # test gets the rest
    split_seed: int = 0          # only used by the random split
    representation: str = "returns"  # "returns": log returns vs the window's last close, standardised
    #                                  (learns the move); "seed": the seed's min-max price level
    normalize: str = "global"    # seed representation's min-max: "global" per feature, or "per_ticker"
    fill_gaps: int = 0           # forward-fill runs of <= K missing minutes (0: never fill)
    tz: str = "America/New_York"  # zone of naive timestamps; UTC-offset timestamps ignore it
    chunk_windows: int = 2048    # HDF5 chunk length along n (windows)
    compression: str = "gzip"    # HDF5 filter: "gzip" (level 4), "lzf", or "none" (see docs/data.md)
    bar_label: str = "start"     # a bar's timestamp is its minute's "start" (09:30 = first bar) or "end"
    schema: int = SCHEMA_VERSION  # 3: each minute stored once, windows built when read (docs/data.md);
    #                               2: every window stored (to compare against; 30x larger, slower)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        unknown = [f for f in self.features if f not in KNOWN_FEATURES]
        if unknown or not self.features:
            raise UserError(f"unknown feature(s) {unknown or '(none)'}; valid: {', '.join(KNOWN_FEATURES)}")
        if len(set(self.features)) != len(self.features):
            raise UserError(f"duplicate feature in {','.join(self.features)}")
        if TARGET_FEATURE not in self.features:
            raise UserError(f"features must include {TARGET_FEATURE!r} (the target and the persistence "
                            f"forecast use it); got {','.join(self.features)}")
        if self.seq_len < 1 or self.horizon < 1 or self.seq_len + self.horizon > 390:
            raise UserError(f"need seq_len >= 1, horizon >= 1 and seq_len + horizon <= 390 minutes; "
                            f"got seq_len={self.seq_len}, horizon={self.horizon}")
        if self.split not in ("chronological", "random"):
            raise UserError(f"split must be 'chronological' or 'random', not {self.split!r}")
        if not (0 < self.train_frac <= 1 and 0 <= self.val_frac and self.train_frac + self.val_frac <= 1):
            raise UserError(f"need 0 < train_frac <= 1, val_frac >= 0, train_frac + val_frac <= 1; "
                            f"got {self.train_frac}, {self.val_frac}")
        if self.representation not in REPRESENTATIONS:
            raise UserError(f"representation must be one of {', '.join(REPRESENTATIONS)}, "
                            f"not {self.representation!r}")
        if self.normalize not in ("global", "per_ticker"):
            raise UserError(f"normalize must be 'global' or 'per_ticker', not {self.normalize!r}")
        if self.fill_gaps < 0:
            raise UserError(f"fill_gaps must be >= 0 minutes, not {self.fill_gaps}")
        if self.chunk_windows < 1:
            raise UserError(f"chunk_windows must be >= 1, not {self.chunk_windows}")
        if self.compression not in ("lzf", "gzip", "none"):
            raise UserError(f"compression must be 'lzf', 'gzip' or 'none', not {self.compression!r}")
        if self.schema not in WRITABLE_SCHEMAS:
            raise UserError(f"schema must be one of {', '.join(map(str, WRITABLE_SCHEMAS))}, "
                            f"not {self.schema}")
        if self.bar_label not in BAR_LABELS:
            raise UserError(f"bar_label must be 'start' or 'end', not {self.bar_label!r}")
        try:
            import zoneinfo

            zoneinfo.ZoneInfo(self.tz)
        except Exception:  # zoneinfo raises several types for bad keys
            raise UserError(f"unknown time zone {self.tz!r} "
                            "(use an IANA name like America/New_York)") from None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "PreprocessConfig":
        """Build a config from a dict; unknown keys fail and list the valid ones."""
        reject_unknown_keys(cls, values, "preprocess config key")
        return cls(**values)

    def to_json(self) -> str:
        """The resolved config as sorted JSON (stored in the HDF5 `config` attribute)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @property
    def close_index(self) -> int:
        return self.features.index(TARGET_FEATURE)
