"""Tables: per-run and per-row medians, speedup, efficiency, Karp-Flatt, and every table as plain rows.

Pure functions of parsed runs (no I/O). Each table's columns are named once, in registry.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from stockpredict.common import rundir, timing
from stockpredict.common.errors import UserError
from stockpredict.common.metrics import skill_of_optimum
from stockpredict.report.keys import ComparabilityKey, DatasetKey, section_labels, select_dataset
from stockpredict.report.parse import GroupKey, LoadedRuns, Run, SkippedLog
from stockpredict.report.registry import KEY_COLUMNS, SCALING, SCALING_COST_COLUMNS, TABLES_BY_NAME
from stockpredict.report.report_config import ReportConfig

# --- statistics ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunTiming:
    """One run's medians over its timed epochs (seconds, samples/s)."""

    run_id: str
    epochs: int
    seconds_per_epoch: float
    seconds_per_step: float
    samples_per_second: float
    steps_per_epoch: float


def run_timing(run: Run, warmup_epochs: int) -> RunTiming | None:
    """Medians over the run's timed epochs; None if warm-up exclusion leaves no epoch."""
    timed = run.timed_epochs(warmup_epochs)
    if not timed:
        return None
    return RunTiming(
        run_id=run.run_id,
        epochs=len(timed),
        seconds_per_epoch=statistics.median(e.train_seconds for e in timed),
        seconds_per_step=statistics.median(e.train_seconds / e.steps for e in timed),
        samples_per_second=statistics.median(e.samples_per_second for e in timed),
        steps_per_epoch=statistics.median(e.steps for e in timed),
    )


@dataclass(frozen=True)
class GroupTiming:
    """A table row's timing: medians over runs of per-run medians; `runs`/`epochs` it rests on."""

    key: GroupKey
    global_batch_size: int
    runs: int
    epochs: int
    seconds_per_epoch: float
    seconds_per_step: float
    samples_per_second: float
    steps_per_epoch: float


def group_timings(runs: Iterable[Run], warmup_epochs: int) -> list[GroupTiming]:
    """One GroupTiming per (mode, ranks, nodes, gpus_per_node, batch_size_per_rank), sorted."""
    per_group: dict[GroupKey, list[tuple[Run, RunTiming]]] = {}
    for run in runs:
        timing = run_timing(run, warmup_epochs)
        if timing is not None:
            per_group.setdefault(run.group_key, []).append((run, timing))
    rows = []
    for key in sorted(per_group, key=GroupKey.sort_key):
        members = per_group[key]
        timings = [t for _, t in members]
        rows.append(GroupTiming(
            key=key,
            global_batch_size=members[0][0].global_batch_size,
            runs=len(timings),
            epochs=sum(t.epochs for t in timings),
            seconds_per_epoch=statistics.median(t.seconds_per_epoch for t in timings),
            seconds_per_step=statistics.median(t.seconds_per_step for t in timings),
            samples_per_second=statistics.median(t.samples_per_second for t in timings),
            steps_per_epoch=statistics.median(t.steps_per_epoch for t in timings),
        ))
    return rows


def speedup(base_seconds: float, seconds: float) -> float:
    """Strong-scaling speedup S = T(p0) / T(p) from seconds per epoch."""
    return base_seconds / seconds


def parallel_efficiency(speedup_value: float, relative_ranks: float) -> float:
    """E = S / (p / p0): 1.0 is perfect scaling."""
    return speedup_value / relative_ranks


def karp_flatt(speedup_value: float, relative_ranks: float) -> float | None:
    """Experimentally determined serial fraction e = (1/S - 1/p) / (1 - 1/p), p relative to the base.

    None when p equals the base (the formula divides by zero there).
    """
    if relative_ranks == 1:
        return None
    return (1 / speedup_value - 1 / relative_ranks) / (1 - 1 / relative_ranks)


# --- tables (plain rows: lists of dicts with fixed columns) --------------------------------------

