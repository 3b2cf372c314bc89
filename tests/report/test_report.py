"""`make report` on hand-made timing logs with known answers (schema 1, as the trainer writes them).

Every expected number below is worked out by hand from the epoch times the test writes; the report
must reproduce it from the files alone.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stockpredict import report
from stockpredict.common import rundir
from stockpredict.common.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAIN_WINDOWS = 4096


# --- writing logs the way the trainer does -------------------------------------------------------

def run_start(ranks=1, nodes=1, gpus_per_node=1, batch=32, mode="strong", global_batch=None,
              resumed_from_epoch=None, attempt=0, hosts=None, epochs=4, time="2026-11-26T10:00:00+00:00",
              **extra):
    event = {
        "schema": 1, "event": "run_start", "time": time, "job_id": "100", "ranks": ranks, "nodes": nodes,
        "gpus_per_node": gpus_per_node, "hosts": hosts or [f"node{i + 1}" for i in range(nodes)],
        "batch_size_per_rank": batch, "global_batch_size": global_batch or batch * ranks,
        "learning_rate": 1e-4 * ranks, "epochs": epochs, "mode": mode, "dataset": "data/seq.h5",
        "windows": {"train": TRAIN_WINDOWS, "val": 512, "test": 512},
        "versions": {"python": "3.11.2", "tensorflow": "2.15.1", "horovod": "0.28.1",
                     "mpi": "Open MPI 4.1.4"},
        "config": {"lstm_units": 50}, "resumed_from_epoch": resumed_from_epoch, "attempt": attempt,
    }
    event.update(extra)
    return event


def epoch(n, seconds, global_batch=32, resumed=False):
    steps = TRAIN_WINDOWS // global_batch
    samples = steps * global_batch
    return {"schema": 1, "event": "epoch", "epoch": n, "train_seconds": seconds, "val_seconds": 0.5,
            "steps": steps, "samples": samples, "samples_per_second": samples / seconds,
            "train_loss": 0.01, "val_loss": 0.02, "resumed": resumed}


def run_end(status="completed", mse=1e-4):
    test = None if status != "completed" else {
        "mse": mse, "rmse_price": 0.5, "mae_price": 0.4, "persistence_mse": 2e-4,
        "persistence_rmse_price": 0.7, "skill": 1 - mse / 2e-4, "direction_accuracy": 0.55}
    return {"schema": 1, "event": "run_end", "status": status, "total_seconds": 60.0, "test": test}


def simple_run(ranks, seconds, *, nodes=None, batch=32, mode="strong", global_batch=None, mse=1e-4,
               warmup_seconds=99.0, **start):
    """run_start (plus `start` fields), a slow warm-up epoch, one epoch per entry of `seconds`, run_end."""
    global_batch = global_batch or batch * ranks
    events = [run_start(ranks=ranks, nodes=nodes or ranks, batch=batch, mode=mode, global_batch=global_batch,
                        epochs=len(seconds) + 1, **start),
              epoch(1, warmup_seconds, global_batch)]
    events += [epoch(i + 2, s, global_batch) for i, s in enumerate(seconds)]
    return events + [run_end(mse=mse)]


def write_log(runs_dir: Path, run_id: str, events, tail: str = "") -> Path:
    path = runs_dir / run_id / "timing.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + tail)
    return path


def parse(events, tail: str = ""):
    return report.parse_timing_log("".join(json.dumps(e) + "\n" for e in events) + tail, run_id="r")


def build(runs_dir: Path, **config) -> report.Report:
    cfg = report.ReportConfig(runs_dir=runs_dir, out_dir=runs_dir.parent, **config)
    return report.build_report(report.load_runs(runs_dir), cfg)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# --- formulas --------------------------------------------------------------------------------------

def test_karp_flatt_and_efficiency_formulas():
    # S = 3 on p = 4: e = (1/3 - 1/4) / (1 - 1/4) = (1/12) / (3/4) = 1/9.
    assert report.karp_flatt(3.0, 4.0) == pytest.approx(1 / 9)
    assert report.karp_flatt(2.0, 2.0) == pytest.approx(0.0)      # perfect scaling: no serial part
    assert report.karp_flatt(1.0, 1.0) is None                      # undefined at the base
    assert report.parallel_efficiency(3.0, 4.0) == pytest.approx(0.75)
    assert report.speedup(12.0, 4.0) == pytest.approx(3.0)


# --- parsing rules ---------------------------------------------------------------------------------

def test_warmup_first_epoch_excluded_and_median_odd_count():
    run, notes = parse(simple_run(1, [10.0, 30.0, 11.0]))
    assert notes == ()
    timed = run.timed_epochs(warmup_epochs=1)
    assert [e.epoch for e in timed] == [2, 3, 4]                    # epoch 1 (99 s) is warm-up
    assert report.run_timing(run, 1).seconds_per_epoch == pytest.approx(11.0)
    assert report.run_timing(run, 0).seconds_per_epoch == pytest.approx(20.5)  # median of 10, 11, 30, 99


def test_run_without_validation_windows_is_usable():
    # A dataset with an empty val split makes the trainer log val_loss null; the run still counts.
    events = simple_run(1, [10.0, 12.0])
    for event in events:
        if event["event"] == "epoch":
            event["val_loss"] = None
    run, _ = parse(events)
    assert report.run_timing(run, 1).seconds_per_epoch == pytest.approx(11.0)
    events[2]["val_loss"] = "nan"
    with pytest.raises(report.SkipLog, match="val_loss"):
        parse(events)


def test_median_even_count_is_mean_of_middle_two():
    run, _ = parse(simple_run(1, [10.0, 14.0, 12.0, 100.0]))
    assert report.run_timing(run, 1).seconds_per_epoch == pytest.approx(13.0)


def test_resumed_run_counts_each_epoch_once_and_excludes_first_epoch_after_restart():
    events = [
        run_start(epochs=5), epoch(1, 50.0), epoch(2, 10.0), epoch(3, 11.0),
        run_end("preempted"),
        # The requeued attempt redoes epoch 3 (its checkpoint was from epoch 2): the later record wins,
        # and it is the first epoch after a run_start, so it is warm-up too.
        run_start(resumed_from_epoch=2, attempt=1, epochs=5), epoch(3, 40.0), epoch(4, 12.0, resumed=True),
        epoch(5, 13.0),
        run_end("completed"),
    ]
    run, _ = parse(events)
    assert [e.epoch for e in run.epochs] == [1, 2, 3, 4, 5]
    assert run.epochs[2].train_seconds == 40.0
    assert run.attempts == 2
    assert [e.epoch for e in run.timed_epochs(1)] == [2, 5]
    assert report.run_timing(run, 1).seconds_per_epoch == pytest.approx(11.5)


def test_truncated_last_line_is_dropped_with_a_note():
    run, notes = parse(simple_run(1, [10.0, 12.0]), tail='{"schema": 1, "event": "ep')
    assert run.epochs[-1].epoch == 3
    assert len(notes) == 1 and "last line" in notes[0]


@pytest.mark.parametrize("events, tail, reason", [
    (simple_run(1, [10.0])[:-1], "", "partial"),                                          # no run_end
    (simple_run(1, [10.0])[:-1] + [run_end("failed")], "", "failed"),
    (simple_run(1, [10.0])[:-1] + [run_end("preempted")], "", "partial"),
    ([{**e, "schema": 2} for e in simple_run(1, [10.0])], "", "unknown schema"),
    ([{k: v for k, v in e.items() if k != "schema"} for e in simple_run(1, [10.0])], "", "unknown schema"),
    (simple_run(1, [10.0])[:1] + [{**epoch(1, 9.0), "train_seconds": "fast"}] + simple_run(1, [10.0])[2:],
     "", "corrupt"),
    (simple_run(1, [10.0])[2:], "", "corrupt"),                                             # no run_start
    (simple_run(1, [10.0])[:-1], "", "no run_end"),
    (simple_run(1, [10.0]), "", None),
])
def test_unusable_logs_raise_skip_with_reason(events, tail, reason):
    if reason is None:
        run, _ = parse(events, tail)
        assert run.ranks == 1
    else:
        with pytest.raises(report.SkipLog, match=reason):
            parse(events, tail)


def test_torn_fragment_followed_by_a_requeued_attempt_keeps_the_record():
    # Attempt 0 was SIGKILLed while writing epoch 3; the requeued attempt's run_start is appended to
    # the same line (the fragment has no newline). The run_start must survive: it marks epoch 3 of
    # the new attempt as warm-up.
    first = [run_start(epochs=4), epoch(1, 50.0), epoch(2, 10.0)]
    second = [run_start(resumed_from_epoch=2, attempt=1, epochs=4), epoch(3, 45.0), epoch(4, 12.0),
              run_end()]
    text = ("".join(json.dumps(e) + "\n" for e in first) + json.dumps(epoch(3, 11.0))[:30]
            + "".join(json.dumps(e) + "\n" for e in second))
    run, notes = report.parse_timing_log(text)
    assert run.attempts == 2
    assert [e.epoch for e in run.timed_epochs(1)] == [2, 4]
    assert len(notes) == 1 and "torn fragment" in notes[0]


def test_corrupt_middle_line_skips_the_whole_file():
    text = "".join(json.dumps(e) + "\n" for e in simple_run(1, [10.0]))
    lines = text.splitlines(keepends=True)
    lines[1] = '{"schema": 1, "event": epoch}\n'  # damaged, not cut short (that is test_races.py's case)
    with pytest.raises(report.SkipLog, match="corrupt: line 2"):
        report.parse_timing_log("".join(lines))


def test_load_runs_reports_each_skipped_file_by_name(tmp_path):
    runs = tmp_path / "runs"
    write_log(runs, "good", simple_run(1, [10.0]))
    bad = write_log(runs, "failed", simple_run(1, [10.0])[:-1] + [run_end("failed")])
    (runs / "pending").mkdir()
    loaded = report.load_runs(runs)
    assert [r.run_id for r in loaded.runs] == ["good"]
    assert [(s.path, s.reason.split(":")[0]) for s in loaded.skipped] == [
        (str(bad), "failed"), (str(runs / "pending" / "timing.jsonl"), "missing")]


def test_output_path_that_is_a_file_is_a_user_error(tmp_path):
    runs = tmp_path / "runs"
    write_log(runs, "good", simple_run(1, [10.0]))
    blocker = tmp_path / "results"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="cannot create output directory"):
        report.write_report(build(runs, plots=False), blocker)


# --- tables ----------------------------------------------------------------------------------------

def strong_and_weak_runs(runs: Path) -> None:
    # Strong scaling at global batch 128: per-rank batch 128/64/32 on 1/2/4 ranks.
    write_log(runs, "s1a", simple_run(1, [40.0, 42.0, 41.0], batch=128, global_batch=128))
    write_log(runs, "s1b", simple_run(1, [44.0, 44.0, 44.0], batch=128, global_batch=128))  # repeat
    write_log(runs, "s2", simple_run(2, [25.0, 26.0, 24.0], batch=64, global_batch=128))
    write_log(runs, "s4", simple_run(4, [16.0, 15.0, 14.0], batch=32, global_batch=128))
    # Weak scaling at 32 per rank.
    write_log(runs, "w1", simple_run(1, [32.0, 32.0], batch=32, mode="weak"))
    write_log(runs, "w2", simple_run(2, [20.0, 20.0], batch=32, mode="weak"))
    # An ad-hoc run without a mode, and one whose only epoch is warm-up.
    write_log(runs, "adhoc", simple_run(1, [8.0, 9.0], batch=256, mode=None, mse=3e-4))
    write_log(runs, "short", simple_run(1, [], batch=512, mode=None, mse=5e-4))


def test_strong_scaling_table_numbers(tmp_path):
    runs = tmp_path / "runs"
    strong_and_weak_runs(runs)
    rows = build(runs).strong
    assert [(r["ranks"], r["batch_size_per_rank"]) for r in rows] == [(1, 128), (2, 64), (4, 32)]
    # Runs s1a (median 41 s) and s1b (44 s): the row is the median of the two, 42.5 s.
    assert rows[0]["seconds_per_epoch"] == pytest.approx(42.5)
    assert rows[0]["runs"] == 2 and rows[0]["epochs"] == 6
    assert rows[1]["speedup"] == pytest.approx(42.5 / 25.0)
    assert rows[2]["speedup"] == pytest.approx(42.5 / 15.0)
    assert rows[2]["efficiency"] == pytest.approx(42.5 / 15.0 / 4)
    s = 42.5 / 15.0
    assert rows[2]["karp_flatt"] == pytest.approx((1 / s - 1 / 4) / (1 - 1 / 4))
    assert rows[0]["speedup"] == 1.0 and rows[0]["karp_flatt"] is None


def test_weak_batch_accuracy_and_untimed_runs(tmp_path):
    runs = tmp_path / "runs"
    strong_and_weak_runs(runs)
    built = build(runs)
    weak = built.weak
    x1 = (TRAIN_WINDOWS // 32) * 32 / 32.0
    x2 = (TRAIN_WINDOWS // 64) * 64 / 20.0
    assert [r["ranks"] for r in weak] == [1, 2]
    assert weak[1]["throughput_ratio"] == pytest.approx(x2 / x1)
    assert weak[1]["efficiency"] == pytest.approx(x2 / (2 * x1))
    # Null-mode runs: in the batch-size table, not in the scaling tables.
    batch = {(r["mode"], r["ranks"], r["global_batch_size"]): r for r in built.batch_size}
    adhoc = batch[("", 1, 256)]
    assert adhoc["seconds_per_epoch"] == pytest.approx(8.5)
    assert adhoc["seconds_per_step"] == pytest.approx(8.5 / (TRAIN_WINDOWS // 256))
    assert all(r["global_batch_size"] != 256 for r in built.strong + built.weak)
    # The run with only a warm-up epoch has no timing but keeps its accuracy row.
    assert built.untimed_runs == ("short",)
    acc = {(r["mode"], r["ranks"], r["global_batch_size"]): r for r in built.accuracy}
    assert acc[("", 1, 512)]["test_mse"] == pytest.approx(5e-4)
    assert acc[("", 1, 256)]["skill"] == pytest.approx(1 - 3e-4 / 2e-4)
    assert acc[("strong", 1, 128)]["runs"] == 2 and acc[("strong", 4, 128)]["runs"] == 1
    assert built.environment[0]["hosts"] == "node1 node2 node3 node4"


def test_no_usable_logs_is_a_user_error(tmp_path):
    runs = tmp_path / "runs"
    write_log(runs, "failed", simple_run(1, [10.0])[:-1] + [run_end("failed")])
    with pytest.raises(UserError, match="no usable timing logs"):
        build(runs)
    with pytest.raises(UserError, match="no runs directory"):
        report.load_runs(tmp_path / "missing")


def test_registry_names_every_table_and_plot_once(tmp_path):
    # Each table's rows hold exactly the registry's columns, no file name is used twice, and the plot
    # module draws exactly the registry's plots.
    from stockpredict.common import timing
    from stockpredict.report import plots

    runs = tmp_path / "runs"
    strong_and_weak_runs(runs)
    built = build(runs)
    for table in report.TABLES:
        rows = getattr(built, table.name)
        assert rows, table.name
        assert all(list(row) == list(table.csv_columns) for row in rows), table.name
        section_rows = getattr(built.sections[0], table.name)           # Markdown: the table's own columns
        assert all(list(row) == list(table.row_columns) for row in section_rows), table.name
        assert sorted(table.markdown_columns) == sorted(table.row_columns), table.name
    files = [t.csv_file for t in report.TABLES] + [p.file for p in report.PLOTS] + [rundir.REPORT_MARKDOWN]
    assert len(files) == len(set(files))
    assert set(plots.render_all(built)) == {p.name for p in report.PLOTS}
    # The timing contract comes from stockpredict.common.timing, not a copy.
    assert (report.SCHEMA_VERSION, rundir.TIMING_LOG) == (timing.SCHEMA_VERSION, rundir.TIMING_LOG)


def test_engines_are_compared_side_by_side_never_pooled(tmp_path):
    runs = tmp_path / "runs"
    # weak runs at 256 per rank: Horovod 1 -> 2 ranks at 1.8x, the tf engine at 1.5x
    for engine, seconds in (("horovod", (10.0, 5.56)), ("tf", (12.0, 8.0))):
        for ranks, s in zip((1, 2), seconds):
            write_log(runs, f"{engine}-{ranks}",
                      simple_run(ranks, [s, s], batch=256, mode="weak", engine=engine))
    built = build(runs)
    assert [s.key.engine for s in built.sections] == ["horovod", "tf"]
    assert all(s.label.endswith(s.key.engine) for s in built.sections), [s.label for s in built.sections]
    by_engine = {s.key.engine: s.engines for s in built.sections}
    assert [r["ranks"] for r in by_engine["tf"]] == [1, 2]
    assert by_engine["horovod"][1]["efficiency"] == pytest.approx(10.0 / 5.56 / 2)
    assert by_engine["tf"][1]["efficiency"] == pytest.approx(12.0 / 8.0 / 2)
    assert by_engine["tf"][0]["samples_per_second"] == pytest.approx(4096 / 12.0)
    assert [r["engine"] for r in built.engines] == ["horovod", "horovod", "tf", "tf"]  # the CSV's rows
    from stockpredict.report import plots

    assert plots.render_all(built)["engines"].startswith(PNG_MAGIC)


def test_config_rejects_unknown_keys():
    with pytest.raises(UserError, match="valid: runs_dir, out_dir, warmup_epochs, plots"):
        report.ReportConfig.from_mapping({"warmup": 2})
    assert report.ReportConfig.from_mapping({"runs_dir": "x"}).runs_dir == Path("x")


# --- the command line --------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stockpredict.report", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_cli_writes_markdown_csv_and_png(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    strong_and_weak_runs(runs)
    failed = write_log(runs, "zz-failed", simple_run(2, [10.0])[:-1] + [run_end("failed")])
    partial = write_log(runs, "zz-partial", simple_run(2, [10.0])[:-1], tail='{"schema": 1, "ev')
    proc = run_cli("--runs", str(runs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"skipping {failed}: failed" in proc.stderr
    assert f"skipping {partial}: partial" in proc.stderr

    markdown = (out / "scaling.md").read_text()
    for heading in ("## Strong scaling", "## Weak scaling", "## Batch size", "## Accuracy", "## Environment"):
        assert heading in markdown
    assert str(failed) in markdown and "node1, node2, node3, node4" in markdown

    strong = read_csv(out / "strong_scaling.csv")
    assert [int(r["ranks"]) for r in strong] == [1, 2, 4]
    assert float(strong[2]["speedup"]) == pytest.approx(42.5 / 15.0)
    assert strong[0]["karp_flatt"] == ""
    assert float(strong[1]["karp_flatt"]) == pytest.approx(report.karp_flatt(42.5 / 25.0, 2.0))
    weak = read_csv(out / "weak_scaling.csv")
    # Both weak runs train 4096 samples per epoch: X1 = 4096/32 = 128/s, X2 = 4096/20 = 204.8/s,
    # efficiency = 204.8 / (2 * 128) = 0.8.
    assert float(weak[1]["efficiency"]) == pytest.approx(0.8)
    accuracy = read_csv(out / "accuracy.csv")
    assert {float(r["test_mse"]) for r in accuracy} == {1e-4, 3e-4, 5e-4}
    batch = read_csv(out / "batch_size.csv")
    assert len(batch) == 6                                   # 3 strong + 2 weak + 1 ad hoc (short: untimed)
    env = read_csv(out / "environment.csv")
    assert env[0]["tensorflow"] == "2.15.1" and int(env[0]["runs"]) == 8

    for name in report.PLOT_NAMES.values():
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
        assert f"]({name})" in markdown
    assert not list(out.glob(".*.tmp"))                       # atomic writes leave no temporary files


def test_cli_without_usable_logs_exits_nonzero_with_one_line(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    write_log(runs, "partial", simple_run(1, [10.0])[:-1])
    proc = run_cli("--runs", str(runs), "--out", str(out), "--no-plots")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no usable timing logs" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()

    proc = run_cli("--runs", str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: no runs directory")
    assert "Traceback" not in proc.stderr


# --- the comparability key: dataset identity and the run_start fields -------------------------------

def write_sequences(path: Path, windows=(40, 8, 8), inputs=None, config=None, attrs=True, seed=0) -> Path:
    """A small sequences file in the preprocessing layout (only what identity.py reads)."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        for split, n in zip(("train", "val", "test"), windows):
            h5.create_dataset(f"{split}/x", data=rng.random((n, 6, 2), dtype=np.float32))
            h5.create_dataset(f"{split}/y", data=rng.random(n, dtype=np.float32))
        if attrs:
            h5.attrs["schema_version"] = 1
            h5.attrs["config"] = json.dumps(config or {"seq_len": 6, "horizon": 1}, sort_keys=True)
            h5.attrs["input_sha256"] = json.dumps(inputs or {"AAA.csv": "aa" * 32}, sort_keys=True)
            h5.attrs["seq_len"] = 6
    return path


