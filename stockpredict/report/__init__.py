"""Scaling tables and plots from the trainer's timing logs (`make report`).

    python -m stockpredict.report --runs results/runs --out results

Reads every `<runs>/*/timing.jsonl` (schema 1, written by stockpredict.train; the contract is
stockpredict/common/timing.py) and writes into `--out`: `scaling.md`, one CSV per table beside it
(strong_scaling.csv, weak_scaling.csv, batch_size.csv, accuracy.csv, environment.csv) and six PNG plots,
plus the scaling model per key (scaling_prediction.csv and .png, docs/scaling.md) and the step-time
breakdown of any Horovod timeline.json in a run directory (step_breakdown.csv).

The package is a pure core and a thin shell, like the other stages, one module per step:

    parse.py     parse_timing_log(text) -> Run     (one log; raises SkipLog with the reason)
                 load_runs(runs_dir) -> LoadedRuns (all logs; the skipped ones with their reasons)
    tables.py    build_report(loaded, config) -> Report (every table as plain rows; no I/O)
    render.py    render_csv / render_markdown      (text only)
    output.py    write_report(report, out_dir)     (Markdown, CSV, PNG; each file written atomically)
    command.py   main(argv)                        (the CLI)
    keys.py      the comparability key (dataset fingerprint or path, model config, engine)
    registry.py  every table and plot named once: columns, CSV file, plot file, section title
    config.py    ReportConfig
    scaling.py   key_scaling(runs, benchmarks, config) -> KeyScaling; step_breakdown_table (per key)

The log's contract (schema version, file name, fields) is imported from stockpredict/common/timing.py.

Rules (docs/report.md explains them):
- A log is used only if its last event is `run_end` with status "completed". Failed, preempted-and-not-
  resumed and unfinished runs are skipped with a warning naming the file, as are logs with another
  schema version and logs with an unreadable line anywhere but at the end. A writer killed mid-line
  leaves a torn fragment: as the last line it is dropped; followed on the same line by a whole record
  (the next append) the fragment is dropped and the record kept. Both with a warning.
- A resumed run logs some epochs twice; each epoch counts once and the later record wins.
- Warm-up: the first epoch logged after EVERY `run_start` (graph building happens again after a
  restart) and epochs flagged `resumed` are excluded from timing statistics.
- Runs are compared only within one comparability key: the same dataset (content fingerprint from
  run_start.dataset_id; logs without it: the recorded path and window counts, and the report says so),
  model configuration and engine. Each key gets its own section; every CSV row carries its key columns.
- Within a key, rows group runs by (mode, ranks, nodes, gpus_per_node, batch_size_per_rank). A row's
  value is the median over its runs of each run's median over its timed epochs.
- Runs with mode null (single `make submit` jobs) are not in the strong or weak tables, since nothing
  says what was held fixed between them; they are in the batch-size and accuracy tables.
"""

from stockpredict.report.command import main
from stockpredict.report.keys import ComparabilityKey, DatasetKey, run_start_key
from stockpredict.report.markdown import render_csv, render_markdown, render_markdown_table
from stockpredict.report.output import make_report, write_report
from stockpredict.report.parse import (
    MODES,
    SCHEMA_VERSION,
    EpochRecord,
    GroupKey,
    LoadedRuns,
    Run,
    SkipLog,
    SkippedLog,
    load_runs,
    parse_timing_log,
)
from stockpredict.report.registry import (
    ACCURACY_COLUMNS,
    BATCH_COLUMNS,
    CSV_NAMES,
    ENVIRONMENT_COLUMNS,
    KEY_COLUMNS,
    MODEL_TABLES,
    PLOT_NAMES,
    PLOTS,
    SCALING,
    STEP_BREAKDOWN,
    STRONG_COLUMNS,
    TABLES,
    WEAK_COLUMNS,
    PlotSpec,
    TableSpec,
)
from stockpredict.report.report_config import ReportConfig
from stockpredict.report.scaling import KeyScaling, key_scaling, step_breakdown_table
from stockpredict.report.tables import (
    GroupTiming,
    Report,
    RunTiming,
    Section,
    accuracy_table,
    batch_size_table,
    build_report,
    build_section,
    environment_table,
    group_timings,
    karp_flatt,
    parallel_efficiency,
    run_timing,
    speedup,
    strong_scaling_table,
    weak_scaling_table,
)

__all__ = [
    "ACCURACY_COLUMNS", "BATCH_COLUMNS", "CSV_NAMES", "ENVIRONMENT_COLUMNS", "KEY_COLUMNS",
    "MODEL_TABLES", "SCALING", "STEP_BREAKDOWN", "KeyScaling", "key_scaling", "step_breakdown_table",
    "MODES", "PLOTS", "PLOT_NAMES", "SCHEMA_VERSION", "STRONG_COLUMNS", "TABLES",
    "WEAK_COLUMNS", "ComparabilityKey", "DatasetKey", "EpochRecord", "GroupKey", "GroupTiming", "LoadedRuns",
    "PlotSpec", "Report", "ReportConfig", "Run", "RunTiming", "Section", "SkipLog", "SkippedLog", "TableSpec",
    "accuracy_table", "batch_size_table", "build_report", "build_section", "environment_table",
    "group_timings", "karp_flatt", "load_runs", "main", "make_report", "parallel_efficiency",
    "parse_timing_log", "render_csv", "render_markdown", "render_markdown_table", "run_start_key",
    "run_timing", "speedup", "strong_scaling_table", "weak_scaling_table", "write_report",
]
