"""The scaling model in `make report`: hand-made logs from a known per-step model, the network and price
flags, allreduce benchmarks, Horovod timelines in run directories, and old logs without gradient_bytes.

The logs below are written from t(p, b) = OVERHEAD + PER_SAMPLE * b + 2 (p - 1) * LATENCY (no bandwidth
term), so the fitted parameters and every prediction can be worked out by hand.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_report import TRAIN_WINDOWS, read_csv, run_cli, run_end, run_start, simple_run, write_log

from conftest import REPO
from stockpredict import report
from stockpredict.common import rundir
from stockpredict.report import scaling_model, timeline

OVERHEAD, PER_SAMPLE, LATENCY = 0.004, 1e-4, 0.001    # seconds per step, per sample, per ring step
GRADIENT_BYTES = 49_060                                 # the seed's model: 12,265 parameters x 4 bytes
GLOBAL = 128                                            # the strong series' global batch
REQUIRED = ("mode", "ranks", "global_batch_size", "batch_size_per_rank", "predicted_seconds_per_epoch",
            "predicted_speedup", "predicted_efficiency")
FIXTURE = REPO / "tests" / "fixtures" / "horovod_timeline_2ranks.json"


def step(ranks: int, batch: int) -> float:
    return OVERHEAD + PER_SAMPLE * batch + 2 * (ranks - 1) * LATENCY


def epoch_seconds(ranks: int, batch: int) -> float:
    return TRAIN_WINDOWS // (ranks * batch) * step(ranks, batch)


def model_runs(runs: Path, gradient_bytes: int | None = GRADIENT_BYTES, ranks=(1, 2, 4)) -> None:
    """A strong series at global batch 128 on `ranks` plus a 1-rank batch sweep (mode null)."""
    extra = {} if gradient_bytes is None else {"gradient_bytes": gradient_bytes}
    for p in ranks:
        b = GLOBAL // p
        write_log(runs, f"strong-n{p}", simple_run(p, [epoch_seconds(p, b)] * 2, batch=b, **extra))
    for b in (32, 64, 256):
        write_log(runs, f"sweep-b{b}", simple_run(1, [epoch_seconds(1, b)] * 2, batch=b, mode=None, **extra))


def bench_log(ranks: int = 2, iterations: int = 100, gradient_bytes: int = GRADIENT_BYTES,
              seconds: float | None = None) -> list[dict]:
    """An allreduce benchmark's log as stockpredict.job.allreduce_bench writes it (epoch 1 is warm-up)."""
    seconds = seconds if seconds is not None else iterations * 2 * (ranks - 1) * LATENCY
    start = run_start(ranks=ranks, nodes=ranks, batch=0, global_batch=0, mode=None, epochs=3,
                      kind="allreduce", gradient_bytes=gradient_bytes, dataset=None, windows={})
    epochs = [{"schema": 1, "event": "epoch", "epoch": n, "train_seconds": s, "val_seconds": 0.0,
               "steps": iterations, "samples": iterations, "samples_per_second": iterations / s,
               "train_loss": 0.0, "val_loss": None, "resumed": False}
              for n, s in ((1, 5 * seconds), (2, seconds), (3, seconds))]
    return [start, *epochs, {**run_end(), "test": None}]


def held_out_row(markdown: str, run_id: str) -> str:
    """The held-out table's row of `run_id`."""
    return next(line for line in markdown.splitlines() if line.startswith(f"| {run_id} |"))


def exact_held_out(row: str, prefix: str) -> bool:
    """The row starts with `prefix` (run, ranks, batch, measured, predicted) and its error is 0.0 %
    (+0.0% or -0.0%: the refit is exact up to rounding)."""
    return row.startswith(prefix) and row.endswith(("| +0.0% |", "| -0.0% |"))


def rows_by(rows, **match) -> list[dict]:
    return [r for r in rows if all(r[k] == str(v) for k, v in match.items())]