def test_dataset_fingerprint_follows_content_not_path(tmp_path):
    from stockpredict.common import identity

    a = write_sequences(tmp_path / "one" / "seq.h5")
    same = write_sequences(tmp_path / "two" / "other.h5", seed=1)  # same inputs and config, other path
    other_inputs = write_sequences(tmp_path / "x.h5", inputs={"AAA.csv": "bb" * 32})
    other_config = write_sequences(tmp_path / "y.h5", config={"seq_len": 6, "horizon": 5})
    other_windows = write_sequences(tmp_path / "z.h5", windows=(41, 8, 8))
    fp = identity.dataset_fingerprint(a)
    assert len(fp) == 64 and identity.dataset_fingerprint(same) == fp
    others = {identity.dataset_fingerprint(p) for p in (other_inputs, other_config, other_windows)}
    assert len({fp, *others}) == 4
    ident = identity.dataset_identity(a)
    assert ident == {"fingerprint": fp, "name": "seq", "windows": {"train": 40, "val": 8, "test": 8}}
    assert identity.dataset_identity(a, name="demo")["name"] == "demo"


def test_dataset_fingerprint_without_recorded_inputs_hashes_a_sample_of_the_data(tmp_path):
    import h5py

    from stockpredict.common import identity

    a = write_sequences(tmp_path / "a.h5", attrs=False)
    b = write_sequences(tmp_path / "b.h5", attrs=False)
    c = write_sequences(tmp_path / "c.h5", attrs=False, seed=3)
    assert identity.dataset_fingerprint(a) == identity.dataset_fingerprint(b)
    assert identity.dataset_fingerprint(a) != identity.dataset_fingerprint(c)
    with h5py.File(b, "r+") as h5:
        h5["train/y"][20] = -1.0                                  # a window in the middle sample
    assert identity.dataset_fingerprint(a) != identity.dataset_fingerprint(b)
    with pytest.raises(UserError, match="cannot read sequences file"):
        identity.dataset_identity(tmp_path / "missing.h5")


