"""Faults without a cluster (issue 14): damaged checkpoints, full disks (a tiny tmpfs mounted by the test,
root only), the crash-loop guard, the SIGTERM stop flag, the job script's requeue decision, and the
report's restarts line. The same faults on the real local cluster are in
tests/cluster/test_faults_slurm.py."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from stockpredict.common import files, rundir, timing
from stockpredict.common.errors import UserError
from stockpredict.common.signals import REQUEUE_SIGNALS
from stockpredict.common.train_config import TrainConfig
from stockpredict.control.jobscript import make_spec, render_job
from stockpredict.job import checkpoints, preemption
from stockpredict.report.parse import parse_timing_log
from stockpredict.report.restarts import restart_summary, restarts_of

FEATURES = ("close", "volume")


# --- a tiny file system that fills up -------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: Path, size_kb: int):
    """Mount a `size_kb` KiB tmpfs at `path` (root only: the test skips with the reason otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path, leave_bytes: int = 0) -> None:
    """Write a filler file until the file system is full (then give back `leave_bytes`)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    if leave_bytes:
        size = (directory / "filler").stat().st_size
        os.truncate(directory / "filler", max(0, size - leave_bytes))


# --- checkpoints written through a stand-in for tf.train.Checkpoint ----------------------------

class FakeTfCheckpoint:
    """Writes what tf.train.Checkpoint.write writes: PREFIX.index and PREFIX.data-00000-of-00001."""

    def __init__(self, data_bytes: int = 20_000):
        self.data_bytes = data_bytes

    def write(self, prefix: str) -> None:
        Path(prefix + ".index").write_bytes(b"index" * 20)
        Path(prefix + ".data-00000-of-00001").write_bytes(os.urandom(self.data_bytes))


def state(epochs_done: int, step: int = 0) -> dict:
    return {"epochs_done": epochs_done, "step": step, "partial_loss_sum": 0.0, "ranks": 1, "batch_size": 32,
            "seq_len": 60, "n_features": 2, "features": list(FEATURES), "dropout_rng_states": [[]],
            "config": {"lstm_units": TrainConfig.lstm_units, "dropout": TrainConfig.dropout,
                       "dense_units": TrainConfig.dense_units}}


def write(run_dir: Path, epochs_done: int, step: int = 0, data_bytes: int = 20_000) -> Path:
    return checkpoints.write_checkpoint(run_dir, epochs_done, step, FakeTfCheckpoint(data_bytes),
                                        state(epochs_done, step))


def resume_config(run_dir: Path) -> TrainConfig:
    return TrainConfig(data="unused.h5", run_dir=str(run_dir), resume=True)


def damage_zero_length(directory: Path) -> None:
    (directory / "weights.data-00000-of-00001").write_bytes(b"")


def damage_truncated(directory: Path) -> None:
    path = directory / "weights.data-00000-of-00001"
    path.write_bytes(path.read_bytes()[:100])


def damage_no_index(directory: Path) -> None:
    (directory / "weights.index").unlink()


def damage_empty_state(directory: Path) -> None:
    (directory / "state.json").write_text("")


def damage_torn_state(directory: Path) -> None:
    path = directory / "state.json"
    path.write_text(path.read_text()[:40])


def damage_flipped_byte(directory: Path) -> None:
    path = directory / "weights.data-00000-of-00001"
    data = bytearray(path.read_bytes())
    data[7] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    (damage_zero_length, "weights.data-00000-of-00001 has 0 bytes, expected 20000"),
    (damage_truncated, "weights.data-00000-of-00001 has 100 bytes, expected 20000"),
    (damage_no_index, "weights.index is missing"),
    (damage_empty_state, "state.json is empty"),
    (damage_torn_state, "state.json is not valid JSON"),
    (damage_flipped_byte, "does not match its SHA-256"),
])
def test_unreadable_newest_checkpoint_falls_back_with_one_warning(tmp_path, damage, reason):
    write(tmp_path, 1)
    newest = write(tmp_path, 1, 40)
    damage(newest)
    point = checkpoints.find_resume(resume_config(tmp_path), 60, FEATURES)
    assert point.dir.name == "ckpt-e0001-s0000000"
    (warning,) = point.fallback_warnings()
    assert warning.startswith("checkpoint ckpt-e0001-s0000040 is unreadable (") and reason in warning
    assert warning.endswith("resuming from ckpt-e0001-s0000000 instead") and "\n" not in warning


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
    for e in (1, 2):
        damage_zero_length(write(tmp_path, e))
    with pytest.raises(UserError) as err:
        checkpoints.find_resume(resume_config(tmp_path), 60, FEATURES)
    message = str(err.value)
    assert message.startswith(f"no readable checkpoint in {tmp_path / 'checkpoints'}")
    assert "ckpt-e0002-s0000000: weights.data-00000-of-00001 has 0 bytes" in message
    assert "ckpt-e0001-s0000000" in message and "\n" not in message


def test_checkpoint_from_before_the_file_list_still_reads_and_empty_weights_are_caught(tmp_path):
    newest = write(tmp_path, 2)
    saved = json.loads((newest / "state.json").read_text())
    del saved["files"]  # as written before state.json listed its files
    (newest / "state.json").write_text(json.dumps(saved))
    assert checkpoints.read_state(newest)["epochs_done"] == 2
    damage_zero_length(newest)
    with pytest.raises(ValueError, match="has 0 bytes"):
        checkpoints.read_state(newest)


def test_prune_keeps_two_readable_checkpoints_even_behind_a_damaged_one(tmp_path):
    write(tmp_path, 1)
    write(tmp_path, 2)
    damage_zero_length(write(tmp_path, 3))
    write(tmp_path, 3, 20)  # newest readable; the damaged e3 and the readable e2 stay, e1 goes
    names = [d.name for _, _, d in checkpoints.list_checkpoints(tmp_path)]
    assert names == ["ckpt-e0002-s0000000", "ckpt-e0003-s0000000", "ckpt-e0003-s0000020"]
    write(tmp_path, 4)
    names = [d.name for _, _, d in checkpoints.list_checkpoints(tmp_path)]
    assert names == ["ckpt-e0003-s0000020", "ckpt-e0004-s0000000"]


def test_checkpoint_killed_mid_write_leaves_the_last_complete_one_and_is_cleaned_up(tmp_path):
    write(tmp_path, 1)
    # What an attempt killed (grace time over) while writing leaves: a hidden temporary directory.
    torn = tmp_path / "checkpoints" / ".tmp-ckpt-e0001-s0000060-99999"
    torn.mkdir()
    (torn / "weights.index").write_bytes(b"half")
    assert checkpoints.find_resume(resume_config(tmp_path), 60, FEATURES).dir.name == "ckpt-e0001-s0000000"
    write(tmp_path, 2)
    assert not torn.exists()


# --- full disks -------------------------------------------------------------------------------------

def test_disk_full_cause_reads_oserror_h5py_and_tensorflow_messages():
    assert files.disk_full_cause(OSError(errno.ENOSPC, "x")) == "No space left on device (ENOSPC)"
    assert files.disk_full_cause(OSError(errno.EDQUOT, "x")) == "Disk quota exceeded (EDQUOT)"
    tf_message = "{{function_node SaveV2}} /r/ckpt/part-0.data-00000-of-00001.tmp; No space left on device"
    assert files.disk_full_cause(RuntimeError(tf_message)) == "No space left on device (ENOSPC)"
    assert files.disk_full_cause(OSError(errno.EACCES, "Permission denied")) is None


def test_checkpoint_on_a_full_disk_fails_in_one_line_and_keeps_the_previous(tmp_path):
    run = tmp_path / "run"
    with tmpfs(run / "checkpoints", 256):
        write(run, 1, data_bytes=60_000)
        fill(run / "checkpoints", leave_bytes=8192)
        with pytest.raises(files.DiskFull) as err:
            write(run, 2, data_bytes=60_000)
        target = run / "checkpoints" / "ckpt-e0002-s0000000"
        assert str(err.value) == (f"cannot write {target}: No space left on device (ENOSPC); free space (or "
                                  "quota) there and rerun")
        left = [d.name for d in (run / "checkpoints").iterdir() if d.name != "filler"]
        assert left == ["ckpt-e0001-s0000000"]
        point = checkpoints.find_resume(resume_config(run), 60, FEATURES)
        assert point.dir.name == "ckpt-e0001-s0000000" and not point.skipped


def test_timing_append_and_json_write_on_a_full_disk_leave_the_old_file_whole(tmp_path):
    with tmpfs(tmp_path / "disk", 64) as disk:
        log = disk / rundir.TIMING_LOG
        timing.append_event(log, {"schema": 1, "event": "run_start"})
        before = log.read_bytes()
        fill(disk, leave_bytes=100)  # room for part of the next record only
        with pytest.raises(files.DiskFull, match=f"cannot write {log}: No space left on device"):
            timing.append_event(log, {"schema": 1, "event": "epoch", "padding": "x" * 20_000})
        assert log.read_bytes() == before
        (disk / "filler").unlink()
        files.write_json_atomic(disk / "metrics.json", {"old": True})
        fill(disk)
        with pytest.raises(files.DiskFull, match="metrics.json: No space left on device"):
            files.write_json_atomic(disk / "metrics.json", {"new": "y" * 50_000})
        assert json.loads((disk / "metrics.json").read_text()) == {"old": True}
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "metrics.json", rundir.TIMING_LOG]


def test_preprocessing_on_a_full_disk_is_one_line_and_leaves_no_output(tmp_path):
    from preprocess.synthetic import write_universe

    raw = tmp_path / "raw"
    write_universe(raw, tickers=4, days=3)
    with tmpfs(tmp_path / "out", 64) as out:
        proc = subprocess.run([sys.executable, "-m", "preprocess", "--raw", str(raw), "--out",
                               str(out / "seq.h5"), "--workers", "1"], capture_output=True, text=True,
                              cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: cannot write {out / 'seq.h5'}: No space left on device (ENOSPC); free space (or quota) "
            "there and rerun"]
        assert list(out.iterdir()) == []


# --- the crash-loop guard -------------------------------------------------------------------------

def test_stalled_requeues_count_only_the_same_job_at_the_same_checkpoint():
    a = [{"job_id": "7", "checkpoint": "none"}] + [{"job_id": "7", "checkpoint": "ckpt-e0001-s0000000"}] * 3
    assert checkpoints.stalled_requeues(a) == 2
    assert checkpoints.stalled_requeues(a + [{"job_id": "7", "checkpoint": "ckpt-e0001-s0000040"}]) == 0
    assert checkpoints.stalled_requeues(a + [{"job_id": "8", "checkpoint": "ckpt-e0001-s0000000"}]) == 0
    assert checkpoints.stalled_requeues([]) == 0


def test_guard_stops_a_job_requeued_without_progress_after_the_limit(tmp_path):
    for restart in range(4):  # attempts 0-3 start from nothing: 3 requeues without progress are allowed
        assert checkpoints.guard_attempt(tmp_path, 3, "7", restart, "t") == "none"
    with pytest.raises(UserError, match=r"job 7 was requeued 4 times in a row without getting past "
                                        r"checkpoint none \(limit: max_requeues_without_progress = 3"):
        checkpoints.guard_attempt(tmp_path, 3, "7", 4, "t")
    write(tmp_path, 0, 20)  # progress: a checkpoint appeared
    assert checkpoints.guard_attempt(tmp_path, 3, "7", 5, "t") == "ckpt-e0000-s0000020"


def test_guard_command_prints_one_error_line_and_exits_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), SLURM_JOB_ID="42")
    command = [sys.executable, "-m", "stockpredict.checkpoints", "guard", str(tmp_path),
               "--max-requeues-without-progress", "1"]
    for restart in ("0", "1"):
        proc = subprocess.run(command, env=dict(env, SLURM_RESTART_COUNT=restart), capture_output=True,
                              text=True)
        assert proc.returncode == 0 and "starts from checkpoint none" in proc.stderr, proc.stderr
    proc = subprocess.run(command, env=dict(env, SLURM_RESTART_COUNT="2"), capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: job 42 was requeued 2 times")
    assert len(timing.read_events(tmp_path / checkpoints.ATTEMPTS_FILE)) == 2


# --- the stop flag ---------------------------------------------------------------------------------

def test_sigterm_sets_the_stop_flag_only_once_installed_and_is_given_back():
    before = signal.getsignal(signal.SIGTERM)
    preemption.clear_stop()
    preemption.install_stop_handler(sigterm=True)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.stop_requested() and preemption.stop_signal_name() == "SIGTERM"
        os.kill(os.getpid(), signal.SIGUSR1)
        assert preemption.stop_signal_name() == "SIGTERM"  # the first signal is the one reported
    finally:
        preemption.restore_sigterm()
        preemption.clear_stop()
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("name", REQUEUE_SIGNALS)
def test_every_allowed_requeue_signal_sets_the_stop_flag_of_a_freshly_started_trainer(name):
    """The trainer installs its handler at import, before TensorFlow: a job script rendered with either
    signal (an old one says USR1) stops the ranks instead of killing them."""
    code = ("import os, signal, sys, time\n"
            "import stockpredict.train\n"   # the stable name old job scripts run
            "from stockpredict.job import preemption\n"
            f"os.kill(os.getpid(), signal.SIG{name})\n"
            "time.sleep(0.1)\n"
            "print(preemption.stop_signal_name(), 'tensorflow' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"SIG{name}", "False"]


# --- the job script's decision (a stand-in scontrol; the real one: tests/cluster/test_faults_slurm.py) ---

def run_train_script(tmp_path: Path, exit_status: int, preempt_time: str) -> subprocess.CompletedProcess:
    """Render a train script (launcher "none"), run it with bash and a fake scontrol that reports
    `preempt_time` and records `scontrol requeue`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "scontrol"
    fake.write_text(f"#!/bin/bash\nif [[ $1 == requeue ]]; then echo \"$@\" >> {tmp_path}/requeued; exit 0; "
                    f"fi\necho '   PreemptEligibleTime=2026-11-28T07:56:36 PreemptTime={preempt_time}'\n")
    fake.chmod(0o755)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    timing.append_event(run_dir / rundir.TIMING_LOG, timing.make_event(
        "run_start", time=timing.utc_now_iso(), job_id="5", attempt=0, resumed_from_epoch=None, ranks=1,
        nodes=1, gpus_per_node=0, hosts=["n"], batch_size_per_rank=1, global_batch_size=1, learning_rate=1.0,
        epochs=1, mode=None, dataset="d", windows={}, versions={}, config={}, hardware={}))
    spec = make_spec(dict(kind="train", launcher="none", setup=(), run_dir=str(run_dir), requeue=True,
                          command=(sys.executable, "-c", f"raise SystemExit({exit_status})")))
    return subprocess.run(["bash", "-c", render_job(spec)], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(REPO), SLURM_JOB_ID="5",
                                   PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"))


@pytest.mark.parametrize("exit_status, preempt_time, requeued, job_status, says", [
    (75, "2026-11-28T07:56:40", True, 0, "ranks stopped after preemption (SIGTERM from Slurm) and wrote a"),
    (137, "2026-11-28T07:56:40", True, 0, "without a new checkpoint; requeueing job 5 to resume from the"),
    (2, "2026-11-28T07:56:40", False, 2, "training FAILED"),          # disk full while being preempted
    (143, "None", False, 143, "training FAILED"),                     # srun --kill-on-bad-exit
    (75, "None", False, 75, "neither the time-limit warning nor a preemption"),
])
def test_train_script_requeues_only_a_preempted_job_that_can_rerun(tmp_path, exit_status, preempt_time,
                                                                   requeued, job_status, says):
    proc = run_train_script(tmp_path, exit_status, preempt_time)
    assert proc.returncode == job_status, proc.stderr
    assert says in proc.stderr
    assert (tmp_path / "requeued").exists() == requeued
    ends = [e for e in timing.read_events(tmp_path / "run" / rundir.TIMING_LOG) if e["event"] == "run_end"]
    if exit_status in (137, 143, 2):  # the trainer could not write run_end: the script did
        assert [e["status"] for e in ends] == ["preempted" if requeued else "failed"]


# --- the report: restarts and the time they lost ----------------------------------------------------

def _start(resumed_from_epoch=None, resumed_from_step=None):
    event = {"schema": 1, "event": "run_start", "time": "2026-11-28T08:00:00Z", "job_id": "9", "attempt": 0,
             "ranks": 2, "nodes": 2, "gpus_per_node": 0, "hosts": ["node1", "node2"],
             "batch_size_per_rank": 32,
             "global_batch_size": 64, "learning_rate": 2e-4, "epochs": 3, "mode": None, "dataset": "/d.h5",
             "windows": {"train": 6400, "val": 64, "test": 64}, "versions": {}, "config": {}, "hardware": {},
             "resumed_from_epoch": resumed_from_epoch}
    if resumed_from_step is not None:
        event["resumed_from_step"] = resumed_from_step
    return event


def _epoch(n, train_seconds, steps=100, resumed=False):
    return {"schema": 1, "event": "epoch", "epoch": n, "train_seconds": train_seconds, "val_seconds": 1.0,
            "steps": steps, "samples": steps * 64, "samples_per_second": steps * 64 / train_seconds,
            "train_loss": 0.1, "val_loss": 0.1, "resumed": resumed}


def _end(status, total_seconds):
    return {"schema": 1, "event": "run_end", "status": status, "total_seconds": total_seconds, "test": None}


def test_restarts_and_lost_time_from_a_log_with_a_mid_epoch_and_a_killed_attempt():
    events = [
        _start(), _epoch(1, 20.0), _end("preempted", 40.0),       # stopped 60 steps into epoch 2
        _start(1, 60), _epoch(2, 8.0, steps=40, resumed=True),    # killed 30 steps into epoch 3: no run_end
        _start(2, 0), _epoch(3, 20.0), _end("completed", 25.0),
    ]
    first, second = restarts_of(events)
    # 0.2 s/step (epochs 1 and 3). Attempt 1 ran 40 s: epoch 1 (20 + 1 s) and 60 kept steps (12 s) kept.
    assert (first.resumed_from_epoch, first.resumed_from_step, first.lost_seconds) == (1, 60, 7.0)
    assert (second.resumed_from_epoch, second.resumed_from_step, second.lost_seconds) == (2, 0, None)
    lines = "\n".join(json.dumps(e) for e in events) + "\n"
    run, _ = parse_timing_log(lines, run_id="r9")  # resumed_from_step may differ between attempts
    assert run.restarts == (first, second) and run.attempts == 3
    assert restart_summary([run]).endswith(
        "r9: 2 restarts, 7.0 s lost (+ 1 unmeasured: attempt killed before its run_end).")


def test_restart_falling_back_behind_the_attempts_start_keeps_nothing_of_it():
    events = [_start(1, 60), _end("preempted", 30.0), _start(1, 0), _epoch(2, 20.0), _end("completed", 21.0)]
    (restart,) = restarts_of(events)
    assert restart.lost_seconds == 30.0  # resumed from the epoch checkpoint before: all 30 s lost


def test_resumed_from_step_is_checked_when_written():
    base = dict(time="t", job_id=None, attempt=0, resumed_from_epoch=1, ranks=1, nodes=1, gpus_per_node=0,
                hosts=[], batch_size_per_rank=1, global_batch_size=1, learning_rate=1.0, epochs=1, mode=None,
                dataset="d", windows={}, versions={}, config={}, hardware={})
    assert timing.make_event("run_start", **base, resumed_from_step=0)["resumed_from_step"] == 0
    assert "resumed_from_step" not in timing.make_event("run_start", **base)
    with pytest.raises(ValueError, match="resumed_from_step"):
        timing.make_event("run_start", **base, resumed_from_step=-1)


@pytest.mark.parametrize("exported, caught, left_alone", [("USR2", ["SIGUSR2"], ["SIGUSR1"]),
                                                          ("USR1", ["SIGUSR1"], ["SIGUSR2"]),
                                                          (None, ["SIGUSR1", "SIGUSR2"], [])])
def test_the_trainer_takes_only_the_signal_its_job_script_exports(exported, caught, left_alone):
    """A job script exports STOCKPREDICT_REQUEUE_SIGNAL: the other user signal keeps its default, for
    MPI or NCCL to claim (MPICH installs a SIGUSR1 handler). Without it (a script from before the
    signal was choosable, a trainer started by hand) both stop the run."""
    code = ("import signal\n"
            "import stockpredict.train\n"
            "from stockpredict.job import preemption\n"
            "for name in ('SIGUSR1', 'SIGUSR2'):\n"
            "    ours = signal.getsignal(signal.Signals[name]) is preemption._request_stop\n"
            "    print(name, ours)\n")
    env = {k: v for k, v in os.environ.items() if k != "STOCKPREDICT_REQUEUE_SIGNAL"}
    if exported:
        env["STOCKPREDICT_REQUEUE_SIGNAL"] = exported
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    handled = dict(line.split() for line in proc.stdout.splitlines())
    assert [n for n in ("SIGUSR1", "SIGUSR2") if handled[n] == "True"] == caught
    assert [n for n in ("SIGUSR1", "SIGUSR2") if handled[n] == "False"] == left_alone
