"""`make demo` at a tiny size on the local Slurm cluster: data -> HDF5 -> 1- and 2-node jobs -> report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.cluster
def test_demo_runs_the_study_end_to_end(slurm_cluster, tmp_path):
    data_dir, results = tmp_path / "data", tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "stockpredict.demo", "--tickers", "3", "--days", "10", "--epochs", "2",
         "--nodes-list", "1 2", "--data-dir", str(data_dir), "--results", str(results)],
        capture_output=True, text=True, env=slurm_cluster.env, cwd=REPO, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Submitted batch job" in proc.stdout          # it went through Slurm, not the fallback
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
    assert len(list((results / "runs").glob("*/model.keras"))) == 2
    # Honest local scaling (docs/scaling.md): the two virtual nodes' ranks own different cores.
    starts = [json.loads(p.read_text().splitlines()[0]) for p in (results / "runs").glob("*/timing.jsonl")]
    (two_nodes,) = [s for s in starts if s["ranks"] == 2]
    first, second = (set(cpus) for cpus in two_nodes["hardware"]["cpu_affinity_by_rank"])
    assert first and second and not first & second


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
    from stockpredict.demo import choose_node_counts

    counts, why = choose_node_counts(requested, cpus)
    assert counts == expected
    assert f"{cpus} core(s)" in why
    assert ("share cores" in why) == (max(requested or (1, 2, 4)) > cpus)


def test_cores_per_node_reads_the_local_clusters_node_line(tmp_path):
    from stockpredict.demo import cores_per_node

    conf = tmp_path / "slurm.conf"
    conf.write_text("CpuFreqDef=x CPUs=9\nNodeName=node[1-2] NodeHostname=h Port=[1-2] CPUs=3 Gres=gpu:1\n")
    assert cores_per_node(conf) == 3
    assert cores_per_node(tmp_path / "missing.conf") is None