def _series_rows(groups: Sequence[GroupTiming], series_of) -> dict[Any, list[GroupTiming]]:
    series: dict[Any, list[GroupTiming]] = {}
    for g in groups:
        series.setdefault(series_of(g), []).append(g)
    for members in series.values():
        members.sort(key=lambda g: (g.key.ranks, g.key.nodes))
    return dict(sorted(series.items()))


def strong_scaling_table(groups: Sequence[GroupTiming]) -> list[dict[str, Any]]:
    """Strong scaling: runs of mode "strong" with the same global batch (and GPUs per node) form a
    series; speedup is against the series' smallest rank count p0 (seconds per epoch)."""
    rows = []
    strong = [g for g in groups if g.key.mode == "strong"]
    for _, members in _series_rows(strong, lambda g: (g.global_batch_size, g.key.gpus_per_node)).items():
        base = members[0]
        for g in members:
            relative = g.key.ranks / base.key.ranks
            s = speedup(base.seconds_per_epoch, g.seconds_per_epoch)
            rows.append({
                "global_batch_size": g.global_batch_size, "ranks": g.key.ranks, "nodes": g.key.nodes,
                "gpus_per_node": g.key.gpus_per_node, "batch_size_per_rank": g.key.batch_size_per_rank,
                "seconds_per_epoch": g.seconds_per_epoch, "samples_per_second": g.samples_per_second,
                "speedup": s, "efficiency": parallel_efficiency(s, relative),
                "karp_flatt": karp_flatt(s, relative), "runs": g.runs, "epochs": g.epochs,
            })
    return rows


def weak_scaling_table(groups: Sequence[GroupTiming]) -> list[dict[str, Any]]:
    """Weak scaling: runs of mode "weak" with the same per-rank batch form a series; efficiency =
    X_p / ((p/p0) * X_p0) with X the global samples/s and p0 the series' smallest rank count."""
    rows = []
    weak = [g for g in groups if g.key.mode == "weak"]
    for _, members in _series_rows(weak, lambda g: (g.key.batch_size_per_rank, g.key.gpus_per_node)).items():
        base = members[0]
        for g in members:
            relative = g.key.ranks / base.key.ranks
            ratio = g.samples_per_second / base.samples_per_second
            rows.append({
                "batch_size_per_rank": g.key.batch_size_per_rank, "ranks": g.key.ranks,
                "nodes": g.key.nodes, "gpus_per_node": g.key.gpus_per_node,
                "global_batch_size": g.global_batch_size, "seconds_per_epoch": g.seconds_per_epoch,
                "samples_per_second": g.samples_per_second, "throughput_ratio": ratio,
                "efficiency": ratio / relative, "runs": g.runs, "epochs": g.epochs,
            })
    return rows


def batch_size_table(groups: Sequence[GroupTiming]) -> list[dict[str, Any]]:
    """Seconds per epoch and per step by effective (global) batch size, every mode including null."""
    ordered = sorted(groups, key=lambda g: (g.key.ranks, g.key.nodes, g.global_batch_size, g.key.mode or ""))
    return [{
        "mode": g.key.mode or "", "ranks": g.key.ranks, "nodes": g.key.nodes,
        "gpus_per_node": g.key.gpus_per_node, "batch_size_per_rank": g.key.batch_size_per_rank,
        "global_batch_size": g.global_batch_size, "steps_per_epoch": g.steps_per_epoch,
        "seconds_per_epoch": g.seconds_per_epoch, "seconds_per_step": g.seconds_per_step,
        "samples_per_second": g.samples_per_second, "runs": g.runs, "epochs": g.epochs,
    } for g in ordered]


def engine_table(groups: Sequence[GroupTiming]) -> list[dict[str, Any]]:
    """Samples/s by rank count for the key's engine: series of equal (mode, per-rank batch, GPUs per
    node); efficiency = X_p / ((p/p0) X_p0) against the series' smallest rank count p0."""
    rows = []
    series = _series_rows(groups,
                          lambda g: (g.key.mode or "", g.key.batch_size_per_rank, g.key.gpus_per_node))
    for (mode, _, _), members in series.items():
        base = members[0]
        for g in members:
            rows.append({
                "mode": mode, "batch_size_per_rank": g.key.batch_size_per_rank, "ranks": g.key.ranks,
                "nodes": g.key.nodes, "gpus_per_node": g.key.gpus_per_node,
                "samples_per_second": g.samples_per_second,
                "efficiency": g.samples_per_second / base.samples_per_second / (g.key.ranks / base.key.ranks),
                "runs": g.runs, "epochs": g.epochs,
            })
    return rows


