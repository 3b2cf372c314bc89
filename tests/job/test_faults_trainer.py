"""The real trainer (one process, in-process) against damaged checkpoints and a disk that fills up while a
checkpoint is written (a tiny tmpfs mounted by the test; root only). The same on the local Slurm
cluster, with preemption by the `urgent` partition: tests/cluster/test_faults_slurm.py."""

from __future__ import annotations

import json

import pytest
from test_faults_units import fill, tmpfs
from test_train import derive, events, run_main

from stockpredict.common import rundir
from stockpredict.job import checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def short_dataset(tiny_dataset, tmp_path_factory):
    """The tiny dataset cut to 1,000 training windows: under a second per epoch at batch 64."""
    return derive(tiny_dataset, tmp_path_factory.mktemp("short") / "short.h5", train_rows=1000)


def test_zero_length_latest_checkpoint_falls_back_and_the_run_completes(short_dataset, tmp_path, caplog):
    run = tmp_path / "run"
    common = ["--data", short_dataset, "--run-dir", run, "--batch-size", "64", "--seed", "3"]
    assert run_main(*common, "--epochs", "2") == 0
    newest = checkpoints.list_checkpoints(run)[-1][2]
    assert newest.name == "ckpt-e0002-s0000000"
    (newest / "weights.data-00000-of-00001").write_bytes(b"")  # what a node crash can leave
    (run / "model.keras").unlink()
    assert run_main(*common, "--epochs", "3", "--resume") == 0
    warning = ("checkpoint ckpt-e0002-s0000000 is unreadable (weights.data-00000-of-00001 has 0 bytes, "
               "expected ")
    assert warning in (run / "train.log").read_text()
    starts = [e for e in events(run) if e["event"] == "run_start"]
    assert (starts[1]["resumed_from_epoch"], starts[1]["resumed_from_step"]) == (1, 0)
    assert [e["epoch"] for e in events(run) if e["event"] == "epoch"] == [1, 2, 2, 3]
    assert events(run)[-1]["status"] == "completed" and (run / "model.keras").exists()


def test_disk_full_during_a_checkpoint_is_one_line_and_the_previous_checkpoint_resumes(
        short_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--data", short_dataset, "--run-dir", run, "--batch-size", "64", "--seed", "3"]
    with tmpfs(run / "checkpoints", 1024):
        assert run_main(*common, "--epochs", "1") == 0
        log_before = (run / rundir.TIMING_LOG).read_text()
        fill(run / "checkpoints")
        capsys.readouterr()
        assert run_main(*common, "--epochs", "2", "--resume") == 2
        err = capsys.readouterr().err.strip().splitlines()
        target = run / "checkpoints" / "ckpt-e0002-s0000000"
        assert err[-1] == (f"error: cannot write {target}: No space left on device (ENOSPC); free space (or "
                           "quota) there and rerun")
        # The log is whole (the earlier attempt's lines unchanged, no torn line); the checkpoint is intact.
        log_after = (run / rundir.TIMING_LOG).read_text()
        assert log_after.startswith(log_before) and all(json.loads(line) for line in log_after.splitlines())
        names = [d.name for d in (run / "checkpoints").iterdir()]
        assert sorted(names) == ["ckpt-e0001-s0000000", "filler"]
        assert checkpoints.read_state(run / "checkpoints" / "ckpt-e0001-s0000000")["epochs_done"] == 1
        (run / "checkpoints" / "filler").unlink()
        assert run_main(*common, "--epochs", "2", "--resume") == 0
    # The failed attempt logged no epoch 2 (its checkpoint comes before the epoch event): each epoch once.
    assert [e["epoch"] for e in events(run) if e["event"] == "epoch"] == [1, 2]
    assert events(run)[-1]["status"] == "completed"


@pytest.mark.parametrize("leave_bytes", [0, 4096], ids=["no-room-for-the-file", "full-after-a-page"])
def test_a_full_disk_under_the_tensorboard_events_is_one_warning_and_the_run_completes(
        short_dataset, tmp_path, leave_bytes):
    run = tmp_path / "run"
    with tmpfs(run / "tensorboard", 64):
        fill(run / "tensorboard", leave_bytes)  # 4096: the event file gets one page, then the disk is full
        assert run_main("--data", short_dataset, "--run-dir", run, "--batch-size", "64", "--epochs", "3",
                        "--tensorboard-steps", "1") == 0
        warnings = [line for line in (run / "train.log").read_text().splitlines() if "TensorBoard" in line]
        assert len(warnings) == 1, warnings
        assert warnings[0].endswith("failed: No space left on device (ENOSPC)); training goes on"), warnings
    assert [e["epoch"] for e in events(run) if e["event"] == "epoch"] == [1, 2, 3]
    assert events(run)[-1]["status"] == "completed" and (run / "model.keras").exists()
