"""Every table and plot of the report, named once: columns, CSV file, plot file, section title and text.

The rest of the package looks things up here instead of repeating a name. Plain data only (no
matplotlib, no parsing), so any module can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockpredict.report.scaling_model import COST_COLUMNS, PREDICTION_COLUMNS

# Which comparability key a CSV row belongs to (keys.ComparabilityKey.columns fills them).
KEY_COLUMNS = ("dataset", "fingerprint", "windows", "model", "engine")


@dataclass(frozen=True)
class PlotSpec:
    """One PNG: `name` is the key plots.render_all returns it under; `title` heads it in scaling.md."""

    name: str
    file: str
    title: str

    @property
    def alt_text(self) -> str:
        return self.name.replace("_", " ")


@dataclass(frozen=True)
class TableSpec:
    """One table: a `Report` attribute of the same name, a CSV file and a section of scaling.md."""

    name: str                        # Report attribute holding the rows
    title: str                       # section heading in scaling.md
    text: str                        # what the section shows and how it is computed
    csv_file: str
    columns: tuple[str, ...]         # the CSV's first columns, in order (never renamed or reordered)
    plots: tuple[PlotSpec, ...] = ()  # drawn from this table's rows
    # Columns added after the key columns existed: the CSV appends them after KEY_COLUMNS, so a reader
    # of the older files (by name or by position) keeps working.
    added_columns: tuple[str, ...] = ()
    # Markdown order of all row columns (None: columns, then added_columns), e.g. the optimum next to
    # the skill it qualifies.
    markdown_order: tuple[str, ...] | None = None

    @property
    def csv_columns(self) -> tuple[str, ...]:
        """The CSV header: the table's columns, then the comparability key's (added later, at the end,
        so readers of the older files keep working), then the columns added after those."""
        return self.columns + KEY_COLUMNS + self.added_columns

    @property
    def row_columns(self) -> tuple[str, ...]:
        """The columns of one section's rows (a section has no key columns: its heading names the key)."""
        return self.columns + self.added_columns

    @property
    def markdown_columns(self) -> tuple[str, ...]:
        return self.markdown_order or self.row_columns


ACCURACY_BASE_COLUMNS = (
    "mode", "ranks", "nodes", "gpus_per_node", "batch_size_per_rank", "global_batch_size", "learning_rate",
    "epochs", "test_mse", "rmse_price", "mae_price", "persistence_mse", "persistence_rmse_price", "skill",
    "direction_accuracy", "runs")
# From run_start `optimum` (blank when unknown: real data, or logs from before the field).
ACCURACY_OPTIMUM_COLUMNS = ("kalman_skill", "skill_of_optimum", "window_skill")

TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        name="strong", title="Strong scaling", csv_file="strong_scaling.csv",
        text="Global batch fixed, per-rank batch divided. Speedup S = T(p0)/T(p) in seconds per epoch "
             "against the smallest rank count p0 with the same global batch; efficiency S/(p/p0); "
             "Karp-Flatt serial fraction e = (1/S - 1/p)/(1 - 1/p) with p taken relative to p0 "
             "(blank at p0).",
        columns=("global_batch_size", "ranks", "nodes", "gpus_per_node", "batch_size_per_rank",
                 "seconds_per_epoch", "samples_per_second", "speedup", "efficiency", "karp_flatt",
                 "runs", "epochs"),
        plots=(PlotSpec("speedup", "speedup.png", "Strong-scaling speedup"),
               PlotSpec("efficiency", "efficiency.png", "Parallel efficiency"))),
    TableSpec(
        name="weak", title="Weak scaling", csv_file="weak_scaling.csv",
        text="Per-rank batch fixed. Efficiency = X_p / ((p/p0) X_p0), X = global samples/s, p0 the smallest "
             "rank count with the same per-rank batch.",
        columns=("batch_size_per_rank", "ranks", "nodes", "gpus_per_node", "global_batch_size",
                 "seconds_per_epoch", "samples_per_second", "throughput_ratio", "efficiency",
                 "runs", "epochs")),
    TableSpec(
        name="batch_size", title="Batch size", csv_file="batch_size.csv",
        text="Seconds per epoch and per step by effective (global) batch size, every run (the seed's "
             "Figure 3 table).",
        columns=("mode", "ranks", "nodes", "gpus_per_node", "batch_size_per_rank", "global_batch_size",
                 "steps_per_epoch", "seconds_per_epoch", "seconds_per_step", "samples_per_second",
                 "runs", "epochs"),
        plots=(PlotSpec("seconds_per_epoch", "seconds_per_epoch_vs_batch.png",
                        "Seconds per epoch vs batch size"),)),
    TableSpec(
        name="accuracy", title="Accuracy", csv_file="accuracy.csv",
        text="Test split, median over runs. MSE on the normalised scale (the seed's metric); RMSE and MAE "
             "in price units; persistence = forecasting the window's last close; skill = 1 - "
             "MSE/MSE_persistence (> 0 beats persistence); direction accuracy = share of correctly "
             "predicted signs of the move. Optimum = the best achievable skill on this test split, known "
             "only for synthetic data (from its generating parameters): Kalman = the best forecast of "
             "all, window = the best from the window alone; skill / optimum = skill / Kalman optimum "
             "(1 = nothing left to learn).",
        columns=ACCURACY_BASE_COLUMNS,
        added_columns=ACCURACY_OPTIMUM_COLUMNS,
        markdown_order=ACCURACY_BASE_COLUMNS[:ACCURACY_BASE_COLUMNS.index("skill") + 1]
        + ACCURACY_OPTIMUM_COLUMNS + ACCURACY_BASE_COLUMNS[ACCURACY_BASE_COLUMNS.index("skill") + 1:],
        plots=(PlotSpec("test_loss", "test_loss_vs_batch.png",
                        "Test loss vs effective batch size (one panel per dataset)"),
               PlotSpec("skill", "skill_vs_batch.png",
                        "Skill vs effective batch size (one series per dataset)"),
               PlotSpec("accuracy_scale", "accuracy_vs_scale.png",
                        "Accuracy at scale: skill, and skill / optimum where known, against ranks and "
                        "global batch (one series per dataset and batch or rank count)"))),
    TableSpec(
        name="engines", title="Throughput per engine",
        text="Global samples/s at each rank count for this key's engine (horovod or tf), every run mode; "
             "efficiency = X_p / ((p/p0) X_p0) against the smallest rank count p0 with the same per-rank "
             "batch, mode and GPUs per node. The plot puts the engines of one dataset side by side.",
        csv_file="engines.csv",
        columns=("mode", "batch_size_per_rank", "ranks", "nodes", "gpus_per_node", "samples_per_second",
                 "efficiency", "runs", "epochs"),
        plots=(PlotSpec("engines", "engines.png", "Samples/s and efficiency per engine"),)),
    TableSpec(
        name="environment", title="Environment", csv_file="environment.csv",
        text="Hosts and software versions as each run recorded them; toolkit = this toolkit's version "
             "and git commit (+dirty: tracked files differed from it).",
        columns=("hosts", "toolkit", "python", "tensorflow", "horovod", "mpi", "hardware", "runs",
                 "first_start", "last_start")),
)

# The scaling model and the step-time breakdown (docs/scaling.md): also one per comparability key, but
# not drawn by plots.py and not rendered as plain tables, so kept apart from TABLES.
SCALING_PLOT = PlotSpec("scaling_prediction", "scaling_prediction.png",
                        "Scaling model: measured runs against the prediction")
SCALING = TableSpec(
    name="scaling_prediction", title="Scaling model", csv_file="scaling_prediction.csv",
    text="t(p, b) = overhead + per_sample x b + 2(p-1) x latency + 2(p-1)/p x S / bandwidth, fitted to "
         "this key's runs (docs/scaling.md).",
    # `network`: the preset the predictions use (--network), or "fitted".
    columns=PREDICTION_COLUMNS + ("network",), plots=(SCALING_PLOT,))
