"""A job script rendered before the layout of docs/architecture.md
(tests/fixtures/job_before_layout_v1.sbatch, rendered by the commit before it, its paths made
placeholders) still trains to the end: Slurm re-runs the script a job was submitted with when it
requeues it, so the `python -m` names in it must keep working. It was also rendered before the requeue
signal was choosable (USR1, now USR2 by default): signalled with USR1 mid-run it still checkpoints,
requeues and resumes."""

from __future__ import annotations

import subprocess

import pytest
from test_faults_slurm import _release_when_pending

from conftest import REPO, VENV_BIN, read_json_lines, wait_until

FIXTURE = REPO / "tests" / "fixtures" / "job_before_layout_v1.sbatch"


@pytest.mark.cluster
def test_a_job_script_rendered_before_the_move_trains_to_the_end(slurm_cluster, tiny_dataset, tmp_path):
    run_dir = tmp_path / "runs" / "before-layout"
    run_dir.mkdir(parents=True)
    text = (FIXTURE.read_text().replace("@RUN_DIR@", str(run_dir)).replace("@DATA@", str(tiny_dataset))
            .replace("@VENV@", str(VENV_BIN.parent)))
    assert "@" not in text.replace("B:USR1@", "")
    assert "#SBATCH --signal=B:USR1@120" in text.splitlines() and "trap forward_signal USR1" in text
    # Long enough to be signalled after epoch 1 (the only change to the script: its epoch count).
    assert text.count(" --epochs 1 &") == 1
    text = text.replace(" --epochs 1 &", " --epochs 4 &")
    script = run_dir / "job.sbatch"
    script.write_text(text)
    job_id = slurm_cluster.sbatch(script, cwd=tmp_path)
    timing_log = run_dir / "timing.jsonl"
    epoch_done = lambda: timing_log.exists() and any(  # noqa: E731
        e["event"] == "epoch" for e in read_json_lines(timing_log))
    assert wait_until(epoch_done, timeout_s=240), (run_dir / f"slurm-{job_id}.out").read_text()
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, env=slurm_cluster.env)
    assert wait_until(lambda: slurm_cluster.info(job_id).get("Restarts") == "1", timeout_s=90), \
        (run_dir / f"slurm-{job_id}.out").read_text()
    _release_when_pending(slurm_cluster, job_id)
    state = slurm_cluster.wait(job_id, timeout_s=300)
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    assert state == "COMPLETED", log
    assert "ranks stopped after SIGUSR1 and wrote a checkpoint; requeueing job" in log
    assert "training finished" in log
    events = read_json_lines(timing_log)
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4]
    assert [e["status"] for e in events if e["event"] == "run_end"] == ["preempted", "completed"]
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "completed"
    # Provenance: each attempt records the code it ran (the checkout's HEAD; the script itself is old).
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    starts = [e for e in events if e["event"] == "run_start"]
    assert len(starts) == 2 and all(s["toolkit"]["commit"] == head for s in starts)
    assert all(isinstance(s["toolkit"]["dirty"], bool) and s["toolkit"]["version"] for s in starts)
    assert (run_dir / "model.keras").is_file()
