"""The cost table (report/cost.py): sacct's text, the split of a run's elapsed time, old logs, the files.

Every expected number is worked out by hand from the records the test writes.
"""

from __future__ import annotations

import datetime as dt

import pytest
from test_report import epoch, parse, read_csv, run_end, run_start, write_log
from test_report_scaling import model_runs

from stockpredict import report
from stockpredict.report import cost

# sacct --parsable2 --duplicates --format=<cost.SACCT_FIELDS> for a 2-node job (two steps) and a 1-node one.
SACCT = """JobID|Submit|Start|End|ElapsedRaw|AllocNodes|AllocTRES|TotalCPU|MaxRSS|ReqMem|State
351|2026-11-26T09:59:00|2026-11-26T09:59:40|2026-11-26T10:01:20|100|2|billing=4,cpu=4,gres/gpu=2,mem=8G,node=2|00:40.000||8G|COMPLETED
351.batch|2026-11-26T09:59:40|2026-11-26T09:59:40|2026-11-26T10:01:20|100|1|cpu=2,mem=4G,node=1|00:01.500|150M||COMPLETED
351.0|2026-11-26T09:59:41|2026-11-26T09:59:41|2026-11-26T10:01:19|98|2|cpu=4,gres/gpu=2,mem=8G,node=2|00:38.500|1.5G||COMPLETED
352|2026-11-26T10:00:00|2026-11-26T10:00:00|2026-11-26T11:01:00|3660|1|cpu=8,mem=16000M,node=1|1-00:00:00||2000Mc|COMPLETED
352.0|2026-11-26T10:00:01|2026-11-26T10:00:01|2026-11-26T11:00:59|3658|1|cpu=8,node=1|23:59:00|2048000K||COMPLETED
"""


def new_fields_log(job_id="351", time="2026-11-26T10:00:00+00:00"):
    """A 2-node run with every cost field: start-up 10 s, epochs 30 + 20 s train, 0.5 s val each,
    checkpoints 1 + 2 s, test 4 s, process_seconds 70 s (rest = 70 - 68 = 2 s)."""
    first, second = epoch(1, 30.0), epoch(2, 20.0)
    first["checkpoint_seconds"], second["checkpoint_seconds"] = 1.0, 2.0
    end = run_end()
    end.update(test_seconds=4.0, process_seconds=70.0)
    return [run_start(ranks=2, nodes=2, epochs=2, job_id=job_id, time=time, process_start=1.79e9,
                      startup_seconds=10.0), first, second, end]


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


def test_sacct_parser_folds_steps_into_their_job():
    jobs = cost.parse_sacct(SACCT)
    assert sorted(jobs) == ["351", "352"]
    job = jobs["351"]
    assert (job.elapsed_seconds, job.alloc_nodes, job.alloc_cpus, job.alloc_gpus) == (100.0, 2, 4, 2)
    assert job.queue_wait_seconds == 40.0
    assert job.total_cpu_seconds == 40.0                       # the job row's (sacct sums the steps)
    assert job.max_rss_bytes == 1.5 * 1024 ** 3                # the largest step's
    assert job.req_mem_bytes == 8 * 1024 ** 3
    assert job.cpu_efficiency == pytest.approx(40 / (100 * 4))  # 10 %: flagged
    # One task's peak against one node's share of the request (8 GB over 2 nodes), 1 or 2 tasks a node.
    assert job.memory_use() == pytest.approx(1.5 / 4) and job.memory_use(2) == pytest.approx(3 / 4)
    other = jobs["352"]
    assert other.total_cpu_seconds == 86400.0 and other.alloc_gpus == 0   # 1-00:00:00; no gres/gpu
    assert other.req_mem_bytes == 2000 * 1024 ** 2 * 8                   # per CPU (older Slurm) x 8 CPUs
    assert other.max_rss_bytes == 2048000 * 1024
    assert other.cpu_efficiency == pytest.approx(86400 / (3660 * 8))


