"""Scaling-model benchmark (not a test; `make test` never runs it): predict the 2-node epoch from 1-rank
runs plus a 2-node allreduce microbenchmark, then measure it, on the local Slurm cluster.

Goal (issue 12): the 2-rank epoch predicted from the 1-rank batch runs and the allreduce benchmark alone
is within 15 % of the measured one; the measured 2-node strong-scaling speedup at global batch 256.

Steps, each an ordinary run directory under <work>/results/runs/, submitted one job at a time (no two
runs ever share a core) on the pinned virtual nodes of slurm/local-cluster.sh (one core per node on 2
cores; the job's --cpus-per-task, and so the trainer's intra-op threads, is the node's core count):

1. the demo's synthetic universe (--tickers x --days, per-ticker normalisation), preprocessed;
2. 1-rank training runs at per-rank batch 128 (mode null) and 256 (mode strong);
3. the 2-node allreduce microbenchmark (stockpredict/job/allreduce_bench.py, --iterations per epoch);
4. 2-node strong scaling at global batch 256 (128 per rank);
5. the report on these runs only (<work>/results/scaling.md, scaling_prediction.csv).

It prints the measured 2-rank seconds per epoch, the prediction of the report's held-out check (the model
refitted without the 2-rank training run: compute from the two 1-rank runs, the ring latency from the
allreduce benchmark), the error in %, and the measured 2-node speedup (1-rank batch 256 epoch over the
2-rank epoch). Seconds per epoch are medians over the epochs after the first (warm-up), as in the report.

    .venv/bin/python benchmarks/bench_scaling.py                      # full size: about 10 minutes on 2 cores
    .venv/bin/python benchmarks/bench_scaling.py --repeats 5          # + 5 interleaved pairs (~6 minutes)
    .venv/bin/python benchmarks/bench_scaling.py --repeats 5 --pairs-only   # the pairs alone
    .venv/bin/python benchmarks/bench_scaling.py --interleaved 15 --pairs-only  # 1 vs 2 ranks in one job
    .venv/bin/python benchmarks/bench_scaling.py --tickers 3 --days 10 --epochs 2 --max-steps 20  # smoke run

Run it on a quiet machine: other load on the cores changes every number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: this checkout's stockpredict
# No TensorFlow on this side: the runs are Slurm jobs.
from stockpredict import report  # noqa: E402
from stockpredict.common import rundir  # noqa: E402
from stockpredict.common.benchmarks import BenchConfig  # noqa: E402
from stockpredict.common.errors import UserError, run_cli  # noqa: E402
from stockpredict.common.hardware import cpu_affinity  # noqa: E402
from stockpredict.common.train_config import TrainConfig  # noqa: E402
from stockpredict.control import demo, slurmjobs  # noqa: E402
from stockpredict.control.follow import EpochPrinter  # noqa: E402
from stockpredict.control.submit import Submission, submit_allreduce, submit_train  # noqa: E402

GLOBAL_BATCH = 256                       # the demo's strong-scaling global batch
ONE_RANK_BATCHES = (GLOBAL_BATCH // 2, GLOBAL_BATCH)  # 128 = the 2-rank run's per-rank batch
NODES = 2


def say(message: str) -> None:
    print(f"bench_scaling: {message}", flush=True)


def _wait(sub: Submission, what: str, timeout_s: float) -> Path:
    started = time.monotonic()
    printer = EpochPrinter(sub.run_dir, label=f"bench_scaling: {what}")  # each finished epoch, as it lands
    state = slurmjobs.wait_for_jobs([sub.job_id], timeout_s, on_poll=printer)[sub.job_id]
    if state != "COMPLETED":
        raise UserError(f"{what} (job {sub.job_id}) ended {state}; see {sub.run_dir}/slurm-{sub.job_id}.out")
    say(f"{what}: job {sub.job_id} {state} in {time.monotonic() - started:.0f} s -> {sub.run_dir.name}")
    return sub.run_dir


def run_all(ns: argparse.Namespace, results: Path, data: Path, cpus: int | None) -> None:
    """Steps 2-4, one job at a time."""
    def train(batch: int, nodes: int, mode: str | None) -> Path:
        config = TrainConfig(data=str(data), run_dir="", batch_size=batch, epochs=ns.epochs, lr=ns.lr,
                             mode=mode, max_steps=ns.max_steps)
        sub = submit_train(config, profile="local", results=results, nodes=nodes, gpus_per_node=1,
                           cpus_per_task=cpus)
        return _wait(sub, f"{nodes} node(s), batch {batch}/rank", ns.timeout)

    for batch in ONE_RANK_BATCHES:
        train(batch, 1, "strong" if batch == GLOBAL_BATCH else None)
    bench = BenchConfig(run_dir="", iterations=ns.iterations, data=str(data))
    sub = submit_allreduce(bench, profile="local", results=results, nodes=NODES, cpus_per_task=cpus)
    _wait(sub, f"{NODES}-node allreduce benchmark, {ns.iterations} allreduces per epoch", ns.timeout)
    train(GLOBAL_BATCH // NODES, NODES, "strong")


def timed_seconds(run_dir: Path) -> float:
    """A run's seconds per epoch as the report computes it (median over the epochs after warm-up)."""
    path = run_dir / rundir.TIMING_LOG
    run, _ = report.parse_timing_log(path.read_text(), run_dir.name, str(path))
    return report.run_timing(run, report.ReportConfig.warmup_epochs).seconds_per_epoch