def test_model_identity_and_run_start_optional_fields():
    from stockpredict.common import identity, timing

    config = {"lstm_units": 64, "dropout": 0.2, "dense_units": 16, "lr": 1e-3, "representation": None}
    assert identity.model_identity(config, 60, 2) == {"lstm_units": 64, "dropout": 0.2, "dense_units": 16,
                                                      "seq_len": 60, "n_features": 2}
    required = {name: None for name in timing.RUN_START_FIELDS}
    old = timing.make_event("run_start", **required)                 # an old writer: no optional field
    assert list(old)[2:] == list(timing.RUN_START_FIELDS)
    new = timing.make_event("run_start", **required, engine="horovod", model={"lstm_units": 64},
                            dataset_id={"fingerprint": "ab", "name": "seq", "windows": {"train": 1}})
    assert list(new)[2:] == [*timing.RUN_START_FIELDS, "engine", "dataset_id", "model"]
    with pytest.raises(ValueError, match="dataset_id"):
        timing.make_event("run_start", **required, dataset_id={"fingerprint": "ab"})
    with pytest.raises(ValueError, match="unknown"):
        timing.make_event("run_start", **required, colour="red")


# --- reports over several datasets and model sizes (issue 17) ----------------------------------------

FP_A, FP_B = "a1" * 32, "b2" * 32
SMALL = {"lstm_units": 50, "dropout": 0.3, "dense_units": 32, "seq_len": 60, "n_features": 2}
LARGE = {**SMALL, "lstm_units": 128}


