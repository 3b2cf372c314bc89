"""Accuracy goals of issue 11, measured with the real trainer (stockpredict.train, Horovod), not plain Keras.

    .venv/bin/python benchmarks/bench_accuracy_trainer.py --work /tmp/acct                # cases a, b, c
    .venv/bin/python benchmarks/bench_accuracy_trainer.py --work /tmp/acct --cases b --lr 5e-4

Cases (docs/training.md, "Accuracy"):
  a  one rank, the trainer's defaults, on the mean-reverting universe (goal: skill >= 0.9 x Kalman optimum)
  b  two Horovod ranks (horovodrun --gloo on this host) at the same global batch as a (per-rank batch
     128 / 2 = 64); the trainer scales the learning rate by the ranks unless --lr is given (goal: >= 0.85 x)
  c  one rank, defaults, on a pure random walk (optimum 0; goal: skill >= -0.02)

The universes are the ones benchmarks/bench_accuracy.py trains on, built through the command lines a user
runs: `python -m preprocess.synthetic` (34 tickers x 21 days, prices 10-900, --phi-spread 0.1 --vol-spread
0.5, seed 1; the random walk has --deviation-vol 0 --fair-vol 0.0008), then `python -m preprocess`. Each
file and each run directory is made only when absent (a run without metrics.json is continued with
--resume), so an interrupted benchmark continues where it stopped. The numbers come from each run's
logs: test skill from run_end (timing.jsonl), the optimum from run_start. Runs one after another (each
takes minutes on 2 cores). Prints a table and one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stockpredict.common import rundir  # noqa: E402

# Per-ticker parameters, prices 10 to 900, about 140,000 training windows (docs/data.md, "Accuracy").
UNIVERSE = ["--tickers", "34", "--days", "21", "--price-min", "10", "--price-max", "900",
            "--phi-spread", "0.1", "--vol-spread", "0.5"]
# No mean-reverting deviation, a realistic per-minute volatility: nothing to learn.
RANDOM_WALK = UNIVERSE + ["--deviation-vol", "0", "--fair-vol", "0.0008"]
GOALS = {"a": 0.9, "b": 0.85}  # skill / Kalman optimum
RANDOM_WALK_GOAL = -0.02       # skill on the random walk


def run(command: list[str], log: Path) -> None:
    """Run one command from the repository root, its output into `log`; a one-line error if it fails."""
    print("$ " + " ".join(command), flush=True)
    with open(log, "w") as out:
        status = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise SystemExit(f"error: the command above exited {status}; its output is in {log}")


def dataset(work: Path, name: str, universe: list[str], seed: int, python: str) -> Path:
    """The sequences file of one universe under `work` (generated and preprocessed when absent)."""
    raw, out = work / f"{name}-raw", work / f"{name}.h5"
    if not (raw / "optimum.json").exists():
        run([python, "-m", "preprocess.synthetic", "--out", str(raw), "--seed", str(seed), *universe],
            log=work / f"{name}-synthetic.log")
    if not out.exists():
        run([python, "-m", "preprocess", "--raw", str(raw), "--out", str(out), "--no-progress"],
            log=work / f"{name}-preprocess.log")
    return out


def summary(run_dir: Path) -> dict:
    """What one completed run measured, from its timing log (run_start, last run_end)."""
    events = [json.loads(line) for line in (run_dir / rundir.TIMING_LOG).read_text().splitlines() if line]
    start = next(e for e in events if e["event"] == "run_start")
    end = [e for e in events if e["event"] == "run_end"][-1]
    if end["status"] != "completed":
        raise SystemExit(f"error: {run_dir} ended {end['status']}")
    test, optimum = end["test"], start.get("optimum") or {}
    kalman = optimum.get("kalman_skill")
    epochs = [e for e in events if e["event"] == "epoch"]
    return {"ranks": start["ranks"], "global_batch": start["global_batch_size"],
            "batch_per_rank": start["batch_size_per_rank"], "learning_rate": start["learning_rate"],
            "epochs": start["epochs"], "warmup_epochs": start["config"].get("warmup_epochs"),
            "train_windows": start["windows"]["train"], "skill": test["skill"],
            "kalman_skill": kalman, "window_skill": optimum.get("window_skill"),
            "skill_of_optimum": test["skill"] / kalman if kalman else None,
            "rmse_price": test["rmse_price"], "persistence_rmse_price": test["persistence_rmse_price"],
            "direction_accuracy": test["direction_accuracy"],
            "val_loss": [e["val_loss"] for e in epochs],
            "train_seconds": round(sum(e["train_seconds"] for e in epochs), 1),
            "total_seconds": end["total_seconds"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="directory for the data and run dirs")
    parser.add_argument("--cases", default="abc", help="which cases to run, e.g. 'ab' or 'c'")
    parser.add_argument("--data-seed", type=int, default=1, help="seed of the synthetic universes")
    parser.add_argument("--lr", type=float, default=None,
                        help="case b only: --lr for the trainer (default: the trainer's, scaled by ranks)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the project installed")
    parser.add_argument("--horovodrun", default=str(Path(sys.executable).parent / "horovodrun"))
    args = parser.parse_args(argv)
    if set(args.cases) - set("abc"):
        parser.error("--cases: letters a, b, c only")

    args.work.mkdir(parents=True, exist_ok=True)
    train = [args.python, "-m", "stockpredict.train"]
    results = {}
    for case in sorted(set(args.cases)):
        data = dataset(args.work, "random-walk" if case == "c" else "mean-reverting",
                       RANDOM_WALK if case == "c" else UNIVERSE, args.data_seed, args.python)
        suffix = f"-lr{args.lr:g}" if case == "b" and args.lr is not None else ""
        run_dir = args.work / f"run-{case}{suffix}"
        if case == "b":
            command = [args.horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", *train,
                       "--data", str(data), "--run-dir", str(run_dir), "--batch-size", "64"]
            command += ["--lr", str(args.lr)] if args.lr is not None else []
        else:
            command = train + ["--data", str(data), "--run-dir", str(run_dir)]
        if not (run_dir / rundir.METRICS).exists():
            started = time.perf_counter()
            # --resume: a run this script started before and that was interrupted continues (the trainer
            # starts fresh when the directory holds no checkpoint).
            run(command + ["--resume"], log=args.work / f"run-{case}{suffix}.log")
            print(f"case {case}: {time.perf_counter() - started:.0f} s wall", flush=True)
        results[case] = {"case": case, "command": " ".join(command), **summary(run_dir)}
        print(json.dumps(results[case]), flush=True)

    print("\n| case | ranks | global batch | lr | test skill | Kalman optimum | x optimum | goal |")
    print("|---|---|---|---|---|---|---|---|")
    for case, r in results.items():
        if case == "c":
            goal = f"skill >= {RANDOM_WALK_GOAL}: {'met' if r['skill'] >= RANDOM_WALK_GOAL else 'NOT met'}"
        else:
            ok = r["skill_of_optimum"] is not None and r["skill_of_optimum"] >= GOALS[case]
            goal = f">= {GOALS[case]} x: {'met' if ok else 'NOT met'}"
        ratio = "-" if r["skill_of_optimum"] is None else f"{r['skill_of_optimum']:.3f}"
        print(f"| {case} | {r['ranks']} | {r['global_batch']} | {r['learning_rate']:g} | {r['skill']:.4f} "
              f"| {r['kalman_skill']} | {ratio} | {goal} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