def interleaved_pairs(ns: argparse.Namespace, work: Path, data: Path, cpus: int | None) -> None:
    """--repeats pairs of short runs, 1 rank at batch 256 then 2 ranks at 128 each, back to back; prints
    each pair's speedup and their median. The host's speed drifts over tens of seconds (docs/scaling.md,
    "How noisy this machine is"), so pairs of short runs close in time give a steadier ratio than two
    long runs."""
    results = work / "pairs"
    speedups = []
    for i in range(1, ns.repeats + 1):
        seconds = {}
        for nodes in (1, NODES):
            config = TrainConfig(data=str(data), run_dir="", batch_size=GLOBAL_BATCH // nodes,
                                 epochs=ns.pair_epochs, lr=ns.lr, max_steps=ns.pair_steps)
            sub = submit_train(config, profile="local", results=results, nodes=nodes, gpus_per_node=1,
                               cpus_per_task=cpus)
            seconds[nodes] = timed_seconds(_wait(sub, f"pair {i}/{ns.repeats}: {nodes} node(s)", ns.timeout))
        speedups.append(seconds[1] / seconds[NODES])
        say(f"pair {i}/{ns.repeats}: 1 rank {seconds[1]:.2f} s, {NODES} ranks {seconds[NODES]:.2f} s per "
            f"{ns.pair_steps}-step epoch: speedup {speedups[-1]:.2f}x")
    print(f"interleaved pairs:          median speedup {statistics.median(speedups):.2f}x over "
          f"{len(speedups)} pair(s) (each: {', '.join(f'{s:.2f}' for s in speedups)})")


def interleaved(ns: argparse.Namespace, work: Path, data: Path, cpus: int | None) -> None:
    """--interleaved rounds of stockpredict/job/interleaved.py in one 2-node srun step: 1 rank alone and
    2 ranks, alternating every --interleaved-steps steps, so the host's drift cannot bias the ratio."""
    from stockpredict.control import interleaved_launch as probe

    out = work / rundir.INTERLEAVED_SUMMARY
    cmd = probe.srun_command(data, out, nodes=NODES, cpus_per_task=cpus, global_batch=GLOBAL_BATCH,
                             rounds=ns.interleaved, steps=ns.interleaved_steps)
    say(f"interleaved: {' '.join(cmd)}")
    probe.follow(cmd, lambda line: say(f"interleaved: {line}"), ns.timeout)
    say(f"interleaved rounds and medians in {out}")