def keyed(fingerprint, name, model=SMALL, windows=None):
    windows = windows or {"train": TRAIN_WINDOWS, "val": 512, "test": 512}
    return {"dataset_id": {"fingerprint": fingerprint, "name": name, "windows": windows}, "model": model}


def two_datasets_two_models(runs: Path) -> None:
    """Dataset A: strong scaling at 1/2/4/8 ranks, true 8-rank speedup 31/10 = 3.10. Dataset B: three
    times slower, one 1-rank run (pooled with A's, the 1-rank median would be 62 s and the 8-rank
    speedup 6.2). A again with a larger model: 1 and 2 ranks, speedup 62/40 = 1.55."""
    for ranks, seconds in ((1, 31.0), (2, 20.0), (4, 14.0), (8, 10.0)):
        write_log(runs, f"a-small-{ranks}", simple_run(ranks, [seconds] * 3, batch=256 // ranks,
                                                       global_batch=256, mse=1e-4, **keyed(FP_A, "A")))
    write_log(runs, "b-small-1", simple_run(1, [93.0] * 3, batch=256, global_batch=256, mse=1.5e-4,
                                            **keyed(FP_B, "B")))
    write_log(runs, "a-large-1", simple_run(1, [62.0] * 3, batch=256, global_batch=256, mse=0.5e-4,
                                            **keyed(FP_A, "A", LARGE)))
    write_log(runs, "a-large-2", simple_run(2, [40.0] * 3, batch=128, global_batch=256, mse=0.5e-4,
                                            **keyed(FP_A, "A", LARGE)))


