"""`make demo` at a tiny size on the local Slurm cluster: data -> HDF5 -> 1- and 2-node jobs -> report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from conftest import REPO
from stockpredict.common import rundir


@pytest.mark.cluster
def test_demo_runs_the_study_end_to_end(slurm_cluster, tmp_path):
    data_dir, results = tmp_path / "data", tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "stockpredict.demo", "--tickers", "3", "--days", "10", "--epochs", "2",
         "--nodes-list", "1 2", "--data-dir", str(data_dir), "--results", str(results),
         "--interleaved-rounds", "2", "--interleaved-steps", "5"],
        capture_output=True, text=True, env=slurm_cluster.env, cwd=REPO, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Submitted batch job" in proc.stdout          # it went through Slurm, not the fallback
    assert "demo [cluster] the local Slurm cluster stays up for your own make submit; make cluster-down" \
        in proc.stdout                                   # a later make test elsewhere would meet its ports
    assert (data_dir / "sequences.h5").is_file()

    with open(results / "strong_scaling.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(r["ranks"]) for r in rows) == [1, 2]
    assert {int(r["global_batch_size"]) for r in rows} == {256}
    assert all(float(r["seconds_per_epoch"]) > 0 for r in rows)
    markdown = (results / "scaling.md").read_text()
    assert "## Strong scaling" in markdown and "Skipped logs:** none" in markdown
    for png in ("speedup.png", "efficiency.png", "seconds_per_epoch_vs_batch.png", "test_loss_vs_batch.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The strong pair, plus the short 1-rank run at the second batch size (the compute fit's second point).
    assert len(list((results / "runs").glob("*/model.keras"))) == 3
    starts = [json.loads(p.read_text().splitlines()[0]) for p in (results / "runs").glob("*/timing.jsonl")]
    one_rank = sorted(s["batch_size_per_rank"] for s in starts
                      if s["ranks"] == 1 and s.get("kind") != "allreduce")
    assert one_rank == [128, 256]
    (short,) = [s for s in starts if s["ranks"] == 1 and s["batch_size_per_rank"] == 128]
    assert short["config"]["max_steps"] == 50 and short["mode"] is None
    # ... and the 2-node allreduce benchmark, recorded like a run.
    (bench,) = [s for s in starts if s.get("kind") == "allreduce"]
    assert (bench["ranks"], bench["nodes"]) == (2, 2)
    # The scaling model: the held-out check (the 2-node run predicted without it) is in scaling.md and is
    # what the demo prints last; the prediction table exists.
    assert "**Held-out check.** Refitted without the 2-rank runs" in markdown
    tail = proc.stdout.strip().splitlines()
    held = tail.index(next(line for line in tail if line.startswith("**Held-out check.**")))
    assert tail[held] in markdown.splitlines() and tail[held + 3].startswith("| ") and len(tail) == held + 4
    with open(results / "scaling_prediction.csv", newline="") as handle:
        predicted = list(csv.DictReader(handle))
    assert {int(r["ranks"]) for r in predicted if r["mode"] == "strong"} >= {1, 2, 4, 256}
    # Honest local scaling (docs/scaling.md): the two virtual nodes' ranks own different cores.
    (two_nodes,) = [s for s in starts if s["ranks"] == 2 and s.get("kind") != "allreduce"]
    first, second = (set(cpus) for cpus in two_nodes["hardware"]["cpu_affinity_by_rank"])
    assert first and second and not first & second
    # ... and a rank waiting in MPI yields its one core to the other threads (HorovodEngine.init).
    assert two_nodes["hardware"]["mpi_yield_when_idle"] == "1"
    # 1 rank against 2 nodes inside one srun step (stockpredict/job/interleaved.py): every round printed as it
    # ended, and the rounds with their medians beside scaling.md.
    interleaved = json.loads((results / "interleaved.json").read_text())
    assert (interleaved["ranks"], interleaved["global_batch"], interleaved["steps"]) == (2, 256, 5)
    assert len(interleaved["one_rank_ms"]) == len(interleaved["n_rank_ms"]) == 2
    assert all(t > 0 for t in interleaved["one_rank_ms"] + interleaved["n_rank_ms"])
    assert interleaved["speedup"] > 0
    rounds = [line for line in tail if line.startswith("demo [interleaved] round ")]
    assert [line.split()[3] for line in rounds] == ["1/2:", "2/2:"]
    assert any(line.startswith("demo [interleaved] speedup ") for line in tail)


def test_demo_rejects_a_batch_that_does_not_divide(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "stockpredict.demo", "--global-batch", "100", "--nodes-list", "1 3",
         "--data-dir", str(tmp_path / "d"), "--results", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: global batch 100 does not divide over 3 nodes"]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("requested, cpus, expected", [
    (None, 2, (1, 2)), (None, 3, (1, 2)), (None, 4, (1, 2, 4)), (None, 1, (1,)),
    ((1, 4), 2, (1, 4)),                      # asked for explicitly: kept, with a warning
])
def test_the_demo_sweeps_node_counts_this_machine_has_cores_for(requested, cpus, expected):
    from stockpredict.control.demo import choose_node_counts

    counts, why = choose_node_counts(requested, cpus)
    assert counts == expected
    assert f"{cpus} core(s)" in why
    assert ("share cores" in why) == (max(requested or (1, 2, 4)) > cpus)


def test_cores_per_node_reads_the_local_clusters_node_line(tmp_path):
    from stockpredict.control.demo import cores_per_node

    conf = tmp_path / "slurm.conf"
    conf.write_text("CpuFreqDef=x CPUs=9\nNodeName=node[1-2] NodeHostname=h Port=[1-2] CPUs=3 Gres=gpu:1\n")
    assert cores_per_node(conf) == 3
    assert cores_per_node(tmp_path / "missing.conf") is None


def test_held_out_lines_come_from_a_real_reports_scaling_md(tmp_path):
    from test_report_scaling import model_runs

    from stockpredict import report
    from stockpredict.control.demo import held_out_lines

    runs, out = tmp_path / "runs", tmp_path / "results"
    model_runs(runs, ranks=(1, 2, 4))
    assert report.main(["--runs", str(runs), "--out", str(out), "--no-plots"]) == 0
    lines = held_out_lines((out / "scaling.md").read_text())
    assert lines[0].startswith("**Held-out check.** Refitted without the 4-rank runs")
    assert lines[1].startswith("| run | ranks |") and lines[2].startswith("|---")
    assert [line.split(" | ")[0] for line in lines[3:]] == ["| strong-n4"]


def test_held_out_lines_pick_the_datasets_section():
    from stockpredict.control.demo import held_out_lines

    def section(prefix: str, ranks: int) -> str:
        return (f"## d: 1/1/1 windows, fingerprint {prefix}\n\n### Scaling model\n\n**Held-out check.** "
                f"Refitted without the {ranks}-rank runs, ...\n\n| run |\n|---|\n| r{ranks} |\n\nmore\n")
    markdown = "# Report\n\n" + section("aaaa", 4) + "\n" + section("bbbb", 2)
    assert held_out_lines(markdown, "bbbb") == [
        "**Held-out check.** Refitted without the 2-rank runs, ...", "| run |", "|---|", "| r2 |"]
    assert held_out_lines(markdown, "aaaa")[-1] == "| r4 |"
    assert held_out_lines(markdown, "cccc") == [] and held_out_lines("# nothing\n") == []


def test_second_batch_is_the_two_node_runs_per_rank_batch():
    from stockpredict.control.demo import second_batch

    assert (second_batch(256), second_batch(100), second_batch(1)) == (128, 50, 2)


def test_the_interleaved_step_runs_only_with_2_nodes_and_its_failure_does_not_stop_the_demo(
        monkeypatch, tmp_path, capsys):
    from stockpredict.common.errors import UserError
    from stockpredict.control import demo
    from stockpredict.control import interleaved_launch as interleaved

    config = demo.DemoConfig(nodes_list=(1, 3), results=str(tmp_path))
    assert demo.interleaved_on_slurm(config, tmp_path / "s.h5", 1) is None
    assert "demo [interleaved] skipped: the sweep has no 2-node run" in capsys.readouterr().out

    def fail(cmd, on_line, timeout_s):
        on_line("round 1/15: ...")
        raise UserError("the interleaved benchmark failed (srun exit 1): boom")

    monkeypatch.setattr(interleaved, "follow", fail)
    config = demo.DemoConfig(nodes_list=(1, 2), results=str(tmp_path))
    assert demo.interleaved_on_slurm(config, tmp_path / "s.h5", 1) is None
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == "demo [interleaved] round 1/15: ..."
    assert out[-1] == ("demo [interleaved] FAILED, the report follows without it: the interleaved benchmark "
                       "failed (srun exit 1): boom")
    assert not (tmp_path / rundir.INTERLEAVED_SUMMARY).exists()
