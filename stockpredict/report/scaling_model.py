"""A communication model of data-parallel training, fitted from a few timed runs. TensorFlow-free, pure.

Per-step time of p ranks, each with batch b (seconds):

    t(p, b) = overhead + per_sample * b  +  2 (p - 1) * latency  +  2 (p - 1) / p * S / bandwidth
              \\____ compute(b) _____/     \\_________ ring allreduce of S gradient bytes _________/

`overhead + per_sample * b` is fitted from the 1-rank runs at different batch sizes; `latency` (per ring
step: every allreduce makes 2 (p - 1) of them) and `bandwidth` from the multi-rank runs (and allreduce
microbenchmarks), or taken from a network preset (NETWORKS) where the runs cannot tell them apart. An
epoch is steps_per_epoch steps: floor(windows / global batch), as the trainer computes it.

    fit = fit_model(points, network="10gbe")              -> ScalingFit (parameters, how each was found)
    rows = predict(fit, points, pricing=Pricing(2.5))     -> list of dicts, PREDICTION_COLUMNS
    check = held_out_check(points, network="10gbe")       -> HeldOut (refit without the largest rank count)
    analysis = analyse(points, network=..., pricing=...)  -> all three plus the speedup peaks

Fitting minimises relative errors (each run counts by its error in percent, so a 1-rank run of 6 ms
steps and a 32-rank run of 60 ms steps weigh the same), with every parameter >= 0. docs/scaling.md
explains the model, the presets and their sources, and the seed's own table.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

from stockpredict.common import timing

MODES = timing.MODES
KINDS = ("train", "allreduce")
MAX_RANKS = 256
# Columns of results/scaling_prediction.csv; cost columns are appended when a price is given.
PREDICTION_COLUMNS = (
    "mode", "ranks", "global_batch_size", "batch_size_per_rank", "steps_per_epoch",
    "predicted_seconds_per_step", "predicted_seconds_per_epoch", "predicted_speedup",
    "predicted_efficiency", "predicted_communication_share", "measured_seconds_per_epoch",
)
COST_COLUMNS = ("cost_per_epoch", "hours_to_target", "cost_to_target")


class ModelError(ValueError):
    """The points cannot determine the model (the message says what is missing)."""


@dataclass(frozen=True)
class MeasuredPoint:
    """One timed run (or allreduce microbenchmark) as the model reads it.

    A training run gives its epoch time; steps per epoch come from `steps_per_epoch` when the log has
    them, else floor(windows / (ranks * batch_size_per_rank)). An allreduce microbenchmark (kind
    "allreduce") is `steps_per_epoch` allreduces of `gradient_bytes` taking `seconds_per_epoch` in all,
    with no compute: it measures the communication terms alone.
    """

    ranks: int
    batch_size_per_rank: int
    seconds_per_epoch: float              # wall time of one timed (not warm-up) epoch, seconds
    gradient_bytes: int                   # bytes allreduced per step (fp32 parameters x 4)
    windows: int | None = None            # training windows per epoch, all ranks together
    steps_per_epoch: int | None = None    # steps each rank took; None: from windows
    mode: str | None = None               # "strong" (global batch fixed), "weak" (per-rank fixed), None
    kind: str = "train"                   # "train" or "allreduce"
    label: str = ""                       # where it came from (run id), for tables

    def __post_init__(self) -> None:
        if self.ranks < 1 or self.batch_size_per_rank < 0 or self.seconds_per_epoch <= 0:
            raise ModelError(f"point {self.label or self}: ranks >= 1, batch >= 0 and time > 0 required")
        if self.gradient_bytes < 0:
            raise ModelError(f"point {self.label or self}: gradient_bytes must be >= 0")
        if self.mode not in (None, *MODES) or self.kind not in KINDS:
            raise ModelError(f"point {self.label or self}: mode must be one of {MODES} or None, "
                             f"kind one of {KINDS}")
        if self.steps_per_epoch is None and not self.windows:
            raise ModelError(f"point {self.label or self}: give steps_per_epoch or windows")
        if self.kind == "train" and self.batch_size_per_rank < 1:
            raise ModelError(f"point {self.label or self}: a training run needs batch_size_per_rank >= 1")

    @property
    def global_batch_size(self) -> int:
        return self.ranks * self.batch_size_per_rank

    @property
    def steps(self) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        return int(self.windows // self.global_batch_size)

    @property
    def seconds_per_step(self) -> float:
        if self.steps < 1:
            raise ModelError(f"point {self.label or self}: fewer windows than one global batch")
        return self.seconds_per_epoch / self.steps


@dataclass(frozen=True)
class NetworkPreset:
    """Latency of one ring step (one message between neighbours) and per-direction link bandwidth.
    Wire-level figures: a framework adds its own per-allreduce costs on top (see docs/scaling.md)."""

    name: str
    description: str
    latency_s: float
    bandwidth_bytes_per_s: float
    source: str


# Sources and reasoning for every number: docs/scaling.md, "Network presets".
NETWORKS = {p.name: p for p in (
    NetworkPreset("shm", "shared memory, ranks on one host", 1e-6, 10e9,
                  "intra-node MPI/Gloo: ~1 us per message, ~10 GB/s memcpy-bound copies"),
    NetworkPreset("10gbe", "10 Gigabit Ethernet, TCP", 25e-6, 1.25e9,
                  "IEEE 802.3ae line rate 10 Gb/s; kernel TCP small-message latency tens of us"),
    NetworkPreset("25gbe", "25 Gigabit Ethernet, TCP", 20e-6, 3.125e9,
                  "IEEE 802.3by line rate 25 Gb/s; kernel TCP latency"),
    NetworkPreset("100gbe", "100 Gigabit Ethernet, TCP", 15e-6, 12.5e9,
                  "IEEE 802.3ba line rate 100 Gb/s; kernel TCP latency"),
    NetworkPreset("ib-hdr", "InfiniBand HDR (200 Gb/s), RDMA", 1.5e-6, 25e9,
                  "IBTA HDR 200 Gb/s (NVIDIA ConnectX-6); MPI ping-pong latency ~1-2 us"),
    NetworkPreset("ib-ndr", "InfiniBand NDR (400 Gb/s), RDMA", 1.5e-6, 50e9,
                  "IBTA NDR 400 Gb/s (NVIDIA ConnectX-7); MPI ping-pong latency ~1-2 us"),
    NetworkPreset("nvlink", "NVLink 4 inside one node (H100)", 3e-6, 450e9,
                  "NVIDIA H100: 900 GB/s bidirectional = 450 GB/s per direction; NCCL step latency us"),
)}


def network_preset(name: str) -> NetworkPreset:
    """The preset called `name`; an unknown name fails listing the valid ones."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise ModelError(f"unknown network {name!r}; valid: {', '.join(NETWORKS)}") from None


