"""A job script rendered before the layout of docs/architecture.md
(tests/fixtures/job_before_layout_v1.sbatch, rendered by the commit before it, its paths made
placeholders) still trains to the end: Slurm re-runs the script a job was submitted with when it
requeues it, so the `python -m` names in it must keep working."""

from __future__ import annotations

import pytest

from conftest import REPO, VENV_BIN, read_json_lines

FIXTURE = REPO / "tests" / "fixtures" / "job_before_layout_v1.sbatch"


@pytest.mark.cluster
def test_a_job_script_rendered_before_the_move_trains_to_the_end(slurm_cluster, tiny_dataset, tmp_path):
    run_dir = tmp_path / "runs" / "before-layout"
    run_dir.mkdir(parents=True)
    text = (FIXTURE.read_text().replace("@RUN_DIR@", str(run_dir)).replace("@DATA@", str(tiny_dataset))
            .replace("@VENV@", str(VENV_BIN.parent)))
    assert "@" not in text.replace("B:USR1@", "")
    script = run_dir / "job.sbatch"
    script.write_text(text)
    job_id = slurm_cluster.sbatch(script, cwd=tmp_path)
    state = slurm_cluster.wait(job_id, timeout_s=300)
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    assert state == "COMPLETED", log
    assert "training finished" in log
    events = read_json_lines(run_dir / "timing.jsonl")
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1]
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "completed"
    assert (run_dir / "model.keras").is_file()
