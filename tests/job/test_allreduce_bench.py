"""The allreduce microbenchmark: its model shapes, two real ranks under horovodrun (Gloo) writing a timing
log the report reads as an allreduce point, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import write_log
from test_report_scaling import GRADIENT_BYTES, model_runs

from conftest import REPO
from stockpredict import report
from stockpredict.common import benchmarks, rundir, timing
from stockpredict.job import allreduce_bench

HOROVODRUN = Path(sys.executable).parent / "horovodrun"


def test_gradient_shapes_are_the_keras_models():
    from stockpredict.job.model import build_model

    for features, units, dense in ((2, 50, 32), (5, 16, 8)):
        model = build_model(60, features, lstm_units=units, dense_units=dense)
        assert benchmarks.gradient_shapes(features, units, dense) == [
            tuple(v.shape) for v in model.trainable_variables]
        assert benchmarks.gradient_bytes(features, units, dense) == 4 * model.count_params()
    assert benchmarks.gradient_bytes(2) == GRADIENT_BYTES


def test_two_ranks_under_horovodrun_record_a_run_the_report_fits(tmp_path):
    run = tmp_path / "runs" / "allreduce-n2"
    cmd = [str(HOROVODRUN), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-m",
           "stockpredict.allreduce_bench", "--run-dir", str(run), "--iterations", "20", "--epochs", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = timing.read_events(run / rundir.TIMING_LOG)
    assert [e["event"] for e in events] == ["run_start", "epoch", "epoch", "epoch", "run_end"]
    start = events[0]
    assert (start["kind"], start["gradient_bytes"], start["ranks"], start["config"]["tensors"]) == (
        "allreduce", GRADIENT_BYTES, 2, 7)
    assert all(e["steps"] == 20 and e["train_seconds"] > 0 for e in events[1:4])
    # Written last: the done marker of `submit allreduce` jobs. Its times are the log's, per allreduce.

    summary = json.loads((run / rundir.ALLREDUCE_SUMMARY).read_text())
    assert (summary["ranks"], summary["gradient_bytes"], summary["iterations"]) == (2, GRADIENT_BYTES, 20)
    assert summary["ms_per_allreduce"] == pytest.approx([e["train_seconds"] / 20 * 1e3 for e in events[1:4]],
                                                        rel=1e-3)

    parsed, notes = report.parse_timing_log((run / rundir.TIMING_LOG).read_text(), run_id=run.name)
    assert notes == () and parsed.kind == "allreduce" and parsed.gradient_bytes == GRADIENT_BYTES
    # Beside hand-made 1- and 2-rank training runs of the same gradient size, the benchmark joins the fit.
    model_runs(tmp_path / "runs", ranks=(1, 2))
    built = report.build_report(report.load_runs(tmp_path / "runs"),
                                report.ReportConfig(runs_dir=tmp_path / "runs"))
    (section,) = built.sections
    assert section.scaling.benchmarks == ("allreduce-n2",)
    (bench,) = [p for p in section.scaling.points if p.kind == "allreduce"]
    timed = [e["train_seconds"] for e in events[2:4]]                  # epoch 1 is warm-up
    assert bench.seconds_per_epoch == pytest.approx(sum(timed) / 2) and bench.steps == 20
    assert section.scaling.analysis.held_out.ranks == 2


def test_bad_input_is_one_line_before_horovod_starts(tmp_path, capsys):
    run = tmp_path / "run"
    write_log(tmp_path, "run", [{"schema": 1}])
    assert allreduce_bench.main(["--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {run / rundir.TIMING_LOG} exists: give the benchmark a fresh run directory"]
    assert allreduce_bench.main(["--run-dir", str(tmp_path / "new"), "--iterations", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --iterations must be a positive integer, not 0"
    assert allreduce_bench.main(["--run-dir", str(tmp_path / "new"), "--single-buffer-bytes", "6"]) == 2
    assert "multiple of 4" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert json.loads((run / rundir.TIMING_LOG).read_text()) == {"schema": 1}   # left untouched
