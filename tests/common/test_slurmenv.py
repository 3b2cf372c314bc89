from stockpredict.common.slurmenv import job_ref


def test_an_array_task_is_named_array_underscore_task():
    # Slurm gives one task the array's own id as SLURM_JOB_ID: that id alone would name every task
    environ = {"SLURM_JOB_ID": "41", "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "0"}
    assert job_ref(environ) == "41_0"
    assert job_ref({"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "2"}) == "41_2"


def test_a_plain_job_is_its_job_id_and_outside_a_job_none():
    assert job_ref({"SLURM_JOB_ID": "7"}) == "7"
    assert job_ref({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "", "SLURM_ARRAY_TASK_ID": ""}) == "7"
    assert job_ref({}) is None
