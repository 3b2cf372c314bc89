"""Writers racing on one results directory, with real concurrent processes: several `make report`s
(`python -m stockpredict.report`, what make report runs) at once, and reports while a job appends to
its timing.jsonl, tearing lines mid-write. Every report succeeds, and every read of an output, at any
moment, is a whole file: outputs are replaced atomically (a temporary file in the same directory, then
os.replace), so a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_report import run_end, simple_run, strong_and_weak_runs, write_log

from stockpredict import report

REPO = Path(__file__).resolve().parents[2]


def report_command(runs: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "stockpredict.report", "--runs", str(runs), "--out", str(out)]


def outputs(out: Path) -> dict[str, bytes]:
    """The report's files in `out` (scaling.md, CSVs, PNGs) by name; temporary files are not outputs."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.slow  # 7 report processes with plots: 5-11 s on the shared 2-core VM (make test runs it)
def test_concurrent_reports_on_one_results_directory_always_leave_whole_files(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    strong_and_weak_runs(runs)
    first = subprocess.run(report_command(runs, out), capture_output=True, text=True, cwd=REPO, timeout=120)
    assert first.returncode == 0, first.stderr
    reference = outputs(out)  # deterministic: the same logs give the same bytes, plots included
    assert {"scaling.md", "strong_scaling.csv", "speedup.png"} <= set(reference)

    reads = 0
    for _ in range(2):  # rounds of 3 reports started together, while this process reads every output
        procs = [subprocess.Popen(report_command(runs, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=REPO) for _ in range(3)]
        while any(p.poll() is None for p in procs):
            for name, expected in reference.items():
                try:
                    data = (out / name).read_bytes()
                except FileNotFoundError:  # never: os.replace swaps names, it never removes one
                    raise AssertionError(f"{name} vanished while a report replaced it") from None
                assert data == expected, f"a reader saw a partial {name} ({len(data)} of {len(expected)})"
                reads += 1
            time.sleep(0.01)  # leave the cores to the reports
        for proc in procs:
            _, stderr = proc.communicate()
            assert proc.returncode == 0, stderr
            assert "Traceback" not in stderr
        assert outputs(out) == reference
        assert not list(out.glob(".*.tmp")), "a temporary file was left behind"
    assert reads > 0


def _append_slowly(path: Path, lines: list[str], pause: float) -> str:
    """Python source of a process appending `lines` to `path` the way a job does, but each line in two
    writes with a pause between, so readers meet a torn last line."""
    return f"""
import os, time
lines = {lines!r}
for line in lines:
    data = (line + "\\n").encode()
    fd = os.open({str(path)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data[: len(data) // 2])
        time.sleep({pause})
        os.write(fd, data[len(data) // 2:])
    finally:
        os.close(fd)
    time.sleep({pause})
"""


def test_a_report_while_a_job_appends_to_its_timing_log_never_fails_or_tears_an_output(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    strong_and_weak_runs(runs)  # finished runs, so every report has something to show
    growing = runs / "zz-running" / "timing.jsonl"
    growing.parent.mkdir()
    events = simple_run(2, [10.0] * 12)
    lines = [json.dumps(e) for e in events[:-1]] + [json.dumps(run_end())]
    writer = subprocess.Popen([sys.executable, "-c", _append_slowly(growing, lines, 0.02)])
    config = report.ReportConfig(runs_dir=runs, out_dir=out, plots=False)
    seen = set()
    try:
        while writer.poll() is None:
            loaded, written = report.make_report(config)  # in this process, against the writer process
            skipped = {Path(s.path).parent.name: s.reason for s in report.load_runs(runs).skipped}
            seen.add("skipped" if "zz-running" in skipped else "used")
            if "zz-running" in skipped:
                assert skipped["zz-running"].startswith(("partial", "missing")), skipped["zz-running"]
            markdown = (out / "scaling.md").read_text()
            assert markdown.startswith("#") and markdown.endswith("\n")
            for path in written[1:]:
                rows = list(csv.reader(io.StringIO(path.read_text())))
                assert rows and all(len(row) == len(rows[0]) for row in rows), path
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    report.make_report(config)  # the job has finished: its run counts now
    assert "zz-running" in {run.run_id for run in report.load_runs(runs).runs}
    assert "skipped" in seen, "no report ran while the log was incomplete"
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("cut", [1, 14, 25, 63, 80, -2])
def test_a_torn_line_then_the_next_append_keeps_the_run(tmp_path, cut):
    """A job killed mid-write leaves a torn line; the next append (the batch script's run_end, or a
    requeued attempt) starts a fresh line after it. The report drops the fragment and keeps the run."""
    from stockpredict.common import timing

    events = simple_run(2, [10.0, 10.0])
    torn = json.dumps(events[-2])[:cut]
    path = write_log(tmp_path / "runs", "r1", events[:-1], tail=torn)
    timing.append_event(path, run_end())
    text = path.read_text()
    assert torn + "\n" in text  # the fragment stands alone on its line
    run, notes = report.parse_timing_log(text, run_id="r1")
    assert len(run.epochs) == 3 and run.test is not None
    assert any("torn fragment" in note for note in notes)


@pytest.mark.parametrize("damage", ['{"schema": 1, "event": x}', "garbage", '{"a": 1}}'])
def test_a_damaged_middle_line_that_is_not_a_cut_write_still_makes_the_log_corrupt(damage):
    events = simple_run(2, [10.0])
    text = "".join(json.dumps(e) + "\n" for e in events[:2]) + damage + "\n" + json.dumps(events[2]) + "\n"
    with pytest.raises(report.SkipLog, match="corrupt: line 3"):
        report.parse_timing_log(text, run_id="r1")


@pytest.mark.slow  # 2 make processes, each a report with plots
def test_two_make_reports_at_once_both_succeed_with_the_same_outputs(tmp_path):
    """`make report` itself (what a user types in two terminals), on one RESULTS directory at once."""
    results = tmp_path / "results"
    strong_and_weak_runs(results / "runs")
    make = ["make", "--no-print-directory", "-C", str(REPO), f"VENV={Path(sys.executable).parent.parent}",
            "SETUP_DONE=", "report", f"RESULTS={results}"]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    procs = [subprocess.Popen(make, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert f"{results}/scaling.md" in stdout + stderr, stdout + stderr
    together = outputs(results)
    alone = subprocess.run(make, capture_output=True, text=True, env=env, timeout=300)
    assert alone.returncode == 0, alone.stderr
    assert together == outputs(results) and "scaling.md" in together
    assert not list(results.glob(".*.tmp"))
