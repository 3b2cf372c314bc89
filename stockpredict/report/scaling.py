"""The scaling model and the step-time breakdown of one comparability key. Pure: parsed runs in, rows out.

    scaling = key_scaling(runs, benchmarks, config)   -> KeyScaling (the fit, or a one-line note why not)
    rows = step_breakdown_table(runs, scaling)         -> rows of registry.STEP_BREAKDOWN

Points (stockpredict.scaling_model.MeasuredPoint) are built per run, from the same per-run medians as
the timing tables (tables.run_timing): seconds per epoch and steps per epoch over the timed epochs.
The gradient size S comes from run_start `gradient_bytes`; a key none of whose runs recorded it gets no
model, only a note. Runs that recorded a Horovod timeline are left out of the fit: the timeline costs
time and such runs usually cap their steps; they feed the step-time breakdown instead.

Allreduce microbenchmarks (run_start `kind: "allreduce"`, stockpredict/job/allreduce_bench.py) have no
dataset. They join every key with the same engine and the same gradient size: an allreduce of S bytes
on p ranks does not depend on the data. Nothing here takes a ratio across keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from stockpredict.report import scaling_model
from stockpredict.report.parse import Run
from stockpredict.report.registry import STEP_BREAKDOWN
from stockpredict.report.report_config import ReportConfig
from stockpredict.report.scaling_model import MeasuredPoint, ModelError, ScalingAnalysis, ScalingFit
from stockpredict.report.tables import run_timing

FITTED = "fitted"  # the `network` column when the predictions use the fitted latency and bandwidth


@dataclass(frozen=True)
class KeyScaling:
    """The scaling model of one key, or why there is none (`note`)."""

    analysis: ScalingAnalysis | None
    fit: ScalingFit | None                # fitted to the runs (not the --network preset)
    note: str                             # one line; "" when the model was fitted
    points: tuple[MeasuredPoint, ...] = ()
    benchmarks: tuple[str, ...] = ()      # run ids of the allreduce benchmarks used
    left_out: tuple[str, ...] = ()        # run ids not fitted because they recorded a timeline

    def prediction_rows(self) -> list[dict[str, Any]]:
        """The prediction rows with the `network` column (the preset used, or "fitted")."""
        if self.analysis is None:
            return []
        network = self.analysis.predict_network or FITTED
        return [{**row, "network": network} for row in self.analysis.rows]


def _point(run: Run, gradient_bytes: int, warmup_epochs: int, kind: str = "train") -> MeasuredPoint | None:
    timing = run_timing(run, warmup_epochs)
    if timing is None:
        return None
    return MeasuredPoint(
        ranks=run.ranks, batch_size_per_rank=run.batch_size_per_rank if kind == "train" else 0,
        seconds_per_epoch=timing.seconds_per_epoch, gradient_bytes=gradient_bytes,
        steps_per_epoch=max(1, round(timing.steps_per_epoch)), mode=run.mode if kind == "train" else None,
        kind=kind, label=run.run_id)


def key_scaling(runs: Sequence[Run], benchmarks: Sequence[Run], config: ReportConfig) -> KeyScaling:
    """Fit and predict one key's runs (all of one comparability key) plus the matching benchmarks."""
    sizes = sorted({r.gradient_bytes for r in runs if r.gradient_bytes is not None})
    if not sizes:
        return KeyScaling(None, None, "no scaling model: no run of this key recorded `gradient_bytes` in "
                                      "run_start (logs written before the trainer recorded it)")
    if len(sizes) > 1:
        return KeyScaling(None, None, f"no scaling model: the runs of this key disagree on gradient_bytes "
                                      f"({', '.join(map(str, sizes))})")
    size = sizes[0]
    left_out = tuple(r.run_id for r in runs if r.timeline_recorded)
    points = [p for r in runs if not r.timeline_recorded
              for p in [_point(r, size, config.warmup_epochs)] if p is not None]
    engine = runs[0].key.engine if runs else None
    matching = [b for b in benchmarks if b.key.engine == engine and b.gradient_bytes == size]
    bench_points = [p for b in matching for p in [_point(b, size, config.warmup_epochs, "allreduce")]
                    if p is not None]
    points += bench_points
    # A preset fills the communication terms only when no multi-rank measurement can.
    fill = config.network if not any(p.ranks > 1 for p in points) else None
    try:
        fit = scaling_model.fit_model(points, fill)
        analysis = scaling_model.analyse(points, network=fill, pricing=config.pricing,
                                         predict_network=config.network)
    except ModelError as err:
        return KeyScaling(None, None, f"no scaling model: {err}", tuple(points),
                          tuple(p.label for p in bench_points), left_out)
    return KeyScaling(analysis, fit, "", tuple(points), tuple(p.label for p in bench_points), left_out)


def step_breakdown_table(runs: Sequence[Run], scaling: KeyScaling | None = None) -> list[dict[str, Any]]:
    """One row per (ranks, nodes, GPUs per node, batch per rank) of the runs with a readable timeline.
    Shares are weighted by each run's recorded time (steps x seconds per step), so they still add up
    to 1; `model_communication_share` is the fitted model's allreduce time / step time (blank without
    a model)."""
    groups: dict[tuple[int, int, int, int], list[Run]] = {}
    for run in runs:
        if run.timeline is not None:
            key = (run.ranks, run.nodes, run.gpus_per_node, run.batch_size_per_rank)
            groups.setdefault(key, []).append(run)
    fit = scaling.fit if scaling is not None else None
    rows = []
    for (ranks, nodes, gpus, batch), members in sorted(groups.items()):
        weights = [r.timeline.steps * r.timeline.seconds_per_step for r in members]
        total, steps = sum(weights), sum(r.timeline.steps for r in members)

        def share(name: str, weights=weights, members=members, total=total) -> float:
            return sum(w * getattr(r.timeline, name) for w, r in zip(weights, members)) / total

        model = None
        if fit is not None and batch >= 1:
            model = fit.allreduce_seconds(ranks) / fit.step_seconds(ranks, batch)
        row = {"ranks": ranks, "nodes": nodes, "gpus_per_node": gpus, "batch_size_per_rank": batch,
               "runs": len(members), "steps": steps, "seconds_per_step": total / steps,
               "compute_share": share("compute_share"), "negotiate_share": share("negotiate_share"),
               "allreduce_share": share("allreduce_share"), "model_communication_share": model}
        rows.append({c: row[c] for c in STEP_BREAKDOWN.columns})
    return rows
