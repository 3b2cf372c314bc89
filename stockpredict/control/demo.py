"""`make demo`: the whole scaling study on this machine, end to end, with the commands it stands for.

    python -m stockpredict.demo [--tickers 60 --days 15 --epochs 4 --global-batch 256 --nodes-list "1 2"]

1. a synthetic S&P 500-like universe        (make data)        -> data/demo/raw/<TICKER>.csv
2. preprocessing to windowed sequences      (make preprocess)  -> data/demo/sequences.h5
3. the local Slurm cluster, 4 virtual nodes (make cluster-up)  -- or, when it cannot start (not root,
   no Slurm packages), Horovod ranks started with `horovodrun --gloo` on this machine
4. a strong-scaling sweep: the same global batch on 1, 2 and 4 nodes (1 rank and 1 fake GPU per node),
   keeping only the node counts this machine has cores for (1 and 2 on 2 cores): each virtual node runs
   on cores of its own (slurm/local-cluster.sh pins it), so more nodes than cores would time-share
   instead of scale. One job at a time, so runs never share cores either.
5. what the report's scaling model needs beyond the sweep, each as an ordinary run (about half a
   minute at the default size): one short 1-rank run at a second batch size (global batch / 2, the 2-node
   run's per-rank batch; `--max-steps` steps per epoch), so the compute fit sees two batch sizes, and the
   2-node allreduce microbenchmark (make allreduce-bench NODES=2)
6. with 2 nodes in the sweep: 1 rank against 2 nodes inside one 2-node srun step, alternating every 20 steps
   (stockpredict/job/interleaved.py)                              -> results/interleaved.json: the speedup
   without the host's drift, which a sweep's runs minutes apart carry
7. the report                               (make report)      -> results/scaling.md, CSVs, PNGs, and the
   model's held-out check printed last: the largest node count's runs predicted from the others (on 2
   cores: the 2-node run predicted from the 1-rank runs and the allreduce benchmark)

The default size finishes in about 10-15 minutes on 2 cores. Each run is an ordinary run directory in
results/runs/, so `make report` later includes the demo next to your own runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

from stockpredict import report
from stockpredict.common import rundir
from stockpredict.common.benchmarks import BenchConfig
from stockpredict.common.checkout import REPO
from stockpredict.common.errors import UserError, parse_int_list, run_cli
from stockpredict.common.hardware import cpu_affinity, usable_node_counts
from stockpredict.common.identity import dataset_identity
from stockpredict.common.logs import get_logger
from stockpredict.common.train_config import TrainConfig
from stockpredict.control import slurmjobs
from stockpredict.control.follow import EpochPrinter
from stockpredict.control.submit import new_run_dir, submit_allreduce, submit_train
from stockpredict.report.keys import FINGERPRINT_SHOWN

log = get_logger("stockpredict.demo")
CLUSTER_SCRIPT = REPO / "slurm" / "local-cluster.sh"
CLUSTER_CONF = REPO / ".cluster" / "etc" / "slurm.conf"


@dataclass(frozen=True)
class DemoConfig:
    """Size of the demo study. The defaults are sized for about 10-15 minutes on 2 cores."""

    tickers: int = 60                     # synthetic tickers (the full S&P scale is 503)
    days: int = 15                        # trading days; 70/20/10 chronological split of these
    seed: int = 0                         # synthetic data seed
    epochs: int = 4                       # epoch 1 is warm-up, so 3 epochs are timed per run
    global_batch: int = 256               # fixed across rank counts (strong scaling)
    # The seed's base LR 1e-4 goes with its ~24,000 steps of batch 32 per epoch; the demo runs a few
    # hundred steps per epoch, so Adam gets 1e-3 (still scaled x ranks by the trainer, with warm-up).
    lr: float = 1e-3
    # Min-max per ticker (fitted on train days): prices of different tickers share one [0, 1] scale, so
    # a small model learns the same 5-minute dynamics for all of them. `make preprocess` defaults to global.
    normalize: str = "per_ticker"
    # The short 1-rank run at a second batch size (global_batch / 2): its steps per epoch. Enough for a
    # per-step time (epoch 1 is warm-up), few enough to add seconds, not minutes.
    second_batch_steps: int = 50
    second_batch_epochs: int = 3          # 1 warm-up + 2 timed
    allreduce_iterations: int = 200       # allreduces per epoch of the 2-node benchmark (3 epochs)
    # 1 rank vs 2 nodes in one job (stockpredict/job/interleaved.py): rounds, and steps of each per round.
    # 15 x 20 takes about a minute at the default size; 0 rounds skips it.
    interleaved_rounds: int = 15
    interleaved_steps: int = 20
    # None: 1, 2 and 4, keeping those with a core per virtual node on this machine (choose_node_counts)
    nodes_list: tuple[int, ...] | None = None
    data_dir: str = "data/demo"
    results: str = "results"
    job_timeout_s: float = 1800.0         # per training job, queueing included
    force_local: bool = False             # skip Slurm and use horovodrun even when a cluster could start


DEFAULT_NODE_COUNTS = (1, 2, 4)


def say(step: str, message: str) -> None:
    print(f"demo [{step}] {message}", flush=True)


def choose_node_counts(requested: tuple[int, ...] | None, cpus: int) -> tuple[tuple[int, ...], str]:
    """The node counts to sweep and why. Each virtual node gets its own core(s), so a count above the
    machine's cores would make nodes share cores: it measures time-sharing, not scaling. By default those
    counts are left out; an explicit --nodes-list is kept as asked, with a warning."""
    if requested is None:
        fits, dropped = usable_node_counts(DEFAULT_NODE_COUNTS, cpus)
        why = f"this machine has {cpus} core(s) and each virtual node gets its own"
        if dropped:
            return tuple(fits), (f"sweeping {', '.join(map(str, fits))} node(s): {why}; "
                                 f"{', '.join(map(str, dropped))} nodes would share cores and time-share "
                                 f"instead of scaling, so they are left out")
        return tuple(fits), f"sweeping {', '.join(map(str, fits))} node(s): {why}"
    _, shared = usable_node_counts(requested, cpus)
    if shared:
        return requested, (f"sweeping {', '.join(map(str, requested))} node(s) as asked; WARNING: with "
                           f"{cpus} core(s), {', '.join(map(str, shared))} nodes share cores, so their "
                           f"times show time-sharing, not scaling")
    return requested, f"sweeping {', '.join(map(str, requested))} node(s) as asked ({cpus} core(s) here)"


def cores_per_node(slurm_conf: str | Path) -> int | None:
    """CPUs of one virtual node in the local cluster's slurm.conf (the cores it is pinned to)."""
    try:
        text = Path(slurm_conf).read_text()
    except OSError:
        return None
    match = re.search(r"^NodeName=.*\bCPUs=(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def second_batch(global_batch: int) -> int:
    """The per-rank batch of the short 1-rank run: half the global batch (the 2-node strong run's
    per-rank batch), or twice it when halving leaves nothing."""
    return global_batch // 2 or 2 * global_batch


def held_out_lines(markdown: str, fingerprint_prefix: str | None = None) -> list[str]:
    """The held-out check of scaling.md: its "**Held-out check.**" line and the table under it, from the
    section of the dataset whose fingerprint starts with `fingerprint_prefix` (any section without one).
    Empty when the report has none."""
    sections = markdown.split("\n## ")
    if fingerprint_prefix:
        sections = [s for s in sections if f"fingerprint {fingerprint_prefix}" in s.split("\n", 1)[0]]
    for section in sections:
        lines = section.splitlines()
        for index, line in enumerate(lines):
            if line.startswith("**Held-out check.**"):
                found = [line]
                rest = lines[index + 1:]
                while rest and not rest[0].strip():
                    rest = rest[1:]
                while rest and rest[0].startswith("|"):
                    found.append(rest.pop(0))
                return found
    return []


def make_dataset(config: DemoConfig) -> Path:
    """Steps 1 and 2: synthetic CSVs and the HDF5 sequences file (rebuilt only when missing)."""
    from preprocess.pipeline import build_dataset
    from preprocess.preprocess_config import PreprocessConfig
    from preprocess.synthetic import write_universe

    data_dir = REPO / config.data_dir if not Path(config.data_dir).is_absolute() else Path(config.data_dir)
    raw, sequences = data_dir / "raw", data_dir / "sequences.h5"
    marker = data_dir / f"universe-{config.tickers}x{config.days}-seed{config.seed}-{config.normalize}"
    if sequences.exists() and marker.exists():
        say("data", f"reusing {sequences} (delete {data_dir} to rebuild)")
        return sequences
    shutil.rmtree(data_dir, ignore_errors=True)
    say("data", f"writing {config.tickers} tickers x {config.days} days of minute bars to {raw} "
                f"(make data RAW={raw} TICKERS={config.tickers} DAYS={config.days} SEED={config.seed})")
    write_universe(raw, tickers=config.tickers, days=config.days, seed=config.seed)
    say("preprocess", f"windowing into {sequences} (make preprocess RAW={raw} OUT={sequences} "
                      f"PREPROCESS_ARGS='--normalize {config.normalize.replace('_', '-')}')")
    summary = build_dataset(raw, sequences, PreprocessConfig(normalize=config.normalize), progress=False)
    print(summary.table(), flush=True)
    marker.touch()
    return sequences


def start_cluster(nodes: int) -> dict | None:
    """Step 3: the environment for Slurm clients, or None when the local cluster cannot start."""
    proc = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up", str(nodes)], capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["unknown reason"]
        say("cluster", f"local Slurm cluster unavailable ({reason[0]}); using horovodrun on this machine")
        return None
    say("cluster", f"local Slurm cluster up, at least {nodes} nodes (make cluster-up NODES={nodes})")
    return dict(os.environ, SLURM_CONF=str(CLUSTER_CONF))


def run_on_slurm(config: DemoConfig, data: Path, env: dict) -> list[Path]:
    """Step 4 on Slurm: one job per node count, each waited for before the next is submitted."""
    os.environ.update(SLURM_CONF=env["SLURM_CONF"])
    # One intra-op thread per core a virtual node owns (the profile's default is 1).
    cpus = cores_per_node(env["SLURM_CONF"])
    run_dirs = []
    for nodes in config.nodes_list:
        per_rank = config.global_batch // nodes
        train = TrainConfig(data=str(data), run_dir="", batch_size=per_rank, epochs=config.epochs,
                            lr=config.lr, mode="strong")
        sub = submit_train(train, profile="local", results=REPO / config.results, nodes=nodes,
                           gpus_per_node=1, cpus_per_task=cpus)
        say("train", f"{nodes} node(s), batch {per_rank}/rank: "
                     f"Submitted batch job {sub.job_id} -> {sub.run_dir} "
                     f"(make submit NODES={nodes} GPUS=1 BATCH={per_rank} EPOCHS={config.epochs}, "
                     f"--lr {config.lr})")
        # Never silent while a job runs: each finished epoch, as the trainer logged it.
        printer = EpochPrinter(sub.run_dir, label=f"demo [train] {nodes} node(s)")
        state = slurmjobs.wait_for_jobs([sub.job_id], config.job_timeout_s, on_poll=printer)[sub.job_id]
        if state != "COMPLETED":
            raise UserError(f"training job {sub.job_id} ended {state}; "
                            f"see {sub.run_dir}/slurm-{sub.job_id}.out")
        run_dirs.append(sub.run_dir)
    run_dirs += model_inputs_on_slurm(config, data, cpus)
    interleaved_on_slurm(config, data, cpus)
    return run_dirs


def interleaved_on_slurm(config: DemoConfig, data: Path, cpus: int | None) -> dict | None:
    """Step 6: 1 rank against 2 nodes, alternating inside one srun step; the summary it wrote, or None
    when skipped (no 2-node count in the sweep, or --interleaved-rounds 0) or when it failed: it is a
    check beside the sweep, so its failure is reported and the report still gets built from the runs."""
    if 2 not in config.nodes_list or config.interleaved_rounds < 1:
        say("interleaved", "skipped: " + ("--interleaved-rounds 0" if config.interleaved_rounds < 1
                                          else "the sweep has no 2-node run"))
        return None
    import json

    from stockpredict.control import interleaved_launch as interleaved

    out = REPO / config.results / rundir.INTERLEAVED_SUMMARY
    cmd = interleaved.srun_command(data, out, nodes=2, cpus_per_task=cpus, global_batch=config.global_batch,
                                   rounds=config.interleaved_rounds, steps=config.interleaved_steps)
    say("interleaved", f"1 rank vs 2 nodes inside one job, alternating every {config.interleaved_steps} "
                       f"steps, so this host's drift cancels in each round's ratio: {' '.join(cmd[:6])} "
                       f"python -m stockpredict.interleaved ...")
    try:
        interleaved.follow(cmd, lambda line: say("interleaved", line), config.job_timeout_s)
        summary = json.loads(out.read_text())
    except (UserError, OSError, ValueError) as err:
        say("interleaved", f"FAILED, the report follows without it: {err}")
        return None
    say("interleaved", f"speedup {summary['speedup']:.2f}x on 2 nodes at global batch {config.global_batch} "
                       f"(median of {len(summary['one_rank_ms'])} rounds) -> {out}")
    return summary


def model_inputs_on_slurm(config: DemoConfig, data: Path, cpus: int | None) -> list[Path]:
    """Step 5 on Slurm: the short 1-rank run at a second batch size, then (with 2 or more nodes in the
    sweep) the 2-node allreduce benchmark. One job at a time, as in the sweep."""
    results = REPO / config.results
    batch = second_batch(config.global_batch)
    train = TrainConfig(data=str(data), run_dir="", batch_size=batch, epochs=config.second_batch_epochs,
                        lr=config.lr, max_steps=config.second_batch_steps)
    sub = submit_train(train, profile="local", results=results, nodes=1, gpus_per_node=1, cpus_per_task=cpus)
    say("train", f"1 node, batch {batch}/rank, {config.second_batch_steps} steps per epoch, the compute "
                 f"fit's second batch size: Submitted batch job {sub.job_id} -> {sub.run_dir} "
                 f"(make submit NODES=1 GPUS=1 BATCH={batch} EPOCHS={config.second_batch_epochs}, "
                 f"--max-steps {config.second_batch_steps})")
    run_dirs = [_wait_for(sub, "training", config)]
    if max(config.nodes_list) < 2:
        say("allreduce", "no allreduce benchmark: the sweep has no multi-node run to predict")
        return run_dirs
    bench = BenchConfig(run_dir="", iterations=config.allreduce_iterations, data=str(data))
    sub = submit_allreduce(bench, profile="local", results=results, nodes=2, cpus_per_task=cpus)
    say("allreduce", f"2 nodes, {bench.iterations} allreduces of the model's gradients per epoch: Submitted "
                     f"batch job {sub.job_id} -> {sub.run_dir} (make allreduce-bench NODES=2 "
                     f"ITERATIONS={bench.iterations})")
    return run_dirs + [_wait_for(sub, "allreduce benchmark", config)]


def _wait_for(sub, what: str, config: DemoConfig) -> Path:
    printer = EpochPrinter(sub.run_dir, label=f"demo [{what}]")
    state = slurmjobs.wait_for_jobs([sub.job_id], config.job_timeout_s, on_poll=printer)[sub.job_id]
    if state != "COMPLETED":
        raise UserError(f"{what} job {sub.job_id} ended {state}; see {sub.run_dir}/slurm-{sub.job_id}.out")
    return sub.run_dir


def run_with_horovodrun(config: DemoConfig, data: Path) -> list[Path]:
    """Steps 4 and 5 without Slurm: the same runs as local Horovod ranks (Gloo), one rank per 'node'."""
    runs = REPO / config.results / rundir.RUNS
    run_dirs = []
    for ranks in config.nodes_list:
        per_rank = config.global_batch // ranks
        run_dir = new_run_dir(runs, f"n1-g0-b{per_rank}-local{ranks}")
        train = TrainConfig(data=str(data), run_dir=str(run_dir), batch_size=per_rank, epochs=config.epochs,
                            lr=config.lr, mode="strong", threads=1)
        run_dirs.append(_horovodrun(ranks, ["stockpredict.train", *train.to_argv()], run_dir,
                                    "train", f"{ranks} rank(s), batch {per_rank}/rank"))
    batch = second_batch(config.global_batch)
    run_dir = new_run_dir(runs, f"n1-g0-b{batch}-local1")
    train = TrainConfig(data=str(data), run_dir=str(run_dir), batch_size=batch,
                        epochs=config.second_batch_epochs, lr=config.lr, max_steps=config.second_batch_steps,
                        threads=1)
    run_dirs.append(_horovodrun(1, ["stockpredict.train", *train.to_argv()], run_dir, "train",
                                f"1 rank, batch {batch}/rank, {config.second_batch_steps} steps per epoch "
                                f"(the compute fit's second batch size)"))
    if 2 in config.nodes_list and config.interleaved_rounds:
        say("interleaved", "skipped: it runs as a 2-node srun step, and there is no Slurm cluster here")
    if max(config.nodes_list) >= 2:
        run_dir = new_run_dir(runs, "allreduce-local2")
        argv = ["stockpredict.allreduce_bench", "--run-dir", str(run_dir), "--iterations",
                str(config.allreduce_iterations), "--data", str(data)]
        run_dirs.append(_horovodrun(2, argv, run_dir, "allreduce",
                                    f"2 ranks, {config.allreduce_iterations} allreduces per epoch"))
    return run_dirs


def _horovodrun(ranks: int, argv: list[str], run_dir: Path, step: str, what: str) -> Path:
    """Run `python -m <argv>` on `ranks` local Horovod ranks; its output goes to run_dir/horovodrun.out."""
    horovodrun = Path(sys.executable).with_name("horovodrun")
    cmd = [str(horovodrun), "-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo",
           sys.executable, "-m", *argv]
    say(step, f"{what}: {' '.join(cmd[:6])} ... -> {run_dir}")
    with open(run_dir / "horovodrun.out", "w") as out:
        status = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if status != 0:
        raise UserError(f"horovodrun with {ranks} ranks failed (exit {status}); see {run_dir}/horovodrun.out")
    return run_dir


def run_demo(config: DemoConfig) -> list[Path]:
    """The whole study; returns the report's files."""
    nodes_list, why = choose_node_counts(config.nodes_list, len(cpu_affinity()))
    config = dataclasses.replace(config, nodes_list=nodes_list)
    say("nodes", why)
    for nodes in config.nodes_list:
        if config.global_batch % nodes:
            raise UserError(f"global batch {config.global_batch} does not divide over {nodes} nodes")
    data = make_dataset(config)
    env = None if config.force_local else start_cluster(max(config.nodes_list))
    run_dirs = run_on_slurm(config, data, env) if env else run_with_horovodrun(config, data)
    say("report", f"{len(run_dirs)} runs done; building the report (make report)")
    results = REPO / config.results
    status = report.main(["--runs", str(results / rundir.RUNS), "--out", str(results)])
    if status != 0:
        raise UserError("the report failed; see the messages above")
    outputs = sorted(p for p in results.iterdir() if p.suffix in (".md", ".csv", ".png"))
    say("done", f"open {results / rundir.REPORT_MARKDOWN} (tables and plots); the CSV files beside it hold "
                f"the same tables; each run's logs, model and metrics are in "
                f"{results / rundir.RUNS}/<run-id>/")
    if env:
        say("cluster", "the local Slurm cluster stays up for your own make submit; "
                       "make cluster-down stops it")
    # Last, the check a reader should see: the largest node count's runs predicted from the others.
    prefix = dataset_identity(data)["fingerprint"][:FINGERPRINT_SHOWN]
    check = held_out_lines((results / rundir.REPORT_MARKDOWN).read_text(), prefix)
    say("model", f"the scaling model's held-out check for this dataset ({prefix}), from "
                 f"{results / rundir.REPORT_MARKDOWN}:")
    print("\n".join(check) if check else "(no held-out check in the report: see its scaling model section)",
          flush=True)
    return outputs


def _main(argv: Sequence[str] | None) -> int:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(prog="python -m stockpredict.demo", description=__doc__.split("\n")[0])
    for f in fields(DemoConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "nodes_list":
            parser.add_argument(flag, default=None,
                                help='e.g. "1 2 4" (default: 1, 2, 4 where this machine has a core per node)')
        elif f.name == "force_local":
            parser.add_argument(flag, action="store_true", help="use horovodrun even if Slurm could start")
        else:
            parser.add_argument(flag, type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    ns = parser.parse_args(argv)
    if ns.nodes_list is not None:
        ns.nodes_list = tuple(parse_int_list(ns.nodes_list, "--nodes-list"))
    if ns.nodes_list is not None and min(ns.nodes_list) < 1:
        raise UserError(f"--nodes-list must hold positive integers, got {ns.nodes_list}")
    if ns.interleaved_rounds < 0:
        raise UserError("--interleaved-rounds must be >= 0 (0 skips the interleaved step)")
    for name in ("tickers", "days", "epochs", "global_batch", "second_batch_steps", "allreduce_iterations",
                 "interleaved_steps"):
        if getattr(ns, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if ns.second_batch_epochs < 2:
        raise UserError("--second-batch-epochs must be >= 2: the first epoch is warm-up and is not timed")
    run_demo(DemoConfig(**vars(ns)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