def section(built, name, lstm_units=50):
    [match] = [s for s in built.sections
               if s.key.dataset.name == name and dict(s.key.model)["lstm_units"] == lstm_units]
    return match


def test_tables_are_computed_within_one_dataset_and_model(tmp_path):
    runs = tmp_path / "runs"
    two_datasets_two_models(runs)
    built = build(runs)
    assert [(s.key.dataset.name, dict(s.key.model)["lstm_units"], len(s.runs)) for s in built.sections] == [
        ("A", 50, 4), ("A", 128, 2), ("B", 50, 1)]
    a = section(built, "A").strong
    assert [r["ranks"] for r in a] == [1, 2, 4, 8]
    assert a[3]["speedup"] == pytest.approx(3.10)
    assert a[3]["karp_flatt"] == pytest.approx(report.karp_flatt(3.10, 8))
    b = section(built, "B").strong
    assert [(r["ranks"], r["seconds_per_epoch"], r["speedup"]) for r in b] == [(1, 93.0, 1.0)]
    large = section(built, "A", 128).strong
    assert [r["speedup"] for r in large] == [1.0, pytest.approx(62 / 40)]
    # No ratio crosses keys: the pooled answer (62 s / 10 s) appears nowhere.
    assert all(r["speedup"] != pytest.approx(6.2) for r in built.strong)
    # Accuracy: each dataset's rows hold only its own runs.
    assert [r["test_mse"] for r in section(built, "B").accuracy] == [1.5e-4]
    assert {r["test_mse"] for r in section(built, "A").accuracy} == {1e-4}
    assert [r["engine"] for r in built.strong] == ["horovod"] * 7
    assert built.keys[0][1] == 4 and sum(n for _, n in built.keys) == 7


