"""Every table and plot of the report, named once: columns, CSV file, plot file, section title and text.

The rest of the package looks things up here instead of repeating a name. Plain data only (no
matplotlib, no parsing), so any module can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

MARKDOWN_NAME = "scaling.md"
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
    columns: tuple[str, ...]         # CSV header and Markdown columns, in order
    plots: tuple[PlotSpec, ...] = ()  # drawn from this table's rows

    @property
    def csv_columns(self) -> tuple[str, ...]:
        """The CSV header: the table's columns, then the comparability key's (added later, at the end,
        so readers of the older files keep working)."""
        return self.columns + KEY_COLUMNS


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
             "predicted signs of the move.",
        columns=("mode", "ranks", "nodes", "gpus_per_node", "batch_size_per_rank", "global_batch_size",
                 "learning_rate", "epochs", "test_mse", "rmse_price", "mae_price", "persistence_mse",
                 "persistence_rmse_price", "skill", "direction_accuracy", "runs"),
        plots=(PlotSpec("test_loss", "test_loss_vs_batch.png",
                        "Test loss vs effective batch size (one panel per dataset)"),
               PlotSpec("skill", "skill_vs_batch.png",
                        "Skill vs effective batch size (one series per dataset)"))),
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
        text="Hosts and software versions as each run recorded them.",
        columns=("hosts", "python", "tensorflow", "horovod", "mpi", "hardware", "runs", "first_start",
                 "last_start")),
)

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
