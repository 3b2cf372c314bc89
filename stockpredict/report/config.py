"""The report's settings: one frozen dataclass, printed at the end of scaling.md."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..cli import UserError, reject_unknown_keys


@dataclass(frozen=True)
class ReportConfig:
    """Settings of one report; printed at the end of scaling.md so the tables can be reproduced."""

    runs_dir: Path = Path("results/runs")  # holds one directory per run, each with a timing.jsonl
    out_dir: Path = Path("results")        # where scaling.md, the CSVs and the PNGs go
    warmup_epochs: int = 1                 # epochs excluded after every run_start (graph building)
    plots: bool = True                     # False: tables only (skips importing matplotlib)
    dataset: str | None = None             # show one dataset only: its name, a fingerprint prefix, or
    #                                        (logs without dataset_id) its recorded path; None: all

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0:
            raise UserError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.dataset == "":  # `make report DATASET=` with nothing after it: no filter
            object.__setattr__(self, "dataset", None)

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