def test_cli_sections_headers_and_key_columns(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    two_datasets_two_models(runs)
    proc = run_cli("--runs", str(runs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    markdown = (out / "scaling.md").read_text()
    assert markdown.count(f"## A: 4096/512/512 windows, fingerprint {FP_A[:12]}") == 2
    assert markdown.count(f"## B: 4096/512/512 windows, fingerprint {FP_B[:12]}") == 1
    assert "**Comparability keys (3):**" in markdown
    assert f"| B | 4096/512/512 | {FP_B[:12]} | lstm_units=50 dropout=0.3 dense_units=32 seq_len=60 " \
           "n_features=2 | horovod | 1 | yes |" in markdown
    assert "Keyed by path" not in markdown
    strong = read_csv(out / "strong_scaling.csv")
    header = (out / "strong_scaling.csv").read_text().splitlines()[0].split(",")
    assert header == [*report.STRONG_COLUMNS, "dataset", "fingerprint", "windows", "model", "engine"]
    a8 = [r for r in strong if r["dataset"] == "A" and r["ranks"] == "8"]
    assert len(a8) == 1 and float(a8[0]["speedup"]) == pytest.approx(3.10)
    b = [r for r in strong if r["fingerprint"] == FP_B]
    assert [(r["ranks"], float(r["speedup"])) for r in b] == [("1", 1.0)]
    assert (out / "skill_vs_batch.png").read_bytes().startswith(PNG_MAGIC)


def test_old_logs_are_keyed_by_path_and_windows_and_the_report_says_so(tmp_path):
    runs = tmp_path / "runs"
    write_log(runs, "old-1", simple_run(1, [30.0, 30.0], batch=64, global_batch=64))
    write_log(runs, "old-2", simple_run(2, [20.0, 20.0], batch=32, global_batch=64))
    # Same path, regenerated with other window counts: not comparable with the two above.
    write_log(runs, "old-regen", simple_run(1, [90.0, 90.0],
                                            windows={"train": 8192, "val": 512, "test": 512}))
    write_log(runs, "new", simple_run(1, [60.0, 60.0], **keyed(FP_A, "seq")))  # same path, fingerprinted
    built = build(runs, plots=False)
    labels = [(s.key.dataset.by_path, s.key.dataset.windows_text, len(s.runs)) for s in built.sections]
    assert labels == [(False, "4096/512/512", 1), (True, "4096/512/512", 2), (True, "8192/512/512", 1)]
    old = built.sections[1].strong
    assert old[1]["speedup"] == pytest.approx(1.5)                # 30 / 20, not pooled with the 90 s run
    markdown = report.render_markdown(built, {})
    assert "**Keyed by path:** 3 run(s)" in markdown
    assert "## data/seq.h5: 4096/512/512 windows, keyed by path (no fingerprint recorded)" in markdown


def test_dataset_filter(tmp_path):
    runs = tmp_path / "runs"
    two_datasets_two_models(runs)
    write_log(runs, "old", simple_run(1, [30.0, 30.0]))
    by_name = build(runs, plots=False, dataset="A")
    assert {s.key.dataset.fingerprint for s in by_name.sections} == {FP_A} and len(by_name.sections) == 2
    assert len(by_name.keys) == 4 and len(by_name.runs) == 6      # the header still lists every key
    assert "no (--dataset)" in report.render_markdown(by_name, {})
    by_prefix = build(runs, plots=False, dataset=FP_B[:6].upper())
    assert [s.key.dataset.name for s in by_prefix.sections] == ["B"]
    by_path = build(runs, plots=False, dataset="data/seq.h5")
    assert [s.key.dataset.by_path for s in by_path.sections] == [True]
    assert len(build(runs, plots=False, dataset="").sections) == 4  # `make report DATASET=`: no filter
    with pytest.raises(UserError, match="matches no dataset"):
        build(runs, plots=False, dataset="C")
    write_log(runs, "other-a", simple_run(1, [5.0, 5.0], **keyed("a9" * 32, "A")))
    with pytest.raises(UserError, match="ambiguous"):
        build(runs, plots=False, dataset="A")
    assert len(build(runs, plots=False, dataset="a1").sections) == 2


def test_cli_dataset_filter_errors_in_one_line(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    two_datasets_two_models(runs)
    proc = run_cli("--runs", str(runs), "--out", str(out), "--no-plots", "--dataset", "nope")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "matches no dataset" in errors[0] and f"B ({FP_B[:12]})" in errors[0]
    assert not out.exists()
    proc = run_cli("--runs", str(runs), "--out", str(out), "--no-plots", "--dataset", "B")
    assert proc.returncode == 0, proc.stderr
    assert {r["dataset"] for r in read_csv(out / "accuracy.csv")} == {"B"}


def test_plots_one_series_per_dataset_and_one_loss_panel_per_dataset(tmp_path):
    from stockpredict.report import plots

    runs = tmp_path / "runs"
    two_datasets_two_models(runs)
    figures = plots.figures(build(runs))
    skill = figures["skill"].axes[0]
    series = {line.get_label(): list(line.get_ydata()) for line in skill.get_lines()
              if not line.get_label().startswith("persistence")}
    assert sorted(series) == ["A", "B"]
    assert series["B"] == [pytest.approx(1 - 1.5e-4 / 2e-4)]
    assert sorted(series["A"]) == pytest.approx(sorted([1 - 1e-4 / 2e-4] * 4 + [1 - 0.5e-4 / 2e-4] * 2))
    panels = figures["test_loss"].axes
    assert [ax.get_title().rsplit(": ", 1)[1] for ax in panels] == ["A", "B"]
    b_values = {y for line in panels[1].get_lines() for y in line.get_ydata()}
    assert b_values == {1.5e-4, 2e-4}                               # B's MSE and its persistence MSE only
    speedup_labels = [line.get_label() for line in figures["speedup"].axes[0].get_lines()]
    assert "A, lstm_units=128: global batch 256" in speedup_labels and "B: global batch 256" in speedup_labels


def test_malformed_or_changing_key_fields_make_the_log_corrupt():
    bad = simple_run(1, [10.0], dataset_id={"name": "A"})
    with pytest.raises(report.SkipLog, match="corrupt: line 1 .*fingerprint"):
        parse(bad)
    events = [run_start(epochs=3, **keyed(FP_A, "A")), epoch(1, 50.0), run_end("preempted"),
              run_start(attempt=1, resumed_from_epoch=1, epochs=3, **keyed(FP_A, "A", LARGE)),
              epoch(2, 10.0), run_end()]
    with pytest.raises(report.SkipLog, match="changes model"):
        parse(events)


def test_identity_of_a_preprocessed_file_round_trips_through_run_start(tiny_dataset, tmp_path):
    # The real pipeline's file: fingerprinted from its recorded attributes, written the way the trainer
    # will write it (timing.make_event), and read back as the report's key.
    import shutil

    from stockpredict.common import identity, timing

    copy = tmp_path / "elsewhere.h5"
    shutil.copy(tiny_dataset, copy)
    dataset_id = identity.dataset_identity(tiny_dataset, name="tiny")
    assert identity.fingerprint_basis_of(tiny_dataset)["source"] == "attrs"
    assert identity.dataset_fingerprint(copy) == dataset_id["fingerprint"]
    fields = {**run_start(hardware=None), "dataset_id": dataset_id,
              "model": identity.model_identity(SMALL, 60, 2)}
    start = timing.make_event("run_start", **{k: v for k, v in fields.items()
                                              if k not in ("schema", "event")})
    run, _ = parse([start, epoch(1, 9.0), epoch(2, 10.0), run_end()])
    assert run.key.dataset.fingerprint == dataset_id["fingerprint"] and run.key.dataset.name == "tiny"
    windows = dataset_id["windows"]
    assert run.key.dataset.windows_text == f"{windows['train']}/{windows['val']}/{windows['test']}"
    assert dict(run.key.model) == SMALL and run.key.engine == "horovod"


# --- accuracy against the optimum and at scale (issue 11), dataset warnings (issue 13) ---------------

FP_SYN, FP_REAL, FP_RW = "c3" * 32, "d4" * 32, "e5" * 32
SYN_OPTIMUM = {"kalman_skill": 0.30, "window_skill": 0.28, "horizon": 5, "seq_len": 60}
PERSISTENCE_MSE = 2e-4  # run_end's persistence MSE: skill = 1 - mse / 2e-4


def mse_for(skill):
    return (1 - skill) * PERSISTENCE_MSE


def accuracy_runs(runs: Path) -> None:
    """Synthetic dataset "syn" (optimum known: Kalman 0.30, window 0.28): 1 rank at global batch 128
    (skill 0.27 = 0.9 x), 2 ranks at global batch 128 (0.24 = 0.8 x) and 2 ranks at 256 (0.21 = 0.7 x).
    Real dataset "real" (no optimum): 1 and 2 ranks at 128 (skill 0.05, 0.04). A random walk "rw"
    (optimum 0): 1 rank, skill -0.01."""
    syn = {**keyed(FP_SYN, "syn"), "optimum": SYN_OPTIMUM, "representation": "returns"}
    for run_id, ranks, global_batch, skill in (("syn-1", 1, 128, 0.27), ("syn-2", 2, 128, 0.24),
                                               ("syn-2-256", 2, 256, 0.21)):
        write_log(runs, run_id, simple_run(ranks, [10.0, 10.0], batch=global_batch // ranks, mode=None,
                                           global_batch=global_batch, mse=mse_for(skill),
                                           dataset_warnings=[], **syn))
    for run_id, ranks, skill in (("real-1", 1, 0.05), ("real-2", 2, 0.04)):
        write_log(runs, run_id, simple_run(ranks, [10.0, 10.0], batch=128 // ranks, mode=None,
                                           global_batch=128, mse=mse_for(skill), **keyed(FP_REAL, "real"),
                                           dataset_warnings=["AAA: times without a UTC offset were read "
                                                             "as America/New_York",
                                                             "BBB: the bars look end-labelled"]))
    write_log(runs, "rw-1", simple_run(1, [10.0, 10.0], batch=128, mode=None, mse=mse_for(-0.01),
                                       optimum={"kalman_skill": 0.0, "window_skill": 0.0},
                                       **keyed(FP_RW, "rw")))


def test_accuracy_table_sets_skill_against_the_optimum_or_says_it_is_unknown(tmp_path):
    runs = tmp_path / "runs"
    accuracy_runs(runs)
    built = build(runs, plots=False)
    syn = {(r["ranks"], r["global_batch_size"]): r for r in section(built, "syn").accuracy}
    assert syn[(1, 128)]["skill"] == pytest.approx(0.27)
    assert syn[(1, 128)]["kalman_skill"] == 0.30 and syn[(1, 128)]["window_skill"] == 0.28
    assert syn[(1, 128)]["skill_of_optimum"] == pytest.approx(0.9)
    assert syn[(2, 128)]["skill_of_optimum"] == pytest.approx(0.8)
    assert syn[(2, 256)]["skill_of_optimum"] == pytest.approx(0.7)
    [real_1, real_2] = section(built, "real").accuracy
    for row in (real_1, real_2):
        assert (row["kalman_skill"], row["skill_of_optimum"], row["window_skill"]) == (None, None, None)
    assert real_2["skill"] == pytest.approx(0.04)
    [rw] = section(built, "rw").accuracy
    # Optimum 0 is known (nothing to learn), but a ratio to it is not defined.
    assert (rw["kalman_skill"], rw["skill_of_optimum"]) == (0.0, None)

    markdown = report.render_markdown(built, {})
    syn_part = markdown.split("## syn:")[1].split("\n## ")[0]
    assert "- 1 rank(s), global batch 128, LR 0.0001, 3 epochs: skill 0.270 of a possible 0.300 (0.900 x); " \
           "window-limited optimum 0.280." in syn_part
    assert "skill 0.210 of a possible 0.300 (0.700 x)" in syn_part
    real_part = markdown.split("## real:")[1].split("\n## ")[0]
    assert "**Optimum: unknown.**" in real_part and "of a possible" not in real_part
    assert "| unknown |  | unknown |" in real_part                  # Kalman, skill / optimum, window cells
    rw_part = markdown.split("## rw:")[1].split("\n## ")[0]
    assert "1 rank(s), global batch 128, LR 0.0001, 3 epochs: skill -0.0100; the optimum is 0 " in rw_part


def test_accuracy_csv_appends_the_optimum_columns_after_the_key_columns(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    accuracy_runs(runs)
    proc = run_cli("--runs", str(runs), "--out", str(out), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    header = (out / "accuracy.csv").read_text().splitlines()[0].split(",")
    # Extended, never renamed or reordered: the original columns, the key columns, then the new ones.
    assert header == [*report.ACCURACY_COLUMNS, *report.KEY_COLUMNS, "kalman_skill", "skill_of_optimum",
                      "window_skill"]
    rows = {(r["dataset"], r["ranks"], r["global_batch_size"]): r for r in read_csv(out / "accuracy.csv")}
    assert float(rows[("syn", "2", "128")]["skill_of_optimum"]) == pytest.approx(0.8)
    assert float(rows[("syn", "2", "128")]["kalman_skill"]) == 0.30
    assert rows[("real", "1", "128")]["kalman_skill"] == "" and rows[("real", "1", "128")]["skill"] != ""
    rw = rows[("rw", "1", "128")]
    assert rw["kalman_skill"] == "0.0" and rw["skill_of_optimum"] == ""


def test_accuracy_at_scale_plot_series_by_dataset_and_optimum_only_where_known(tmp_path):
    from stockpredict.report import plots

    runs = tmp_path / "runs"
    accuracy_runs(runs)
    built = build(runs)
    per_key = [(s.label, s.accuracy) for s in built.sections]
    by_ranks = plots.accuracy_scale_series(per_key, "skill", "ranks")
    assert set(by_ranks) == {"syn: global batch 128", "syn: global batch 256", "real: global batch 128",
                             "rw: global batch 128"}
    assert by_ranks["syn: global batch 128"] == [(1, pytest.approx(0.27)), (2, pytest.approx(0.24))]
    assert by_ranks["real: global batch 128"] == [(1, pytest.approx(0.05)), (2, pytest.approx(0.04))]
    by_batch = plots.accuracy_scale_series(per_key, "skill_of_optimum", "global_batch_size")
    # Only the dataset with a known, non-zero optimum has skill / optimum.
    assert by_batch == {"syn: 1 rank(s)": [(128, pytest.approx(0.9))],
                        "syn: 2 rank(s)": [(128, pytest.approx(0.8)), (256, pytest.approx(0.7))]}
    fig = plots.figures(built)["accuracy_scale"]
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["Skill vs ranks", "Skill vs global batch",
                                               "Skill / optimum vs ranks", "Skill / optimum vs global batch"]
    drawn = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in axes[2].get_lines()
             if line.get_label() != "the optimum"}
    assert drawn == {"syn: global batch 128": [(1, pytest.approx(0.9)), (2, pytest.approx(0.8))],
                     "syn: global batch 256": [(2, pytest.approx(0.7))]}

    real_only = build(runs, dataset="real")                    # real data alone: no skill / optimum at all
    bottom = plots.figures(real_only)["accuracy_scale"].axes[2]
    assert not bottom.get_lines() and "optimum unknown" in bottom.texts[0].get_text()


def test_header_lists_each_datasets_preprocessing_warnings(tmp_path):
    runs = tmp_path / "runs"
    accuracy_runs(runs)
    built = build(runs, plots=False)
    assert section(built, "real").runs[0].dataset_warnings == (
        "AAA: times without a UTC offset were read as America/New_York", "BBB: the bars look end-labelled")
    header = report.render_markdown(built, {}).split("\n## ")[0]
    assert ("- **Dataset warnings** (from preprocessing, as the runs recorded them):\n"
            "  - real:\n"
            "    - AAA: times without a UTC offset were read as America/New_York\n"
            "    - BBB: the bars look end-labelled\n") in header
    assert "  - syn: none." in header
    assert "  - rw: not recorded" in header                      # a log without the field


@pytest.mark.parametrize("field, value", [
    ("optimum", {"window_skill": 0.2}), ("optimum", {"kalman_skill": "0.3"}), ("optimum", 0.3),
    ("dataset_warnings", "one string"), ("dataset_warnings", [1, 2]),
])
def test_malformed_optimum_or_dataset_warnings_make_the_log_corrupt(field, value):
    with pytest.raises(report.SkipLog, match=f"corrupt: line 1 has {field}="):
        parse(simple_run(1, [10.0], **{field: value}))
    run, _ = parse(simple_run(1, [10.0], **{field: None}))     # null = unknown / not recorded
    assert run.optimum is None and run.dataset_warnings is None


def test_environment_shows_the_toolkit_version_and_commit_and_old_logs_still_read(tmp_path):
    """Provenance (run_start `toolkit`, optional within schema 1): the environment table names the
    code of each run; a requeued attempt on other code is listed too; a log from before the field reads."""
    runs = tmp_path / "runs"
    clean = {"version": "0.1.0", "commit": "a" * 40, "dirty": False}
    edited = {"version": "0.1.0", "commit": "b" * 40, "dirty": True}
    write_log(runs, "new", simple_run(1, [10.0], toolkit=clean))
    first, *rest = simple_run(2, [6.0], toolkit=clean)
    requeued = [first, epoch(1, 99.0, 64), run_end("preempted"),
                run_start(ranks=2, nodes=2, epochs=2, attempt=1, resumed_from_epoch=1, toolkit=edited),
                epoch(2, 6.0, 64), run_end()]
    write_log(runs, "requeued", requeued)
    write_log(runs, "old", simple_run(1, [10.0], mse=2e-4))            # no toolkit field
    write_log(runs, "unknown", simple_run(1, [10.0], toolkit={"version": "0.1.0", "commit": None,
                                                                 "dirty": None}))
    env = {row["toolkit"]: row["runs"] for row in build(runs).environment}
    assert env == {"0.1.0 aaaaaaaaaaaa": 1, f"0.1.0 aaaaaaaaaaaa, 0.1.0 {'b' * 12}+dirty": 1, "": 1,
                   "0.1.0 ?": 1}
    run, _ = report.parse_timing_log((runs / "requeued" / "timing.jsonl").read_text(), run_id="requeued")
    assert run.toolkit == (clean, edited) and run.attempts == 2


def test_make_event_checks_the_toolkit_object():
    from stockpredict.common import timing
    fields = {k: v for k, v in run_start().items() if k not in ("schema", "event")}
    fields.update(time="t", hardware=None, versions={})
    ok = timing.make_event("run_start", **fields, toolkit={"version": "0.1.0", "commit": None, "dirty": None})
    assert ok["toolkit"]["version"] == "0.1.0"
    with pytest.raises(ValueError, match="toolkit must be a dict"):
        timing.make_event("run_start", **fields, toolkit={"version": "0.1.0"})
