"""The Makefile hands user values to the programs byte for byte and never executes any part of them.

make runs without any setup step: VENV= the venv running these tests and SETUP_DONE= (empty), which the
Makefile documents as "use VENV as it is". No cluster needed: submit is a dry run.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

MAKE = ["make", "--no-print-directory", "-C", str(REPO), f"VENV={Path(sys.executable).parent.parent}",
        "SETUP_DONE="]


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MAKE, *args], capture_output=True, text=True, timeout=300)


def _hostile(canary: Path, double_quote: bool = True) -> str:
    """A path component chain that runs `touch canary` if any shell or make ever evaluates it."""
    text = (f"my dir;touch {canary};$(touch {canary})`touch {canary}`$(shell touch {canary})"
            f"|touch {canary}&&touch {canary} $$HOME #x 'q")
    return text + '"' if double_quote else text


def _echoed(stdout: str, program: str) -> list[str]:
    """The argv of the command line make printed for `program` (the Makefile prints it shell-quoted)."""
    (line,) = [line for line in stdout.splitlines() if f" -m {program} " in line]
    return shlex.split(line)


@pytest.fixture
def canary(tmp_path) -> Path:
    path = tmp_path / "canary"
    yield path
    assert not path.exists(), "a value from the make command line was executed"


def test_make_data_and_preprocess_take_hostile_paths_as_they_are(tmp_path, canary):
    raw = tmp_path / "in" / _hostile(canary) / "raw"
    out = tmp_path / "out" / _hostile(canary) / "seq.h5"
    out.parent.mkdir(parents=True)
    proc = _make("data", f"RAW={raw}", "TICKERS=2", "DAYS=2", "SEED=3")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in raw.iterdir())[-1] == "optimum.json"  # written beside the CSVs
    assert sorted(p.suffix for p in raw.iterdir()) == [".csv", ".csv", ".json"]
    proc = _make("preprocess", f"RAW={raw}", f"OUT={out}",
                 "PREPROCESS_ARGS=--workers 1 --tz 'America/New_York'")
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.stat().st_size > 0
    argv = _echoed(proc.stdout, "preprocess")
    assert argv[1:] == ["-m", "preprocess", f"--raw={raw}", f"--out={out}", "--workers", "1", "--tz",
                        "America/New_York"]


def test_make_submit_dry_run_renders_hostile_paths_quoted_without_the_data_file(tmp_path, canary):
    data = tmp_path / "data" / _hostile(canary) / "seq.h5"          # does not exist: a dry run may say so
    results = tmp_path / "res" / _hostile(canary, double_quote=False)  # #SBATCH lines cannot hold a '"'
    proc = _make("submit", "DRY_RUN=1", f"DATA={data}", f"RESULTS={results}", "NODES=2", "BATCH=16")
    assert proc.returncode == 0, proc.stderr
    assert f"data file {data} not found" in proc.stderr
    (launch,) = [line for line in proc.stdout.splitlines() if " -m stockpredict.train " in line]
    argv = shlex.split(launch.rstrip(" &"))
    (kept,) = (results / "dry-runs").iterdir()
    assert argv[argv.index("--data") + 1] == str(data)
    assert argv[argv.index("--run-dir") + 1] == str(results / "runs" / kept.name)
    assert argv[argv.index("--batch-size") + 1] == "16" and "--nodes=2" in proc.stdout
    assert not (results / "runs").exists()
    bash = subprocess.run(["bash", "-n", str(kept / "job.sbatch")], capture_output=True, text=True)
    assert bash.returncode == 0, bash.stderr


def test_make_submit_timeline_records_a_bounded_horovod_timeline(tmp_path):
    results = tmp_path / "res"
    plain = _make("submit", "DRY_RUN=1", f"DATA={tmp_path / 'seq.h5'}", f"RESULTS={results}", "NODES=2")
    timed = _make("submit", "DRY_RUN=1", f"DATA={tmp_path / 'seq.h5'}", f"RESULTS={results}", "NODES=2",
                  "TIMELINE=1", "TIMELINE_STEPS=50")
    assert plain.returncode == 0 and timed.returncode == 0, plain.stderr + timed.stderr
    assert "HOROVOD_TIMELINE" not in plain.stdout and "--max-steps" not in plain.stdout
    assert 'export HOROVOD_TIMELINE="$RUN_DIR"/timeline.json' in timed.stdout
    (launch,) = [line for line in timed.stdout.splitlines() if " -m stockpredict.train " in line]
    argv = shlex.split(launch.rstrip(" &"))
    assert argv[argv.index("--max-steps") + 1] == "50"


def test_make_allreduce_bench_dry_run_takes_hostile_paths_and_defaults_to_two_nodes(tmp_path, canary):
    data = tmp_path / "data" / _hostile(canary) / "seq.h5"
    results = tmp_path / "res" / _hostile(canary, double_quote=False)
    proc = _make("allreduce-bench", "DRY_RUN=1", f"DATA={data}", f"RESULTS={results}", "ITERATIONS=30")
    assert proc.returncode == 0, proc.stderr
    (launch,) = [line for line in proc.stdout.splitlines() if " -m stockpredict.allreduce_bench " in line]
    argv = shlex.split(launch.rstrip(" &"))
    (kept,) = (results / "dry-runs").iterdir()
    assert argv[argv.index("--data") + 1] == str(data) and argv[argv.index("--iterations") + 1] == "30"
    assert argv[argv.index("--run-dir") + 1] == str(results / "runs" / kept.name)
    assert "#SBATCH --nodes=2" in proc.stdout and kept.name.endswith("-allreduce-n2-g0")
    bash = subprocess.run(["bash", "-n", str(kept / "job.sbatch")], capture_output=True, text=True)
    assert bash.returncode == 0, bash.stderr


def test_make_report_takes_a_hostile_results_path(tmp_path, canary):
    results = tmp_path / "res" / _hostile(canary)
    (results / "runs").mkdir(parents=True)
    dataset = _hostile(canary, double_quote=False)
    proc = _make("report", f"RESULTS={results}", f"DATASET={dataset}", "NETWORK=ib-hdr", "PRICE=2.5")
    # No logs yet: the one-line error names the directory exactly as given.
    assert proc.returncode != 0
    assert f"error: no timing logs in {results / 'runs'} (expected" in proc.stderr
    argv = _echoed(proc.stdout, "stockpredict.report")
    assert argv[1:] == ["-m", "stockpredict.report", f"--runs={results}/runs", f"--out={results}",
                        f"--dataset={dataset}", "--network=ib-hdr", "--price-per-hour=2.5",
                        "--price-unit=gpu",
                        "--target-epochs=", "--profile="]


def test_extra_arguments_split_like_shell_words_and_a_stray_quote_fails(tmp_path, canary):
    proc = _make("preprocess", f"RAW={tmp_path}/none", f"OUT={tmp_path}/x.h5",
                 f"PREPROCESS_ARGS=--tz 'a b' \"$(touch {canary})\"")
    argv = _echoed(proc.stdout, "preprocess")
    assert argv[-3:] == ["--tz", "a b", f"$(touch {canary})"]
    assert proc.returncode != 0 and "error:" in proc.stderr   # the preprocessor rejects the made-up input
    proc = _make("preprocess", f"RAW={tmp_path}/none", f"OUT={tmp_path}/x.h5", "PREPROCESS_ARGS=--tz 'a")
    assert proc.returncode != 0 and "unmatched single quote" in proc.stderr
    assert " -m preprocess " not in proc.stdout


def test_every_make_target_is_in_make_help_and_the_readme_lists_exactly_make_help():
    """Each target the Makefile declares .PHONY has a `## ` line, so `make help` lists it, and the
    README's "Make targets" block is `make help`'s output, byte for byte (issue 27: it had lost
    allreduce-bench once)."""
    makefile = (REPO / "Makefile").read_text()
    phony = {name for line in makefile.splitlines() if line.startswith(".PHONY:")
             for name in line.split(":", 1)[1].split()}
    proc = _make("help")
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines()]
    assert phony and sorted(phony - set(listed)) == [], "targets without a `## ` help line"
    assert len(listed) == len(set(listed))
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Make targets\n\n```\n", 1)[1].split("```", 1)[0]
    assert block == proc.stdout, "README's target list differs from `make help`: paste its output"
