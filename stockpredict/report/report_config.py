"""The report's settings: one frozen dataclass, printed at the end of scaling.md."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from stockpredict.common.errors import UserError, reject_unknown_keys
from stockpredict.report.scaling_model import NETWORKS, Pricing

PRICE_UNITS = ("gpu", "node")


@dataclass(frozen=True)
class ReportConfig:
    """Settings of one report; printed at the end of scaling.md so the tables can be reproduced."""

    runs_dir: Path = Path("results/runs")  # holds one directory per run, each with a timing.jsonl
    out_dir: Path = Path("results")        # where scaling.md, the CSVs and the PNGs go
    warmup_epochs: int = 1                 # epochs excluded after every run_start (graph building)
    plots: bool = True                     # False: tables only (skips importing matplotlib)
    dataset: str | None = None             # show one dataset only: its name, a fingerprint prefix, or
    #                                        (logs without dataset_id) its recorded path; None: all
    # The scaling model (docs/scaling.md):
    network: str | None = None             # predict on this NETWORKS preset; None: the fitted network
    price_per_hour: float | None = None    # adds cost columns; None: no cost columns
    price_unit: str = "gpu"                # the price is per GPU-hour ("gpu") or per node-hour ("node")
    ranks_per_node: int = 1                # ranks billed as one node (price_unit "node")
    target_epochs: int = 1                 # epochs of a planned study, for hours/cost to target
    profile: str | None = None             # site profile the price was read from (recorded only)

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0:
            raise UserError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.dataset == "":  # `make report DATASET=` with nothing after it: no filter
            object.__setattr__(self, "dataset", None)
        if self.network == "":  # `make report NETWORK=`: the fitted network
            object.__setattr__(self, "network", None)
        if self.network is not None and self.network not in NETWORKS:
            raise UserError(f"unknown network {self.network!r}; valid: {', '.join(NETWORKS)}")
        price = self.price_per_hour
        if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))
                                  or not math.isfinite(price) or price < 0):
            raise UserError(f"price per hour must be a number >= 0, got {price!r}")
        if self.price_unit not in PRICE_UNITS:
            raise UserError(f"price unit must be one of {', '.join(PRICE_UNITS)}, got {self.price_unit!r}")
        for name in ("ranks_per_node", "target_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def pricing(self) -> Pricing | None:
        """The price as the scaling model takes it, or None without a price."""
        if self.price_per_hour is None:
            return None
        return Pricing(float(self.price_per_hour), self.price_unit, self.ranks_per_node, self.target_epochs)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ReportConfig":
        """Build from a dict (e.g. parsed JSON); an unknown key fails and lists the valid ones."""
        reject_unknown_keys(cls, values, "report setting")
        kwargs = dict(values)
        for name in ("runs_dir", "out_dir"):
            if name in kwargs:
                kwargs[name] = Path(kwargs[name])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}