SCALING_COST_COLUMNS = COST_COLUMNS  # inserted before `network` when a price is given


def scaling_plot_file(number: int) -> str:
    """The PNG of the `number`-th key (1-based, in section order) that has a scaling model:
    scaling_prediction.png, then scaling_prediction_2.png, ..."""
    stem, suffix = SCALING_PLOT.file.rsplit(".", 1)
    return SCALING_PLOT.file if number == 1 else f"{stem}_{number}.{suffix}"


STEP_BREAKDOWN = TableSpec(
    name="step_breakdown", title="Step-time breakdown", csv_file="step_breakdown.csv",
    text="From the Horovod timeline (timeline.json, rank 0's clock) of each run that recorded one, per "
         "rank count: the share of a step spent computing (no Horovod op pending), negotiating (waiting "
         "until every rank has a gradient ready, which includes waiting for slower ranks) and inside "
         "allreduce; shares weighted by each run's recorded time. `model communication share` is the "
         "fitted model's allreduce time over its step time, to set against negotiate + allreduce.",
    columns=("ranks", "nodes", "gpus_per_node", "batch_size_per_rank", "runs", "steps", "seconds_per_step",
             "compute_share", "negotiate_share", "allreduce_share", "model_communication_share"))
# What the study cost (report/cost.py, docs/report.md): one row per run and a `total` row per key.
COST = TableSpec(
    name="cost", title="What the study cost", csv_file="cost.csv",
    text="Per run: queue wait (sacct only), elapsed time, allocated node-hours and GPU-hours, and where "
         "the elapsed time went: start-up (to the first step: imports, engine start, graph building, "
         "data open; from the trainer process's start, with sacct from the job's start, so the batch "
         "script and srun too), training epochs, validation, test, checkpoints, and the rest (elapsed "
         "minus those; with sacct the batch script's end and whole-second rounding). `source` = "
         "sacct (Slurm's accounting) or records (the run's timing.jsonl: process start to run_end, "
         "queue wait unknown); `split` unknown = a log from before the trainer recorded the parts. "
         "Cost = elapsed x billed GPUs or nodes x the price (--price-per-hour/PRICE). predicted = the "
         "scaling model's epochs for the same run; unexplained share = 1 - predicted / elapsed, the part "
         "of the bill the model does not explain. CPU efficiency = TotalCPU / (elapsed x allocated CPUs) "
         "and memory use = peak task MaxRSS x ranks per node / the request per node, from sacct (seff's "
         "figures).",
    columns=("run_id", "job_id", "source", "nodes", "gpus", "ranks", "epochs", "queue_wait_seconds",
             "elapsed_seconds", "node_hours", "gpu_hours", "startup_seconds", "train_seconds", "val_seconds",
             "test_seconds", "checkpoint_seconds", "rest_seconds", "named_share", "split", "cost",
             "predicted_seconds", "predicted_cost", "unexplained_share", "cpu_efficiency", "memory_use",
             "max_rss_gb", "req_mem_gb", "flags"))
MODEL_TABLES: tuple[TableSpec, ...] = (SCALING, STEP_BREAKDOWN, COST)

TABLES_BY_NAME = {t.name: t for t in TABLES}
PLOTS: tuple[PlotSpec, ...] = tuple(p for t in TABLES for p in t.plots)

# Views kept for callers of the single-module report (same names, same values).
CSV_NAMES = {t.name: t.csv_file for t in TABLES}
PLOT_NAMES = {p.name: p.file for p in PLOTS}
STRONG_COLUMNS = TABLES_BY_NAME["strong"].columns
WEAK_COLUMNS = TABLES_BY_NAME["weak"].columns
BATCH_COLUMNS = TABLES_BY_NAME["batch_size"].columns
ACCURACY_COLUMNS = TABLES_BY_NAME["accuracy"].columns
ENVIRONMENT_COLUMNS = TABLES_BY_NAME["environment"].columns