def summarise(results: Path) -> dict:
    """The numbers the benchmark prints, from the report's own model (build_report on these runs)."""
    built = report.build_report(report.load_runs(results / rundir.RUNS),
                                report.ReportConfig(runs_dir=results / rundir.RUNS, out_dir=results,
                                                    plots=False))
    (section,) = built.sections
    scaling = section.scaling
    if scaling is None or scaling.analysis is None:
        raise UserError(f"no scaling model: {scaling.note if scaling else 'none'}")
    held = scaling.analysis.held_out
    if not held.points:
        raise UserError(f"no held-out check: {held.reason}")
    (point,) = held.points
    train = [p for p in scaling.points if p.kind == "train"]
    (one,) = [p for p in train if p.ranks == 1 and p.batch_size_per_rank == GLOBAL_BATCH]
    affinity = next(r for r in section.runs if r.ranks == NODES)
    return {"measured": point.point.seconds_per_epoch, "predicted": point.predicted_seconds_per_epoch,
            "error": point.error, "one_rank": one.seconds_per_epoch, "steps": point.point.steps,
            "speedup": one.seconds_per_epoch / point.point.seconds_per_epoch, "fit": held.fit,
            "benchmarks": scaling.benchmarks, "run": affinity}


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickers", type=int, default=60, help="synthetic tickers (the demo's default)")
    parser.add_argument("--days", type=int, default=15, help="trading days (the demo's default)")
    parser.add_argument("--epochs", type=int, default=4, help="per training run; the first is warm-up")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (smoke runs)")
    parser.add_argument("--iterations", type=int, default=200, help="allreduces per benchmark epoch")
    parser.add_argument("--lr", type=float, default=demo.DemoConfig.lr)
    parser.add_argument("--work", help="directory for data and runs (default: a new temporary directory)")
    parser.add_argument("--repeats", type=int, default=0,
                        help="then this many interleaved pairs of short runs for a steadier speedup")
    parser.add_argument("--pairs-only", action="store_true",
                        help="run only the --repeats pairs and --interleaved rounds (no study, no report)")
    parser.add_argument("--pair-steps", type=int, default=300, help="steps per epoch of a pair's runs")
    parser.add_argument("--pair-epochs", type=int, default=3, help="epochs of a pair's runs (first untimed)")
    parser.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                        help="then ROUNDS rounds of 1 rank vs 2 ranks alternating inside one job "
                             "(stockpredict/job/interleaved.py): the speedup without the host's drift")
    parser.add_argument("--interleaved-steps", type=int, default=20, help="steps of each kind per round")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per job, queueing included")
    ns = parser.parse_args(argv)
    if ns.epochs < 2 or ns.pair_epochs < 2:
        raise UserError("--epochs and --pair-epochs must be >= 2: the first epoch is warm-up, not timed")
    if ns.pairs_only and not (ns.repeats or ns.interleaved):
        raise UserError("--pairs-only needs --repeats N or --interleaved ROUNDS")
    cores = len(cpu_affinity())
    if cores < NODES:
        say(f"WARNING: {cores} core(s): {NODES} virtual nodes share cores and measure time-sharing")
    work = Path(ns.work).resolve() if ns.work else Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    results = work / "results"
    if not ns.pairs_only and (results / rundir.RUNS).exists() and any((results / rundir.RUNS).iterdir()):
        raise UserError(f"{results / 'runs'} already holds runs: give a fresh --work directory")
    say(f"work directory {work}; {cores} core(s) here")

    config = demo.DemoConfig(tickers=ns.tickers, days=ns.days, data_dir=str(work / "data"))
    data = demo.make_dataset(config)
    env = demo.start_cluster(NODES)
    if env is None:
        raise UserError("the local Slurm cluster did not start (make cluster-up NODES=2 says why)")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    # The jobs (sbatch exports this environment) run this checkout's stockpredict too, as this script does.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    cpus = demo.cores_per_node(env["SLURM_CONF"])
    say(f"pinned virtual nodes, {cpus or 1} core(s) each: one job at a time")
    if ns.pairs_only:
        if ns.repeats:
            interleaved_pairs(ns, work, data, cpus)
        if ns.interleaved:
            interleaved(ns, work, data, cpus)
        return 0
    started = time.monotonic()
    run_all(ns, results, data, cpus)
    status = report.main(["--runs", str(results / rundir.RUNS), "--out", str(results), "--no-plots"])
    if status != 0:
        raise UserError("the report failed; see the messages above")
    numbers = summarise(results)
    fit, run = numbers["fit"], numbers["run"]
    affinities = run.hardware.get("cpu_affinity_by_rank") if isinstance(run.hardware, dict) else None
    say(f"all runs in {time.monotonic() - started:.0f} s; report {results / rundir.REPORT_MARKDOWN}")
    say(f"the 2-rank run's cores by rank: {affinities if affinities else 'not recorded'}")
    say(f"model without the 2-rank training run: overhead {fit.overhead_s * 1e3:.2f} ms/step, "
        f"{fit.per_sample_s * 1e6:.1f} us/sample, latency {fit.latency_s * 1e3:.3f} ms per ring step "
        f"(benchmarks: {', '.join(numbers['benchmarks']) or 'none'})")
    print(f"measured 2-rank epoch:      {numbers['measured']:.3f} s ({numbers['steps']} steps of global "
          f"batch {GLOBAL_BATCH})")
    print(f"predicted (1-rank + bench): {numbers['predicted']:.3f} s")
    print(f"error:                      {numbers['error'] * 100:+.1f} %  (goal: within 15 %)")
    print(f"measured 2-node speedup:    {numbers['speedup']:.2f}x  (1 rank: {numbers['one_rank']:.3f} s; "
          f"goal >= 1.6x)")
    if ns.repeats:
        interleaved_pairs(ns, work, data, cpus)
    if ns.interleaved:
        interleaved(ns, work, data, cpus)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(_main, sys.argv[1:]))