def test_prediction_csv_fitted_parameters_peak_and_held_out_check(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    model_runs(runs)
    proc = run_cli("--runs", str(runs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr

    rows = read_csv(out / "scaling_prediction.csv")
    header = list(rows[0])
    assert set(REQUIRED) <= set(header)
    assert header[-6:] == ["network", *report.KEY_COLUMNS]
    assert not {"cost_per_epoch", "cost_to_target"} & set(header)          # no price: no cost columns
    strong = rows_by(rows, mode="strong", global_batch_size=GLOBAL)
    # Powers of two up to 128 (the global batch must divide over the ranks), and each measured count.
    assert [int(r["ranks"]) for r in strong] == [1, 2, 4, 8, 16, 32, 64, 128]
    for r in strong:
        p = int(r["ranks"])
        assert int(r["batch_size_per_rank"]) == GLOBAL // p
        assert float(r["predicted_seconds_per_epoch"]) == pytest.approx(epoch_seconds(p, GLOBAL // p))
        speedup = epoch_seconds(1, GLOBAL) / epoch_seconds(p, GLOBAL // p)
        assert float(r["predicted_speedup"]) == pytest.approx(speedup)
        assert float(r["predicted_efficiency"]) == pytest.approx(speedup / p)
        assert r["network"] == "fitted" and r["dataset"] == "data/seq.h5"
    assert float(strong[2]["measured_seconds_per_epoch"]) == pytest.approx(epoch_seconds(4, 32))
    assert strong[3]["measured_seconds_per_epoch"] == ""                    # 8 ranks: not measured
    # The 1-rank batch sweep forms no series (mode null), but the 1-rank runs fit the compute term.
    assert {r["mode"] for r in rows} == {"strong"}

    markdown = (out / "scaling.md").read_text()
    section = markdown[markdown.index("### Scaling model"):]
    assert "| overhead per step | 4 ms |" in section
    assert "| compute per sample | 100 us |" in section
    assert "| latency per ring step | 1 ms |" in section
    # Speedup 1.35 at 2 ranks (0.5376 s -> 0.3968 s), then 4 ranks are slower again (0.4224 s).
    assert "highest predicted speedup 1.35 at 2 ranks (then falls)" in section
    # Held out: refitted on the 1- and 2-rank runs, the 4-rank run is predicted exactly (noise-free).
    assert "Refitted without the 4-rank runs" in section
    assert exact_held_out(held_out_row(section, "strong-n4"), "| strong-n4 | 4 | 32 | 0.4224 | 0.4224 ")
    assert (out / "scaling_prediction.png").read_bytes().startswith(b"\x89PNG")
    assert "](scaling_prediction.png)" in section
    assert "step_breakdown.csv" not in markdown                             # no timeline recorded
    assert (out / "step_breakdown.csv").read_text().startswith("ranks,nodes,")


def test_network_preset_and_prices_from_flags(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    model_runs(runs)
    proc = run_cli("--runs", str(runs), "--out", str(out), "--network", "ib-hdr", "--price-per-hour", "2.5",
                   "--target-epochs", "10", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    rows = rows_by(read_csv(out / "scaling_prediction.csv"), mode="strong")
    hdr = scaling_model.NETWORKS["ib-hdr"]
    for r in rows:
        p, b = int(r["ranks"]), int(r["batch_size_per_rank"])
        allreduce = 2 * (p - 1) * hdr.latency_s + 2 * (p - 1) / p * GRADIENT_BYTES / hdr.bandwidth_bytes_per_s
        epoch = TRAIN_WINDOWS // GLOBAL * (OVERHEAD + PER_SAMPLE * b + allreduce)
        assert float(r["predicted_seconds_per_epoch"]) == pytest.approx(epoch)
        assert r["network"] == "ib-hdr"
        # Billed per GPU (one per rank): seconds / 3600 x ranks x 2.5; ten epochs to the target.
        assert float(r["cost_per_epoch"]) == pytest.approx(epoch / 3600 * p * 2.5)
        assert float(r["hours_to_target"]) == pytest.approx(10 * epoch / 3600)
        assert float(r["cost_to_target"]) == pytest.approx(10 * epoch / 3600 * p * 2.5)
    markdown = (out / "scaling.md").read_text()
    assert "Predictions below are for network `ib-hdr`" in markdown
    # The held-out check still uses the fitted network: exact on these noise-free logs.
    assert exact_held_out(held_out_row(markdown, "strong-n4"), "| strong-n4 | 4 | 32 | 0.4224 | 0.4224 ")
    header = (out / "scaling_prediction.csv").read_text().splitlines()[0].split(",")
    assert header.index("cost_to_target") < header.index("network")


def test_prices_per_node_from_a_site_profile(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    model_runs(runs)
    profile = tmp_path / "mysite.toml"
    text = (REPO / "slurm" / "profiles" / "university-gpu.toml").read_text()
    assert "# price_per_gpu_hour" in text and "# price_per_node_hour" in text   # documented, commented
    profile.write_text(text.replace("gpus_per_node = 1 ", "gpus_per_node = 4 ")
                       + "price_per_node_hour = 12.0\n")
    proc = run_cli("--runs", str(runs), "--out", str(out), "--profile", str(profile), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    for r in rows_by(read_csv(out / "scaling_prediction.csv"), mode="strong"):
        p, epoch = int(r["ranks"]), float(r["predicted_seconds_per_epoch"])
        nodes = -(-p // 4)                                                   # whole nodes of 4 GPUs
        assert float(r["cost_per_epoch"]) == pytest.approx(epoch / 3600 * nodes * 12.0)
    # The same profile still renders jobs: the price keys are the report's, not the job's.
    from stockpredict.control.jobscript import load_profile
    assert "price_per_node_hour" not in load_profile(str(profile))
    assert '"price_unit": "node"' in (out / "scaling.md").read_text()


@pytest.mark.parametrize("args, message", [
    (("--network", "infiniband"), "unknown network 'infiniband'; valid: shm, 10gbe"),
    (("--price-per-hour", "cheap"), "--price-per-hour wants a number, got 'cheap'"),
    (("--price-per-hour", "-1"), "price per hour must be a number >= 0"),
    (("--price-per-hour", "1", "--price-unit", "hour"), "--price-unit must be one of gpu, node"),
    (("--price-per-hour", "1", "--target-epochs", "0"), "target_epochs must be an integer >= 1"),
    (("--profile", "university-gpu"), "profile 'university-gpu' has no price_per_gpu_hour"),
    (("--profile", "no-such-site"), "no profile 'no-such-site'"),
])
def test_bad_model_flags_are_one_line_errors(tmp_path, args, message):
    runs = tmp_path / "runs"
    model_runs(runs)
    proc = run_cli("--runs", str(runs), "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_old_logs_without_gradient_bytes_get_a_note_and_no_model(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    model_runs(runs, gradient_bytes=None)
    proc = run_cli("--runs", str(runs), "--out", str(out), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    markdown = (out / "scaling.md").read_text()
    assert "_no scaling model: no run of this key recorded `gradient_bytes` in run_start" in markdown
    assert "### Strong scaling" in markdown                                  # the tables are still there
    assert (out / "scaling_prediction.csv").read_text().count("\n") == 1     # header only


def test_models_are_fitted_within_one_key(tmp_path):
    # Key B (another dataset, three times slower, only 1-rank runs) must not move key A's fit, and
    # without a multi-rank run or a --network preset B gets a note instead of a model.
    runs = tmp_path / "runs"
    model_runs(runs)
    other = {"dataset": "data/other.h5", "gradient_bytes": GRADIENT_BYTES}
    for b in (32, 64):
        write_log(runs, f"b-sweep-{b}", simple_run(1, [3 * epoch_seconds(1, b)] * 2, batch=b, mode="strong",
                                                   **other))
    built = report.build_report(report.load_runs(runs), report.ReportConfig(runs_dir=runs))
    a, b = sorted(built.sections, key=lambda s: s.key.dataset.path)
    assert a.key.dataset.path == "data/other.h5" and b.key.dataset.path == "data/seq.h5"
    assert "only 1-rank runs: give a network preset" in a.scaling.note and a.scaling.analysis is None
    assert b.scaling.fit.overhead_s == pytest.approx(OVERHEAD)
    assert b.scaling.fit.latency_s == pytest.approx(LATENCY)
    # With a preset, B is predicted on it; A's latency is still its own fit.
    built = report.build_report(report.load_runs(runs), report.ReportConfig(runs_dir=runs, network="10gbe"))
    a, b = sorted(built.sections, key=lambda s: s.key.dataset.path)
    assert a.scaling.fit.overhead_s == pytest.approx(3 * OVERHEAD)
    assert a.scaling.fit.latency_s == scaling_model.NETWORKS["10gbe"].latency_s
    assert b.scaling.fit.latency_s == pytest.approx(LATENCY)
    csv_keys = {(r["dataset"], r["network"]) for r in built.scaling_prediction}
    assert csv_keys == {("data/other.h5", "10gbe"), ("data/seq.h5", "10gbe")}


def test_allreduce_benchmark_joins_the_fit_of_its_gradient_size(tmp_path):
    # Training runs at 1 and 2 ranks plus a 2-rank allreduce benchmark: held out, the 2-rank run is
    # predicted from the 1-rank runs and the benchmark alone (exactly, on noise-free logs).
    runs, out = tmp_path / "runs", tmp_path / "results"
    model_runs(runs, ranks=(1, 2))
    write_log(runs, "bench-n2", bench_log())
    write_log(runs, "bench-other-model", bench_log(gradient_bytes=4 * 50_000, seconds=9.0))
    proc = run_cli("--runs", str(runs), "--out", str(out), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    markdown = (out / "scaling.md").read_text()
    assert "Allreduce benchmarks in the fit: bench-n2." in markdown
    assert "**Allreduce benchmarks (2):** bench-n2, bench-other-model" in markdown
    assert exact_held_out(held_out_row(markdown, "strong-n2"), "| strong-n2 | 2 | 64 | 0.3968 | 0.3968 ")
    built = report.build_report(report.load_runs(runs), report.ReportConfig(runs_dir=runs))
    assert len(built.sections) == 1                        # benchmarks are not a key of their own
    assert [r.run_id for r in built.sections[0].runs] == ["strong-n1", "strong-n2", "sweep-b256",
                                                          "sweep-b32", "sweep-b64"]
    bench = [p for p in built.sections[0].scaling.points if p.kind == "allreduce"]
    assert [(p.ranks, p.steps, p.seconds_per_epoch) for p in bench] == [(2, 100, pytest.approx(0.2))]


def test_only_allreduce_benchmarks_is_a_one_line_error(tmp_path):
    runs = tmp_path / "runs"
    write_log(runs, "bench-n2", bench_log())
    proc = run_cli("--runs", str(runs), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: only allreduce benchmarks in {runs}: no training run to report on"]


def test_timeline_in_a_run_directory_gives_the_step_time_breakdown(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    model_runs(runs)
    write_log(runs, "timeline-n2", simple_run(2, [0.5, 0.5], batch=64, gradient_bytes=GRADIENT_BYTES))
    shutil.copy(FIXTURE, runs / "timeline-n2" / "timeline.json")
    write_log(runs, "timeline-torn", simple_run(4, [0.5, 0.5], batch=32, gradient_bytes=GRADIENT_BYTES))
    (runs / "timeline-torn" / "timeline.json").write_text('{"not": "a timeline"}')
    proc = run_cli("--runs", str(runs), "--out", str(out), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    expected = timeline.read_timeline(FIXTURE)
    rows = read_csv(out / "step_breakdown.csv")
    assert len(rows) == 1                                    # the unreadable timeline gives no row
    row = rows[0]
    assert (int(row["ranks"]), int(row["batch_size_per_rank"]), int(row["runs"])) == (2, 64, 1)
    assert int(row["steps"]) == expected.steps
    assert float(row["seconds_per_step"]) == pytest.approx(expected.seconds_per_step)
    shares = [float(row[c]) for c in ("compute_share", "negotiate_share", "allreduce_share")]
    assert shares == pytest.approx([expected.compute_share, expected.negotiate_share,
                                    expected.allreduce_share])
    assert sum(shares) == pytest.approx(1.0)
    # The fitted model's share of communication at 2 ranks, batch 64: 2 ms of a 12.4 ms step.
    assert float(row["model_communication_share"]) == pytest.approx(0.002 / step(2, 64))
    assert row["dataset"] == "data/seq.h5"
    markdown = (out / "scaling.md").read_text()
    assert "### Step-time breakdown" in markdown
    assert "Left out of the fit (they recorded a Horovod timeline" in markdown
    assert "timeline-n2" in markdown and "no step-time breakdown from" in markdown
    # Left out: the fit is still exact on the other runs, and the held-out row is the 4-rank strong run.
    assert exact_held_out(held_out_row(markdown, "strong-n4"), "| strong-n4 | 4 | 32 | 0.4224 | 0.4224 ")


def test_registry_names_the_model_outputs_once():
    files = ([t.csv_file for t in (*report.TABLES, *report.registry.MODEL_TABLES)]
             + [p.file for p in report.PLOTS] + [report.registry.SCALING_PLOT.file, rundir.REPORT_MARKDOWN])
    assert len(files) == len(set(files))
    assert report.registry.scaling_plot_file(1) == "scaling_prediction.png"
    assert report.registry.scaling_plot_file(3) == "scaling_prediction_3.png"
    assert set(REQUIRED) <= set(report.registry.SCALING.columns)


@pytest.mark.parametrize("field, value, reason", [
    ("gradient_bytes", "49060", "gradient_bytes='49060', expected a positive integer"),
    ("gradient_bytes", 0, "gradient_bytes=0, expected a positive integer"),
    ("kind", "bench", "kind='bench', expected one of ('train', 'allreduce')"),
])
def test_malformed_model_fields_make_the_log_corrupt(tmp_path, field, value, reason):
    runs = tmp_path / "runs"
    model_runs(runs)
    write_log(runs, "bad", simple_run(2, [1.0, 1.0], batch=64, **{field: value}))
    loaded = report.load_runs(runs)
    assert [(s.path.split("/")[-2], s.reason.replace("\n", " ")) for s in loaded.skipped] == [
        ("bad", f"corrupt: line 1 has {reason}")]


def test_make_event_writes_and_checks_the_model_fields():
    from stockpredict.common import timing as contract

    base = {k: None for k in contract.RUN_START_FIELDS}
    event = contract.make_event("run_start", **base, gradient_bytes=GRADIENT_BYTES, kind="allreduce")
    assert (event["gradient_bytes"], event["kind"]) == (GRADIENT_BYTES, "allreduce")
    assert "kind" not in contract.make_event("run_start", **base)             # old writers: still valid
    for bad in ({"gradient_bytes": 0}, {"gradient_bytes": 4.5}, {"gradient_bytes": True}, {"kind": "bench"}):
        with pytest.raises(ValueError):
            contract.make_event("run_start", **base, **bad)