def _median_or_none(values: Iterable[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v)]
    return statistics.median(numbers) if numbers else None


def accuracy_table(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """Test metrics by configuration: the group key plus learning rate and epochs (both change the
    result), median over runs. Runs without test metrics are left out."""
    per_config: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.test is None:
            continue
        config = (run.group_key.sort_key(), run.learning_rate or 0.0, run.epochs_planned or len(run.epochs))
        per_config.setdefault(config, []).append(run)
    rows = []
    for config in sorted(per_config):
        members = per_config[config]
        first = members[0]
        row = {
            "mode": first.mode or "", "ranks": first.ranks, "nodes": first.nodes,
            "gpus_per_node": first.gpus_per_node, "batch_size_per_rank": first.batch_size_per_rank,
            "global_batch_size": first.global_batch_size, "learning_rate": first.learning_rate,
            "epochs": config[2],
        }
        for metric in timing.TEST_METRIC_FIELDS:
            column = "test_mse" if metric == "mse" else metric
            row[column] = _median_or_none(r.test.get(metric) for r in members)
        row["runs"] = len(members)
        row.update(optimum_columns(members))
        rows.append(row)
    return rows


def optimum_columns(runs: Sequence[Run]) -> dict[str, float | None]:
    """The optimum columns of an accuracy row (registry.ACCURACY_OPTIMUM_COLUMNS), medians over the runs
    that recorded an optimum; all None when none did (real data, or logs from before the field).
    skill_of_optimum is each run's skill / Kalman optimum (metrics.skill_of_optimum), so it is None
    when the optimum is 0 (a random walk: there is nothing to learn, and no ratio)."""
    known = [r for r in runs if r.optimum is not None]
    return {
        "kalman_skill": _median_or_none(r.optimum.get("kalman_skill") for r in known),
        "skill_of_optimum": _median_or_none(skill_of_optimum(r.test.get("skill"), dict(r.optimum))
                                            for r in known if r.test is not None),
        "window_skill": _median_or_none(r.optimum.get("window_skill") for r in known),
    }


def toolkit_label(toolkits: Sequence[Mapping[str, Any]]) -> str:
    """`0.1.0 3f2a9c1e0b12` (version, the commit's first 12 digits), `+dirty` when tracked files differed
    from it, `?` for what the run did not know; attempts with different code joined by `, `; "" for a
    log from before run_start recorded the toolkit."""
    labels = []
    for toolkit in toolkits:
        commit = toolkit.get("commit")
        label = f"{toolkit.get('version') or '?'} {str(commit)[:12] if commit else '?'}"
        if toolkit.get("dirty"):
            label += "+dirty"
        if label not in labels:
            labels.append(label)
    return ", ".join(labels)


def environment_table(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """One row per distinct software versions + hardware, with every host those runs used."""
    per_env: dict[tuple, list[Run]] = {}
    for run in runs:
        v = run.versions
        hardware = json.dumps(run.hardware, sort_keys=True) if run.hardware else ""
        key = (toolkit_label(run.toolkit), str(v.get("python", "")), str(v.get("tensorflow", "")),
               str(v.get("horovod", "")), str(v.get("mpi", "") or ""), hardware)
        per_env.setdefault(key, []).append(run)
    rows = []
    for key in sorted(per_env):
        members = per_env[key]
        starts = sorted(r.started for r in members if r.started)
        toolkit, python, tensorflow, horovod, mpi, hardware = key
        rows.append({
            "hosts": " ".join(sorted({h for r in members for h in r.hosts})), "toolkit": toolkit,
            "python": python, "tensorflow": tensorflow, "horovod": horovod, "mpi": mpi, "hardware": hardware,
            "runs": len(members), "first_start": starts[0] if starts else "",
            "last_start": starts[-1] if starts else "",
        })
    return rows


@dataclass(frozen=True)
class Section:
    """The tables of one comparability key (docs/report.md): nothing here mixes keys."""

    key: ComparabilityKey
    label: str                          # tells this key apart from the report's others (plot legends)
    runs: tuple[Run, ...]
    strong: list[dict[str, Any]]
    weak: list[dict[str, Any]]
    batch_size: list[dict[str, Any]]
    accuracy: list[dict[str, Any]]
    environment: list[dict[str, Any]]
    untimed_runs: tuple[str, ...]       # runs with no epoch left after warm-up exclusion
    scaling: Any = None                 # scaling.KeyScaling: the fitted model, or a note why there is none
    step_breakdown: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # from timelines
    engines: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # samples/s by ranks
    cost: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # report/cost.py, + a total row


def build_section(key: ComparabilityKey, runs: Sequence[Run], warmup_epochs: int, label: str = "",
                  benchmarks: Sequence[Run] = (), config: ReportConfig | None = None,
                  jobs: Mapping[str, Any] | None = None) -> Section:
    """Every table of one key's runs (the caller guarantees they share the key), the scaling model
    fitted to them (plus the allreduce `benchmarks` of the same engine and gradient size) and the
    step-time breakdown of their timelines."""
    from stockpredict.report.cost import cost_rows
    from stockpredict.report.scaling import (  # scaling.py builds on this module
        key_scaling,
        step_breakdown_table,
    )

    groups = group_timings(runs, warmup_epochs)
    config = config or ReportConfig(warmup_epochs=warmup_epochs)
    scaling = key_scaling(runs, benchmarks, config)
    fit = scaling.fit
    predicted = ({p.label: fit.point_seconds_per_epoch(p) for p in scaling.points if p.kind == "train"}
                 if fit is not None else {})
    return Section(
        key=key, label=label or key.dataset.name, runs=tuple(runs),
        strong=strong_scaling_table(groups), weak=weak_scaling_table(groups),
        batch_size=batch_size_table(groups), accuracy=accuracy_table(runs),
        environment=environment_table(runs),
        untimed_runs=tuple(r.run_id for r in runs if run_timing(r, warmup_epochs) is None),
        scaling=scaling, step_breakdown=step_breakdown_table(runs, scaling),
        engines=engine_table(groups), cost=cost_rows(runs, jobs or {}, config.pricing, predicted),
    )


@dataclass(frozen=True)
class Report:
    """Everything scaling.md, the CSVs and the plots show, as plain data.

    `sections` hold the tables, one section per comparability key. The table attributes (`strong`,
    `weak`, ...) are every section's rows one after another, each with the key columns appended: what
    the CSV files hold.
    """

    config: ReportConfig
    runs: tuple[Run, ...]               # the runs shown (after --dataset)
    skipped: tuple[SkippedLog, ...]
    notes: tuple[str, ...]
    sections: tuple[Section, ...] = ()
    keys: tuple[tuple[ComparabilityKey, int], ...] = ()  # every key in the logs and its run count
    selected: DatasetKey | None = None  # the dataset --dataset chose, or None
    benchmarks: tuple[Run, ...] = ()    # allreduce microbenchmarks (run_start kind "allreduce")
    accounting: str = ""                # where the cost table's elapsed times came from (one line)

    def _rows(self, table: str) -> list[dict[str, Any]]:
        """Every section's rows in CSV column order: the table's columns, the key's, the added ones."""
        spec = TABLES_BY_NAME.get(table)
        added = spec.added_columns if spec is not None else ()
        return [{**{c: v for c, v in row.items() if c not in added}, **s.key.columns(),
                 **{c: row.get(c) for c in added}}
                for s in self.sections for row in getattr(s, table)]

    @property
    def scaling_prediction(self) -> list[dict[str, Any]]:
        """Every key's prediction rows (results/scaling_prediction.csv), each with its key columns."""
        return [{**row, **s.key.columns()} for s in self.sections if s.scaling is not None
                for row in s.scaling.prediction_rows()]

    @property
    def scaling_columns(self) -> tuple[str, ...]:
        """The CSV header of scaling_prediction.csv: cost columns (with a price) before `network`."""
        own = SCALING.columns[:-1] + (SCALING_COST_COLUMNS if self.config.pricing is not None else ())
        return own + SCALING.columns[-1:] + KEY_COLUMNS

    @property
    def step_breakdown(self) -> list[dict[str, Any]]:
        return self._rows("step_breakdown")

    @property
    def strong(self) -> list[dict[str, Any]]:
        return self._rows("strong")

    @property
    def weak(self) -> list[dict[str, Any]]:
        return self._rows("weak")

    @property
    def batch_size(self) -> list[dict[str, Any]]:
        return self._rows("batch_size")

    @property
    def accuracy(self) -> list[dict[str, Any]]:
        return self._rows("accuracy")

    @property
    def environment(self) -> list[dict[str, Any]]:
        return self._rows("environment")

    @property
    def engines(self) -> list[dict[str, Any]]:
        return self._rows("engines")

    @property
    def cost(self) -> list[dict[str, Any]]:
        return self._rows("cost")

    @property
    def untimed_runs(self) -> tuple[str, ...]:
        return tuple(run_id for s in self.sections for run_id in s.untimed_runs)


def build_report(loaded: LoadedRuns, config: ReportConfig, sacct_text: str | None = None) -> Report:
    """All tables from the parsed runs, one section per comparability key. `sacct_text`: sacct's
    --parsable2 output for the runs' jobs (cost.run_sacct), or None. Raises UserError when no
    log is usable, or when `config.dataset` names no dataset or more than one."""
    from stockpredict.report.cost import parse_sacct

    if not loaded.runs:
        if loaded.skipped:
            raise UserError(f"no usable timing logs in {config.runs_dir}: all {len(loaded.skipped)} "
                            f"were skipped (warnings above say why)")
        raise UserError(f"no timing logs in {config.runs_dir} (expected {config.runs_dir}/<run-id>/"
                        f"{rundir.TIMING_LOG}; submit runs first: make sweep, or make demo)")
    # Allreduce benchmarks have no dataset: they join every key of the same engine and gradient size.
    benchmarks = tuple(r for r in loaded.runs if r.kind == "allreduce")
    if len(benchmarks) == len(loaded.runs):
        raise UserError(f"only allreduce benchmarks in {config.runs_dir}: no training run to report on")
    per_key: dict[ComparabilityKey, list[Run]] = {}
    for run in loaded.runs:
        if run.kind != "allreduce":
            per_key.setdefault(run.key, []).append(run)
    ordered = sorted(per_key, key=ComparabilityKey.sort_key)
    selected = select_dataset(ordered, config.dataset) if config.dataset else None
    shown = [k for k in ordered if selected is None or k.dataset == selected]
    labels = section_labels(shown)
    jobs = parse_sacct(sacct_text) if sacct_text else {}
    sections = tuple(build_section(k, per_key[k], config.warmup_epochs, labels[k], benchmarks, config, jobs)
                     for k in shown)
    from_sacct = sum(1 for s in sections for row in s.cost
                     if row["source"] == "sacct" and row["run_id"] != "total")  # runs, not the totals
    accounting = (f"sacct: {from_sacct} of {len(loaded.runs) - len(benchmarks)} run(s) found in Slurm's "
                  f"accounting" if sacct_text is not None else "sacct: not available (not installed, "
                  "accounting off, or it failed); elapsed times from the runs' own records")
    return Report(
        config=config, runs=tuple(r for s in sections for r in s.runs), skipped=loaded.skipped,
        notes=loaded.notes, sections=sections, keys=tuple((k, len(per_key[k])) for k in ordered),
        selected=selected, benchmarks=benchmarks, accounting=accounting,
    )