def test_sacct_parser_without_header_and_with_garbage_never_fails():
    body = SACCT.split("\n", 1)[1]
    assert cost.parse_sacct(body)["351"].elapsed_seconds == 100.0
    assert cost.parse_sacct("") == {}
    broken = cost.parse_sacct("JobID|ElapsedRaw|MaxRSS|TotalCPU\n7|soon|lots|never\n7.0|x|y|z\n")
    assert broken["7"].elapsed_seconds is None and broken["7"].max_rss_bytes is None
    assert broken["7"].cpu_efficiency is None and broken["7"].queue_wait_seconds is None


def test_requeued_job_sums_its_attempts_and_keeps_the_first_submit():
    text = ("JobID|Submit|Start|End|ElapsedRaw|AllocNodes|AllocTRES|TotalCPU|MaxRSS|ReqMem|State\n"
            "9|2026-11-26T10:00:00|2026-11-26T10:00:10|2026-11-26T10:01:10|60|1|cpu=2,node=1|||1G|REQUEUED\n"
            "9|2026-11-26T10:01:10|2026-11-26T10:01:30|2026-11-26T10:02:00|30|1|cpu=2,node=1|||1G|COMPLETED\n")
    job = cost.parse_sacct(text)["9"]
    assert job.elapsed_seconds == 90.0 and job.queue_wait_seconds == 10.0 and job.state == "COMPLETED"


