"""Rendering of sbatch scripts: golden files, validation, hostile values, profiles. No cluster needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from stockpredict.common.errors import UserError
from stockpredict.control.jobscript import (
    PROFILE_KEYS,
    SPEC_FIELDS,
    JobSpec,
    available_profiles,
    load_profile,
    make_spec,
    render_job,
    sbatch_directives,
)

GOLDEN = REPO / "tests" / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
SETUP = ("source /opt/venvs/stockpredict/bin/activate", "export TF_CPP_MIN_LOG_LEVEL=2")
TRAIN_CMD = ("python", "-m", "stockpredict.train", "--data", "/data/sequences.h5", "--run-dir",
             "/results/runs/r1", "--resume", "--batch-size", "32")
ALLREDUCE_CMD = ("python", "-m", "stockpredict.allreduce_bench", "--run-dir", "/results/runs/a1",
                 "--iterations", "200", "--epochs", "3", "--data", "/data/sequences.h5", "--threads", "1")

# Parameter sets pinned by golden files: the local default, a full site config on mpirun, CPU-only with
# several ranks per node on horovodrun, and the two one-process job kinds.
CASES = {
    "train_local_n2_g1": dict(nodes=2, gpus_per_node=1, partition="debug", requeue=True,
                              run_dir="/results/runs/r1", output="/results/runs/r1/slurm-%j.out",
                              setup=SETUP, command=TRAIN_CMD, profile="local"),
    "train_site_mpirun_n4_g2": dict(nodes=4, gpus_per_node=2, cpus_per_task=8, time="1-12:00:00",
                                    partition="gpu,gpu-long", account="lab-42", qos="normal",
                                    constraint="a100|v100", mem="64G", launcher="mpirun", requeue=True,
                                    signal_seconds=300,
                                    extra_directives=("--reservation=course", "--exclusive"),
                                    run_dir="/scratch/my runs/r2", output="/scratch/my runs/r2/slurm-%j.out",
                                    error="/scratch/my runs/r2/slurm-%j.err", setup=SETUP,
                                    command=TRAIN_CMD, job_name="lstm.scaling_n4", profile="site"),
    "train_cpu_horovodrun_n2_t2": dict(nodes=2, gpus_per_node=0, tasks_per_node=2, launcher="horovodrun-gloo",
                                       requeue=True, time="90", run_dir="/results/runs/r3",
                                       output="/results/runs/r3/slurm-%j.out", setup=SETUP,
                                       command=TRAIN_CMD),
    # make submit TIMELINE=1: the default case plus the HOROVOD_TIMELINE export.
    "train_local_n2_g1_timeline": dict(nodes=2, gpus_per_node=1, partition="debug", requeue=True,
                                       run_dir="/results/runs/r1", output="/results/runs/r1/slurm-%j.out",
                                       setup=SETUP, command=TRAIN_CMD, profile="local", timeline=True),
    # submit allreduce: the allreduce microbenchmark through the train template, not requeued.
    "allreduce_local_n2": dict(kind="allreduce", job_name="stockpredict-allreduce", nodes=2,
                               partition="debug", run_dir="/results/runs/a1",
                               output="/results/runs/a1/slurm-%j.out",
                               setup=SETUP, command=ALLREDUCE_CMD, profile="local"),
    # ENGINE=tf: plain srun (no MPI), the tf environment, --engine tf on the trainer.
    "train_local_tf_n2_g1": dict(nodes=2, gpus_per_node=1, partition="debug", requeue=True, launcher="srun",
                                 run_dir="/results/runs/r4", output="/results/runs/r4/slurm-%j.out",
                                 setup=("source /opt/venvs/stockpredict-tf/bin/activate",
                                        "export TF_CPP_MIN_LOG_LEVEL=2"),
                                 command=(*TRAIN_CMD, "--engine", "tf"), profile="local"),
    # make sweep: one job array per node count, task i runs array_tasks[i] in its own run directory.
    "train_array_local_n2_g1": dict(
        nodes=2, gpus_per_node=1, partition="debug", requeue=True, run_dir="/results/arrays/s1",
        output="/results/arrays/s1/slurm-%A_%a.out", setup=SETUP, profile="local", array_max=2,
        array_tasks=[{"run_dir": f"/results/runs/s1-b{b}-t{i}",
                      "command": (*TRAIN_CMD[:6], f"/results/runs/s1-b{b}-t{i}", "--resume", "--batch-size",
                                  str(b))}
                     for i, b in enumerate((32, 64, 32))]),
    "gpu_check": dict(kind="gpu-check", job_name="stockpredict-gpu-check", launcher="none", gpus_per_node=2,
                      time="00:15:00", partition="gpu", output="/results/jobs/g/slurm-%j.out", setup=SETUP,
                      command=("python", "-m", "stockpredict.gpucheck")),
    "preprocess": dict(kind="preprocess", job_name="stockpredict-preprocess", launcher="none",
                       time="02:00:00", output="/results/jobs/p/slurm-%j.out", setup=SETUP,
                       command=("python", "-m", "preprocess", "--raw", "/data/raw", "--out", "/data/seq.h5")),
    "report": dict(kind="report", job_name="stockpredict-report", launcher="none", time="10",
                   output="/results/jobs/q/slurm-%j.out", setup=SETUP,
                   command=("python", "-m", "stockpredict.report", "--runs", "/results/runs",
                            "--out", "/results")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case):
    text = render_job(make_spec(CASES[case]))
    path = GOLDEN / f"{case}.sbatch"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), (
        f"missing {path}; create it with: UPDATE_GOLDEN=1 .venv/bin/pytest tests/control/test_jobscript.py")
    assert text == path.read_text(), (
        f"rendered script differs from {path}. If the change is intended, regenerate the golden files with "
        f"UPDATE_GOLDEN=1 .venv/bin/pytest tests/control/test_jobscript.py and review the diff "
        f"(git diff tests/golden)")


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_scripts_are_valid_bash_and_deterministic(case):
    spec = make_spec(CASES[case])
    text = render_job(spec)
    assert text == render_job(spec)
    proc = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH ")]
    assert directives == sorted(directives) and len(directives) == len(sbatch_directives(spec))


def test_tasks_default_to_one_per_gpu_or_one_per_node_on_cpu():
    assert JobSpec(nodes=3, gpus_per_node=4).ranks == 12
    assert JobSpec(nodes=3, gpus_per_node=0).ranks == 3
    assert JobSpec(nodes=2, gpus_per_node=0, tasks_per_node=2).ranks_per_node == 2
    cpu = sbatch_directives(make_spec(dict(CASES["report"], nodes=2)))
    assert "--ntasks-per-node=1" in cpu and not any(d.startswith("--gpus") for d in cpu)


@pytest.mark.parametrize("launcher, expected", [
    ("srun-pmix", "srun --mpi=pmix --kill-on-bad-exit=1 python"),
    ("srun-pmi2", "srun --mpi=pmi2 --kill-on-bad-exit=1 python"),
    ("mpirun", "mpirun -np 4 --map-by ppr:2:node --bind-to none python"),
    ("horovodrun-gloo", 'horovodrun --gloo -np 4 -H "$HOROVOD_HOSTS" python'),
])
def test_launch_modes(launcher, expected):
    spec = make_spec(dict(CASES["train_local_n2_g1"], gpus_per_node=2, launcher=launcher))
    launch = [line for line in render_job(spec).splitlines() if line.endswith(" &")]
    assert len(launch) == 1 and launch[0].startswith(expected)


def test_train_jobs_are_requeueable_with_a_warning_signal():
    text = render_job(make_spec(dict(CASES["train_local_n2_g1"], signal_seconds=45)))
    for directive in ("#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --signal=B:USR2@45"):
        assert directive in text.splitlines()
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and 'exit "$status"' in text
    assert "trap forward_signal USR2" in text and 'kill -USR2 "$launch_pid"' in text


@pytest.mark.parametrize("given", ["USR1", "usr1", "SIGUSR1", " SigUsr1 "])
def test_the_requeue_signal_is_choosable_and_spelled_as_sbatch_wants(given):
    spec = make_spec(dict(CASES["train_local_n2_g1"], requeue_signal=given))
    text = render_job(spec)
    assert spec.requeue_signal == "USR1" and "#SBATCH --signal=B:USR1@120" in text.splitlines()
    assert "trap forward_signal USR1" in text and 'kill -USR1 "$launch_pid"' in text
    assert "export STOCKPREDICT_REQUEUE_SIGNAL=USR1" in text.splitlines()  # the ranks take only USR1
    assert "USR2" not in text


@pytest.mark.parametrize("given", ["TERM", "SIGTERM", "INT", "HUP", "KILL", "10", "", "USR3", "USR2;id",
                                   None])
def test_a_requeue_signal_outside_the_allowed_ones_is_one_line_naming_them(given):
    with pytest.raises(UserError) as err:
        make_spec(dict(CASES["train_local_n2_g1"], requeue_signal=given))
    assert "USR2, USR1" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="requeue signal"):  # a JobSpec built directly is checked too
        render_job(JobSpec(**dict(CASES["train_local_n2_g1"], requeue_signal="SIGUSR1")))


def test_a_profile_sets_the_requeue_signal_and_a_bad_one_fails_before_rendering(tmp_path):
    assert "requeue_signal" in PROFILE_KEYS
    good = tmp_path / "usr1site.toml"
    good.write_text('requeue_signal = "USR1"\n')
    assert make_spec(load_profile(str(good)) | {"command": ["x"]}).requeue_signal == "USR1"
    bad = tmp_path / "badsite.toml"
    bad.write_text('requeue_signal = "TERM"\n')
    with pytest.raises(UserError, match="requeue signal 'TERM' is not allowed"):
        make_spec(load_profile(str(bad)) | {"command": ["x"]})


def test_unknown_key_lists_valid_ones():
    with pytest.raises(UserError) as err:
        make_spec({"nodes": 2, "gpu_per_node": 1})
    assert "gpu_per_node" in str(err.value) and all(f in str(err.value) for f in SPEC_FIELDS)


@pytest.mark.parametrize("time_limit", ["30", "30:00", "00:30:00", "2-0", "1-12:00", "1-12:00:00"])
def test_slurm_time_formats_accepted(time_limit):
    assert f"--time={time_limit}" in render_job(make_spec(dict(CASES["report"], time=time_limit)))


@pytest.mark.parametrize("changes, message", [
    (dict(time="1h"), "time limit"), (dict(time="00:30:00; id"), "time limit"), (dict(time=""), "time limit"),
    (dict(nodes=0), "nodes"), (dict(nodes=-1), "nodes"), (dict(nodes=True), "nodes"),
    (dict(nodes="2"), "nodes"),
    (dict(gpus_per_node=-1), "gpus per node"), (dict(tasks_per_node=0), "tasks per node"),
    (dict(cpus_per_task=0), "cpus per task"), (dict(signal_seconds=0), "signal seconds"),
    (dict(mem="lots"), "mem"), (dict(launcher="ssh"), "launcher"), (dict(kind="eval"), "kind"),
    (dict(extra_directives=("--exclusive; id",)), "extra directive"),
    (dict(extra_directives=("--nodes=8",)), "conflicts"),
    (dict(extra_directives=("-N 8",)), "extra directive"),
    (dict(setup=("echo a\necho b",)), "setup line"), (dict(command=()), "no command"),
])
def test_invalid_values_rejected_with_a_clear_message(changes, message):
    with pytest.raises(UserError, match=message):
        render_job(make_spec(dict(CASES["train_local_n2_g1"], **changes)))


HOSTILE = ["; rm -rf ~", "$(touch CANARY)", "`touch CANARY`", "it's", 'say "hi"', "line1\nline2",
           "a b", "x && touch CANARY", "$HOME", "\\", "*"]


@pytest.mark.parametrize("name", HOSTILE + ["-starts-with-dash", "a/b", "", "x" * 200])
def test_hostile_job_names_rejected(name):
    with pytest.raises(UserError, match="job name"):
        render_job(make_spec(dict(CASES["train_local_n2_g1"], job_name=name)))


@pytest.mark.parametrize("key", ["partition", "account", "qos"])
@pytest.mark.parametrize("value", ["debug gpu", "debug\n#SBATCH --nodes=99", "$(id)", "a;b", "'x'"])
def test_hostile_site_names_rejected(key, value):
    with pytest.raises(UserError, match=key):
        render_job(make_spec(dict(CASES["train_local_n2_g1"], **{key: value})))


@pytest.mark.parametrize("path", ['/tmp/a"b', "/tmp/a\nb", "/tmp/a\rb"])
def test_paths_that_cannot_be_written_in_a_directive_are_rejected(path):
    with pytest.raises(UserError, match="path|directory"):
        render_job(make_spec(dict(CASES["train_local_n2_g1"], run_dir=path)))


def test_hostile_values_in_paths_and_arguments_are_quoted_never_executed(tmp_path):
    """Render a train script whose run dir and program arguments are hostile, then run it with bash.

    launcher="none" runs the program directly (no Slurm needed); the program prints the argv it got and
    leaves the final-model marker the train script checks for.
    Nothing may be executed (no CANARY file) and every argument must arrive byte for byte."""
    run_dir = tmp_path / "run $(touch CANARY) `touch CANARY`; touch CANARY & it's"
    run_dir.mkdir()
    echo_argv = ("import json, pathlib, sys; print(json.dumps(sys.argv[1:])); "
                 "pathlib.Path(sys.argv[-1], 'model.keras').touch()")
    spec = make_spec(dict(CASES["train_local_n2_g1"], launcher="none", setup=("cd " + _q(tmp_path),),
                          run_dir=str(run_dir), output=str(run_dir / "slurm-%j.out"),
                          command=(sys.executable, "-c", echo_argv, *HOSTILE, str(run_dir))))
    script = tmp_path / "job.sbatch"
    script.write_text(render_job(spec))
    # As a job whose setup activated the venv: the script's own python steps (the crash-loop guard) run.
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env=dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(REPO),
                                   PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(proc.stdout.splitlines()[0])
    assert argv == [*HOSTILE, str(run_dir)]
    assert f"outputs in {run_dir}" in proc.stdout
    assert not list(tmp_path.rglob("CANARY"))


def test_train_job_whose_launcher_exits_0_without_a_model_fails(tmp_path):
    spec = make_spec(dict(CASES["train_local_n2_g1"], launcher="none", setup=(), run_dir=str(tmp_path),
                          command=(sys.executable, "-c", "pass")))
    proc = subprocess.run(["bash", "-c", render_job(spec)], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
    assert proc.returncode == 1
    assert "model.keras is missing: the ranks did not finish" in proc.stderr
    assert "stockpredict: training FAILED" in proc.stderr


def test_failing_setup_line_is_named_and_fails_the_job(tmp_path):
    spec = make_spec(dict(CASES["preprocess"], setup=("true", "module load no-such-module-xyz")))
    proc = subprocess.run(["bash", "-c", render_job(spec)], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PATH="/usr/bin:/bin"))
    assert proc.returncode != 0
    assert "stockpredict: setup failed" in proc.stderr and "module load no-such-module-xyz" in proc.stderr


def test_failing_program_exits_with_its_status_and_says_so(tmp_path):
    spec = make_spec(dict(CASES["report"], setup=(), command=(sys.executable, "-c", "raise SystemExit(3)")))
    proc = subprocess.run(["bash", "-c", render_job(spec)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 3
    assert "report job" in proc.stderr and "FAILED (exit status 3)" in proc.stderr


def _q(path):
    import shlex

    return shlex.quote(str(path))


# --- profiles ---------------------------------------------------------------------------------------

def test_shipped_profiles_render():
    assert {"local", "university-gpu"} <= set(available_profiles())
    for name in available_profiles():
        values = load_profile(name)
        spec = make_spec(dict(values, kind="train", requeue=True, run_dir="/r", output="/r/slurm-%j.out",
                              command=TRAIN_CMD))
        text = render_job(spec)
        assert f"(profile: {name})" in text
    local = load_profile("local")
    assert local["partition"] == "debug"
    assert f"source {REPO}/.venv/bin/activate" in local["setup"]


def test_profile_with_unknown_key_lists_valid_keys(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('partition = "gpu"\ngpu = 2\n')
    with pytest.raises(UserError) as err:
        load_profile(str(bad))
    assert "unknown key(s) gpu" in str(err.value) and all(k in str(err.value) for k in PROFILE_KEYS)


def test_missing_profile_lists_available():
    with pytest.raises(UserError, match="available: .*local"):
        load_profile("nope")


def test_timeline_only_when_asked_and_only_for_train_jobs(tmp_path):
    default = render_job(make_spec(CASES["train_local_n2_g1"]))
    assert "HOROVOD_TIMELINE" not in default
    with pytest.raises(UserError, match="train jobs only"):
        render_job(make_spec(dict(CASES["report"], timeline=True)))
    with pytest.raises(UserError, match="timeline must be true or false"):
        render_job(make_spec(dict(CASES["train_local_n2_g1"], timeline="yes")))
    profile = tmp_path / "p.toml"
    profile.write_text("timeline = true\n")                      # a per-job choice, not a site default
    with pytest.raises(UserError, match="unknown key"):
        load_profile(str(profile))


def test_submit_timeline_exports_the_file_in_the_run_directory(tmp_path):
    data = tmp_path / "seq.h5"
    data.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "stockpredict.submit", "train", "--data", str(data),
                           "--timeline", "--dry-run", "--results", str(tmp_path / "res")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (kept,) = (tmp_path / "res" / "dry-runs").iterdir()  # a dry run keeps its script there
    run_dir = tmp_path / "res" / "runs" / kept.name       # and renders where the job would run
    script = (kept / "job.sbatch").read_text()
    # The export sits before the launch line, and RUN_DIR is this run's directory.
    export = 'export HOROVOD_TIMELINE="$RUN_DIR"/timeline.json HOROVOD_TIMELINE_MARK_CYCLES=1'
    assert script.index(export) < script.index("python -m stockpredict.train")
    assert f"RUN_DIR={run_dir}\n" in script
    assert json.loads((kept / "submit.json").read_text())["job"]["timeline"] is True
    # Run the export line as the job would: the variable names the run directory's timeline.json.
    out = subprocess.run(["bash", "-c", f"RUN_DIR={run_dir}; {export}; echo $HOROVOD_TIMELINE"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == f"{run_dir}/timeline.json"


def test_profile_prices_for_the_report(tmp_path):
    from stockpredict.control.jobscript import profile_prices

    profile = tmp_path / "site.toml"
    profile.write_text('gpus_per_node = 8\nprice_per_node_hour = 20\nprice_per_gpu_hour = 3.5\n')
    assert profile_prices(str(profile)) == {"price_per_gpu_hour": 3.5, "price_per_node_hour": 20.0,
                                            "ranks_per_node": 8}
    assert load_profile(str(profile))["gpus_per_node"] == 8      # job rendering ignores the prices
    profile.write_text('price_per_gpu_hour = "cheap"\n')
    with pytest.raises(UserError, match="price_per_gpu_hour must be a number >= 0"):
        profile_prices(str(profile))
    assert profile_prices("local") == {"ranks_per_node": 1}


def test_only_train_jobs_run_as_arrays_and_the_cap_is_positive():
    task = {"run_dir": "/results/runs/t0", "command": TRAIN_CMD}
    with pytest.raises(UserError, match="only train jobs run as job arrays"):
        render_job(make_spec(dict(CASES["report"], array_tasks=[task])))
    with pytest.raises(UserError, match="array max"):
        render_job(make_spec(dict(CASES["train_array_local_n2_g1"], array_max=0)))
    with pytest.raises(UserError, match="conflicts"):
        render_job(make_spec(dict(CASES["train_local_n2_g1"], extra_directives=("--array=0-3",))))


@pytest.mark.parametrize("task, message", [("7", "is a job array of tasks 0-2"), ("", "is a job array"),
                                           ("1", "its run directory /results/runs/s1-b64-t1 is gone")])
def test_an_array_script_run_as_no_task_or_without_its_run_directory_stops_in_one_line(tmp_path, task,
                                                                                       message):
    script = tmp_path / "job.sbatch"
    script.write_text(render_job(make_spec(CASES["train_array_local_n2_g1"])))
    env = {"PATH": os.environ["PATH"], "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": task}
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