@dataclass(frozen=True)
class ScalingFit:
    """The fitted per-step model (all times in seconds, bandwidth in bytes/s) and how it was found."""

    overhead_s: float                     # per step, whatever the batch and rank count
    per_sample_s: float                   # compute per sample of the per-rank batch
    latency_s: float                      # per ring step; an allreduce on p ranks makes 2 (p - 1)
    bandwidth_bytes_per_s: float          # math.inf: bandwidth term not counted
    gradient_bytes: int                   # S of the fitted runs (the largest, if they differ)
    compute_source: str                   # how overhead/per_sample were found
    communication_source: str             # how latency/bandwidth were found
    notes: tuple[str, ...] = ()

    def compute_seconds(self, batch: float) -> float:
        return self.overhead_s + self.per_sample_s * batch

    def allreduce_seconds(self, ranks: int, gradient_bytes: int | None = None) -> float:
        """Ring allreduce of S bytes on `ranks` ranks: 2(p-1) latencies + 2(p-1)/p * S / bandwidth."""
        size = self.gradient_bytes if gradient_bytes is None else gradient_bytes
        return (2 * (ranks - 1) * self.latency_s
                + 2 * (ranks - 1) / ranks * size / self.bandwidth_bytes_per_s)

    def step_seconds(self, ranks: int, batch: float, gradient_bytes: int | None = None) -> float:
        return self.compute_seconds(batch) + self.allreduce_seconds(ranks, gradient_bytes)

    def point_seconds_per_epoch(self, point: MeasuredPoint) -> float:
        """The model's epoch time for a measured point (same steps as measured)."""
        if point.kind == "allreduce":
            return point.steps * self.allreduce_seconds(point.ranks, point.gradient_bytes)
        return point.steps * self.step_seconds(point.ranks, point.batch_size_per_rank, point.gradient_bytes)

    def on_network(self, network: str | NetworkPreset) -> "ScalingFit":
        """The same compute on another network: latency and bandwidth from the preset."""
        preset = network if isinstance(network, NetworkPreset) else network_preset(network)
        return replace(self, latency_s=preset.latency_s, bandwidth_bytes_per_s=preset.bandwidth_bytes_per_s,
                       communication_source=f"preset {preset.name} ({preset.description})")


def nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0, for the few (<= 3) columns used here: the unconstrained solution on
    every subset of columns, keeping the feasible one with the smallest residual (exact, not iterative)."""
    n = a.shape[1]
    best, best_residual = np.zeros(n), float(np.sum(y * y))
    for k in range(1, n + 1):
        for cols in itertools.combinations(range(n), k):
            sub = a[:, cols]
            if np.linalg.matrix_rank(sub) < k:
                continue
            x_sub = np.linalg.lstsq(sub, y, rcond=None)[0]
            if np.any(x_sub < 0):
                continue
            x = np.zeros(n)
            x[list(cols)] = x_sub
            residual = float(np.sum((a @ x - y) ** 2))
            if residual < best_residual - 1e-18 * max(1.0, best_residual):
                best, best_residual = x, residual
    return best


def _fit_compute(points: Sequence[MeasuredPoint]) -> tuple[float, float, str, list[str]]:
    """overhead and per-sample time from 1-rank training runs (relative least squares, both >= 0)."""
    ones = [p for p in points if p.ranks == 1 and p.kind == "train"]
    if not ones:
        raise ModelError("no 1-rank training run: the compute term needs at least one")
    batches = sorted({p.batch_size_per_rank for p in ones})
    t = np.array([p.seconds_per_step for p in ones])
    b = np.array([float(p.batch_size_per_rank) for p in ones])
    if len(batches) == 1:
        # One batch size cannot separate a fixed per-step cost from per-sample work; proportional compute
        # is the optimistic reading (smaller per-rank batches get proportionally faster).
        per_sample = float(np.mean(t / b))
        return 0.0, per_sample, f"1-rank runs at one batch size ({batches[0]}): compute taken as " \
                                f"proportional to batch", ["measure 1-rank runs at 2+ batch sizes to " \
                                                           "separate the per-step overhead"]
    weights = 1.0 / t
    overhead, per_sample = nnls(np.column_stack([np.ones_like(b), b]) * weights[:, None], t * weights)
    source = f"fitted to {len(ones)} 1-rank run(s) at batch sizes {', '.join(map(str, batches))}"
    return float(overhead), float(per_sample), source, []


def fit_model(points: Iterable[MeasuredPoint], network: str | None = None) -> ScalingFit:
    """Fit the model to `points`. `network` (a NETWORKS name) fills what the runs cannot determine:
    both communication terms when no multi-rank run exists, the bandwidth when fewer than three
    distinct multi-rank shapes (rank count, gradient size) were measured: with two or fewer the
    two terms would fit any two points exactly, so the split between them would be noise."""
    points = list(points)
    preset = network_preset(network) if network is not None else None
    overhead, per_sample, compute_source, notes = _fit_compute(points)
    sizes = [p.gradient_bytes for p in points]
    gradient_bytes = max(sizes) if sizes else 0
    multi = [p for p in points if p.ranks > 1]
    base = ScalingFit(overhead, per_sample, 0.0, math.inf, gradient_bytes, compute_source, "", tuple(notes))
    if not multi:
        if preset is None:
            raise ModelError("only 1-rank runs: give a network preset (one of "
                             f"{', '.join(NETWORKS)}) or measure a multi-rank run or allreduce benchmark")
        return base.on_network(preset)

    # What communication took in each multi-rank run: its step time minus the fitted compute.
    t = np.array([p.seconds_per_step for p in multi])
    residual = np.array([p.seconds_per_step - (0.0 if p.kind == "allreduce"
                                               else base.compute_seconds(p.batch_size_per_rank))
                         for p in multi])
    hops = np.array([2.0 * (p.ranks - 1) for p in multi])
    volume = np.array([2.0 * (p.ranks - 1) / p.ranks * p.gradient_bytes for p in multi])
    weights = 1.0 / t
    shapes = {(p.ranks, p.gradient_bytes) for p in multi}
    if len(shapes) >= 3 and volume.any():
        # Columns scaled to similar magnitude before solving (bytes are ~1e4-1e9 times seconds).
        scale = float(np.max(volume)) or 1.0
        latency, inv_bandwidth = nnls(np.column_stack([hops, volume / scale]) * weights[:, None],
                                      residual * weights)
        inv_bandwidth /= scale
        bandwidth = 1.0 / inv_bandwidth if inv_bandwidth > 0 else math.inf
        source = f"latency and bandwidth fitted to {len(multi)} multi-rank run(s) at " \
                 f"{len({p.ranks for p in multi})} rank counts"
        if bandwidth == math.inf:
            notes.append("the bandwidth term fitted to zero: communication looks latency-bound")
    else:
        bandwidth = preset.bandwidth_bytes_per_s if preset is not None else math.inf
        known = residual - volume / bandwidth
        latency = float(nnls((hops * weights)[:, None], known * weights)[0])
        counts = sorted({p.ranks for p in multi})
        if preset is not None:
            source = f"latency fitted to {len(multi)} multi-rank run(s) at {counts} ranks; bandwidth " \
                     f"from preset {preset.name}"
        else:
            source = f"latency fitted to {len(multi)} multi-rank run(s) at {counts} ranks; bandwidth " \
                     f"term not counted (give a network preset to add it)"
        notes.append(f"{len(shapes)} multi-rank shape(s) measured: too few to fit latency and bandwidth "
                     f"apart, so the latency absorbs all communication time")
    return replace(base, latency_s=float(latency), bandwidth_bytes_per_s=float(bandwidth),
                   communication_source=source, notes=tuple(notes))


# --- predictions -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pricing:
    """Price of the hardware, to turn predicted time into money. `unit` "gpu" bills every rank (one GPU
    per rank); "node" bills whole nodes of `ranks_per_node` ranks."""

    price_per_hour: float                 # in the site's currency, per GPU-hour or node-hour
    unit: str = "gpu"                     # "gpu" or "node"
    ranks_per_node: int = 1               # ranks billed together as one node (unit "node")
    target_epochs: int = 1                # epochs of a study, for hours/cost to target

    def __post_init__(self) -> None:
        if self.price_per_hour < 0 or self.unit not in ("gpu", "node") or self.ranks_per_node < 1 \
                or self.target_epochs < 1:
            raise ModelError("pricing: price >= 0, unit gpu or node, ranks_per_node >= 1, target_epochs >= 1")

    def billed_units(self, ranks: int) -> int:
        return ranks if self.unit == "gpu" else math.ceil(ranks / self.ranks_per_node)

    def cost_columns(self, ranks: int, seconds_per_epoch: float) -> dict:
        """cost_per_epoch, hours_to_target and cost_to_target for one row."""
        cost_per_epoch = seconds_per_epoch / 3600.0 * self.billed_units(ranks) * self.price_per_hour
        return {"cost_per_epoch": cost_per_epoch,
                "hours_to_target": self.target_epochs * seconds_per_epoch / 3600.0,
                "cost_to_target": self.target_epochs * cost_per_epoch}


@dataclass(frozen=True)
class Series:
    """A family of runs to extrapolate: strong (global batch fixed) or weak (per-rank batch fixed)."""

    mode: str
    batch: int                            # global batch (strong) or per-rank batch (weak)
    windows: int                          # training windows per epoch
    gradient_bytes: int
    measured: tuple[MeasuredPoint, ...]

    def per_rank_batch(self, ranks: int) -> int | None:
        if self.mode == "weak":
            return self.batch
        return self.batch // ranks if self.batch % ranks == 0 else None

    @property
    def name(self) -> str:
        return f"strong, global batch {self.batch}" if self.mode == "strong" else \
            f"weak, batch {self.batch} per rank"


def _series_key(point: MeasuredPoint, mode: str) -> int:
    return point.global_batch_size if mode == "strong" else point.batch_size_per_rank


def find_series(points: Iterable[MeasuredPoint]) -> list[Series]:
    """One series per measured strong global batch and per measured weak per-rank batch. A 1-rank run
    (whatever its mode) joins a series as its baseline when its batch matches. Multi-rank runs with
    mode None form no series: nothing says what was held fixed (they still count in the fit)."""
    points = [p for p in points if p.kind == "train"]
    keys = sorted({(p.mode, _series_key(p, p.mode)) for p in points if p.mode in MODES})
    series = []
    for mode, batch in keys:
        members = tuple(p for p in points if (p.ranks == 1 and p.batch_size_per_rank == batch)
                        or (p.mode == mode and _series_key(p, mode) == batch))
        windows = max(p.windows or p.steps * p.global_batch_size for p in members)
        series.append(Series(mode, batch, int(windows), max(p.gradient_bytes for p in members), members))
    return series


def rank_grid(points: Iterable[MeasuredPoint], max_ranks: int = MAX_RANKS) -> list[int]:
    """Powers of two up to `max_ranks`, plus every measured rank count."""
    powers = {2 ** k for k in range(int(math.log2(max_ranks)) + 1)}
    return sorted(powers | {p.ranks for p in points})


def predict_series(fit: ScalingFit, series: Series, grid: Sequence[int],
                   pricing: Pricing | None = None) -> list[dict]:
    """Rows of PREDICTION_COLUMNS (and COST_COLUMNS with `pricing`), plus "series" (its name), for every
    rank count in `grid` that the series can run (strong: the global batch must divide over the ranks)."""
    measured: dict[int, list[float]] = {}
    for p in series.measured:
        measured.setdefault(p.ranks, []).append(p.seconds_per_epoch)
    baseline_batch = series.per_rank_batch(1)
    baseline = (series.windows // baseline_batch) * fit.step_seconds(1, baseline_batch, series.gradient_bytes)
    rows = []
    for ranks in sorted(set(grid)):
        b = series.per_rank_batch(ranks)
        if b is None or b < 1 or series.windows // (b * ranks) < 1:
            continue
        steps = series.windows // (b * ranks)
        step = fit.step_seconds(ranks, b, series.gradient_bytes)
        epoch = steps * step
        speedup = baseline / epoch
        row = {"series": series.name, "mode": series.mode, "ranks": ranks, "global_batch_size": b * ranks,
               "batch_size_per_rank": b, "steps_per_epoch": steps,
               "predicted_seconds_per_step": step, "predicted_seconds_per_epoch": epoch,
               "predicted_speedup": speedup, "predicted_efficiency": speedup / ranks,
               "predicted_communication_share": fit.allreduce_seconds(ranks, series.gradient_bytes) / step,
               "measured_seconds_per_epoch": (float(np.median(measured[ranks])) if ranks in measured
                                              else None)}
        if pricing is not None:
            row.update(pricing.cost_columns(ranks, epoch))
        rows.append(row)
    return rows


def speedup_peak(rows: Sequence[dict]) -> dict | None:
    """The row with the highest predicted speedup (ties: fewest ranks), or None without rows."""
    return max(rows, key=lambda r: (r["predicted_speedup"], -r["ranks"])) if rows else None


@dataclass(frozen=True)
class HeldOutPoint:
    point: MeasuredPoint
    predicted_seconds_per_epoch: float

    @property
    def error(self) -> float:
        """(predicted - measured) / measured: +0.05 means 5 % too slow."""
        return self.predicted_seconds_per_epoch / self.point.seconds_per_epoch - 1.0


@dataclass(frozen=True)
class HeldOut:
    """The model refitted without the training runs at the largest measured rank count, and its
    predictions for them. `reason` says why no check was possible (then `points` is empty)."""

    ranks: int | None
    fit: ScalingFit | None
    points: tuple[HeldOutPoint, ...] = ()
    reason: str = ""

    @property
    def max_abs_error(self) -> float | None:
        return max(abs(p.error) for p in self.points) if self.points else None


def held_out_check(points: Iterable[MeasuredPoint], network: str | None = None) -> HeldOut:
    """Refit without the training runs at the largest rank count (allreduce benchmarks stay: they are
    measurements of the network, not of the runs predicted) and predict those runs."""
    points = list(points)
    train_ranks = sorted({p.ranks for p in points if p.kind == "train"})
    if len(train_ranks) < 2:
        return HeldOut(None, None, reason="training runs at only one rank count: nothing to hold out")
    largest = train_ranks[-1]
    kept = [p for p in points if not (p.kind == "train" and p.ranks == largest)]
    try:
        fit = fit_model(kept, network)
    except ModelError as err:
        return HeldOut(largest, None,
                       reason=f"without the {largest}-rank runs the model cannot be fitted: {err}")
    held = tuple(HeldOutPoint(p, fit.point_seconds_per_epoch(p))
                 for p in points if p.kind == "train" and p.ranks == largest)
    return HeldOut(largest, fit, held)


@dataclass(frozen=True)
class ScalingAnalysis:
    """Everything the report shows about the model."""

    fit: ScalingFit
    series: tuple[Series, ...]
    rows: tuple[dict, ...]                      # PREDICTION_COLUMNS (+ COST_COLUMNS), all series
    peaks: tuple[tuple[str, dict | None], ...]  # (series name, row of the highest predicted speedup)
    held_out: HeldOut
    residuals: tuple[tuple[MeasuredPoint, float], ...]  # each measured point and the fit's epoch time
    network: str | None = None                  # preset that filled what the runs could not determine
    predict_network: str | None = None          # preset the predictions use instead of the fitted network
    pricing: Pricing | None = None
    columns: tuple[str, ...] = field(default=PREDICTION_COLUMNS)


def analyse(points: Iterable[MeasuredPoint], network: str | None = None, pricing: Pricing | None = None,
            max_ranks: int = MAX_RANKS, predict_network: str | None = None) -> ScalingAnalysis:
    """Fit, predict every series on ranks 1..max_ranks, find the peaks and run the held-out check.
    `predict_network` predicts the same compute on another network (e.g. "ib-hdr")."""
    points = list(points)
    fit = fit_model(points, network)
    used = fit.on_network(predict_network) if predict_network is not None else fit
    grid = rank_grid(points, max_ranks)
    series = find_series(points)
    rows: list[dict] = []
    peaks = []
    for s in series:
        series_rows = predict_series(used, s, grid, pricing)
        rows += series_rows
        peaks.append((s.name, speedup_peak(series_rows)))
    columns = PREDICTION_COLUMNS + (COST_COLUMNS if pricing is not None else ())
    return ScalingAnalysis(fit=used, series=tuple(series), rows=tuple(rows), peaks=tuple(peaks),
                           held_out=held_out_check(points, network),
                           residuals=tuple((p, fit.point_seconds_per_epoch(p)) for p in points),
                           network=network, predict_network=predict_network, pricing=pricing, columns=columns)