def test_run_sacct_is_none_without_sacct(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cost.run_sacct(["351"]) is None
    assert cost.run_sacct([]) is None


def test_split_from_the_records_adds_up():
    run, _ = parse(new_fields_log())
    split = cost.run_split(run)
    assert split.source == "records" and split.elapsed == 70.0
    parts = (split.startup, split.train, split.val, split.test, split.checkpoint)
    assert parts == (10.0, 50.0, 1.0, 4.0, 3.0)
    assert split.rest == pytest.approx(2.0) and split.covered == pytest.approx(68 / 70)


def test_cost_row_uses_sacct_when_it_has_the_job_and_flags_oversized_requests():
    run, _ = parse(new_fields_log())
    job = cost.parse_sacct(SACCT)["351"]
    job = cost.SacctJob(**{**job.__dict__, "start": utc("2026-11-26T09:59:40"),
                           "end": utc("2026-11-26T10:01:20"), "submit": utc("2026-11-26T09:59:00")})
    pricing = report.ReportConfig(price_per_hour=3.0, price_unit="gpu").pricing
    row = cost.cost_row(run, job, pricing, predicted_seconds_per_epoch=20.0)
    assert (row["source"], row["elapsed_seconds"], row["queue_wait_seconds"]) == ("sacct", 100.0, 40.0)
    assert row["node_hours"] == pytest.approx(200 / 3600) and row["gpu_hours"] == pytest.approx(200 / 3600)
    assert row["rest_seconds"] == pytest.approx(100 - 68)      # the batch script and launcher: the rest
    assert row["cost"] == pytest.approx(100 / 3600 * 2 * 3.0)  # 2 ranks billed per GPU-hour
    assert row["predicted_seconds"] == 40.0 and row["unexplained_share"] == pytest.approx(0.6)
    # 1.5 GB peak, 1 rank a node, 4 GB a node requested: 38 %, not flagged; the CPUs are.
    assert row["memory_use"] == pytest.approx(0.375) and row["flags"].startswith("CPU efficiency < 25%")
    assert "memory use" not in row["flags"]
    small = cost.SacctJob(**{**job.__dict__, "max_rss_bytes": 0.5 * 1024 ** 3})
    assert "memory use < 25%" in cost.cost_row(run, small, pricing, None)["flags"]  # 0.5 of 4 GB
    # The same job id from another time (a reused id, another cluster): not this run's accounting.
    later = cost.SacctJob(**{**job.__dict__, "start": utc("2026-11-27T09:00:00"), "end": None})
    assert cost.cost_row(run, later, pricing, None)["source"] == "records"


def test_old_logs_without_the_cost_fields_still_report_with_the_split_unknown(tmp_path):
    runs = tmp_path / "runs"
    model_runs(runs)                           # logs as the trainer wrote them before the cost fields
    write_log(runs, "new", new_fields_log())
    out = tmp_path / "out"
    config = report.ReportConfig(runs_dir=runs, out_dir=out, plots=False, price_per_hour=2.0)
    rep, written = report.make_report(config)
    rows = {r["run_id"]: r for r in read_csv(out / "cost.csv")}
    assert out / "cost.csv" in written
    old = rows["strong-n2"]
    assert old["split"].startswith("unknown") and old["startup_seconds"] == "" and old["rest_seconds"] == ""
    assert old["source"] == "records (trainer wall only)" and float(old["elapsed_seconds"]) == 60.0
    assert old["predicted_seconds"] != ""       # the scaling model predicts the old runs' epochs
    assert rows["new"]["split"] == "recorded" and float(rows["new"]["named_share"]) == pytest.approx(68 / 70)
    markdown = (out / "scaling.md").read_text()
    assert markdown.count("### What the study cost") == 1          # one key: one table and its total
    total = rows["total"]
    assert float(total["elapsed_seconds"]) == pytest.approx(6 * 60.0 + 70.0)
    assert total["startup_seconds"] == ""
    assert float(total["cost"]) == pytest.approx(sum(float(r["cost"]) for r in rows.values()
                                                     if r is not total))
    assert "Split unknown (logs from before" in markdown and "strong-n2" in markdown


def test_malformed_cost_fields_make_the_log_corrupt(tmp_path):
    log = new_fields_log()
    log[1]["checkpoint_seconds"] = "1.0"
    with pytest.raises(report.SkipLog, match="checkpoint_seconds='1.0', expected a number >= 0"):
        parse(log)
    log = new_fields_log()
    log[0]["startup_seconds"] = -1
    with pytest.raises(report.SkipLog, match="startup_seconds=-1"):
        parse(log)


def test_a_requeued_run_sums_its_attempts():
    """Attempt 1: start-up 5 s, epoch 1, preempted at 20 s; attempt 2: start-up 4 s, epoch 2, test 1 s,
    30 s. Elapsed 50 s; the named parts 5 + 4 + 10 + 12 + 2 x 0.5 + 1 + 2 x 1 = 35 s; the rest (15 s)
    holds the preempted attempt's lost work and both attempts' ends."""
    first, second = epoch(1, 10.0), epoch(2, 12.0)
    first["checkpoint_seconds"] = second["checkpoint_seconds"] = 1.0
    preempted, completed = run_end("preempted"), run_end()
    preempted["process_seconds"] = 20.0
    completed.update(process_seconds=30.0, test_seconds=1.0)
    log = [run_start(epochs=2, process_start=1.79e9, startup_seconds=5.0), first, preempted,
           run_start(epochs=2, attempt=1, resumed_from_epoch=1, process_start=1.79e9 + 60,
                     startup_seconds=4.0),
           second, completed]
    split = cost.run_split(parse(log)[0])
    assert (split.elapsed, split.startup, split.train, split.test) == (50.0, 9.0, 22.0, 1.0)
    assert split.named == pytest.approx(35.0) and split.rest == pytest.approx(15.0)


def test_with_sacct_the_launch_before_the_trainer_process_is_start_up():
    """The batch script, srun and the interpreter's launch (the job's start in sacct to the trainer's
    process_start) count as start-up; a process_start outside the job (clock skew) adds nothing."""
    job_start = utc("2026-11-26T09:59:40")
    log = new_fields_log()
    log[0]["process_start"] = job_start.timestamp() + 3.0
    run, _ = parse(log)
    job = cost.SacctJob(**{**cost.parse_sacct(SACCT)["351"].__dict__, "start": job_start,
                           "end": utc("2026-11-26T10:01:20"), "submit": utc("2026-11-26T09:59:00")})
    row = cost.cost_row(run, job, None, None)
    assert (row["startup_seconds"], row["rest_seconds"]) == (pytest.approx(13.0), pytest.approx(100 - 71))
    log[0]["process_start"] = job_start.timestamp() - 30.0
    skewed, _ = parse(log)
    assert cost.cost_row(skewed, job, None, None)["startup_seconds"] == pytest.approx(10.0)
    # From the records alone the split starts at the process: no launch part.
    assert cost.cost_row(run, None, None, None)["startup_seconds"] == pytest.approx(10.0)
