"""Accuracy against the known optimum: train the seed's LSTM with plain Keras (one process, no Horovod) on a
synthetic universe and print the test skill over persistence, in price units, next to the best achievable.

    .venv/bin/python benchmarks/bench_accuracy.py --work /tmp/acc            # mean-reverting, prices 10-900
    .venv/bin/python benchmarks/bench_accuracy.py --work /tmp/acc-rw --random-walk
    .venv/bin/python benchmarks/bench_accuracy.py --work /tmp/acc --representation seed --lr 1e-4 --batch 32

Steps: write the universe (preprocess.synthetic, with optimum.json) and preprocess it (preprocess.pipeline),
each only when absent; load the train/val/test splits into memory; fit (Adam, MSE, shuffled; optional early
stopping on val loss keeping the best weights); score val after every epoch and test at the end with
stockpredict.metrics (forecasts converted to prices by the file's transform). A least-squares forecast on
the window's close inputs is printed as a reference (the window-limited optimum, estimated on this data).
Results: docs/data.md, "Accuracy".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocess.pipeline import build_dataset  # noqa: E402
from preprocess.preprocess_config import PreprocessConfig  # noqa: E402
from preprocess.synthetic import write_universe  # noqa: E402
from stockpredict.common import metrics  # noqa: E402
from stockpredict.common.sequences import read_sequences_info  # noqa: E402

# The kind of universe: tickers priced 10 to 900 with their own phi and volatilities; 34 tickers x
# 21 days (15 train days, minus the windows the vendor mess drops) give about 140,000 training windows.
MEAN_REVERTING = {"tickers": 34, "days": 21, "price_min": 10.0, "price_max": 900.0, "phi_spread": 0.1,
                  "vol_spread": 0.5}
# A pure random walk (no deviation) with a realistic per-minute volatility: nothing to learn, optimum 0.
RANDOM_WALK = {**MEAN_REVERTING, "deviation_vol": 0.0, "fair_vol": 0.0008}


def prepare(work: Path, universe: dict, seed: int, representation: str) -> Path:
    """The sequences file of this universe and representation under `work` (built when absent)."""
    raw = work / "raw"
    if not (raw / "optimum.json").exists():
        write_universe(raw, seed=seed, **universe)
    out = work / f"sequences-{representation}.h5"
    if not out.exists():
        build_dataset(raw, out, PreprocessConfig(representation=representation), workers=1, progress=False)
    return out


def load(path: Path, split: str) -> dict:
    from stockpredict.common.reader import load_split  # every schema

    return load_split(path, split)


def score(pred: np.ndarray, data: dict, transform) -> dict:
    sums = metrics.shard_sums(pred, data["y"], data["last_close"], data["ticker"], transform)
    return metrics.metrics_from_sums(sums)


def least_squares_reference(train: dict, test: dict, close: int, transform) -> float:
    """Test skill of y ~ window's close inputs (+ intercept), fitted on train: a linear model's reach."""
    design = lambda d: np.column_stack([d["x"][:, :, close], np.ones(len(d["y"]))])  # noqa: E731
    weights, *_ = np.linalg.lstsq(design(train), train["y"].astype(np.float64), rcond=None)
    return score(design(test) @ weights, test, transform)["skill"]


def oracle_window_skill(raw: Path, path: Path, data: dict, info) -> float | None:
    """Test skill of the best window forecast with the TRUE per-ticker parameters (optimum.json): what
    the window-limited optimum reaches on these particular test windows (sampling noise included)."""
    import h5py

    from preprocess.optimum import TickerProcess, window_forecast

    record = json.loads((raw / "optimum.json").read_text())
    with h5py.File(path, "r") as h5:
        names = [t.decode() if isinstance(t, bytes) else t for t in h5["tickers"][()]]
        horizon = int(h5.attrs["horizon"])
    keys = ("phi", "deviation_vol", "fair_vol", "overnight_vol")
    processes = [TickerProcess(**{k: record["files"][f"{n}.csv"][k] for k in keys}) for n in names]
    coefficients, _ = window_forecast(processes, horizon, info.seq_len)
    close = info.close_index
    prices = info.transform.inputs_inverse(data["x"], data["last_close"], data["ticker"])[:, :, close]
    log_rel = np.log(prices[:, :-1] / data["last_close"][:, None])
    log_return = np.sum(coefficients[data["ticker"]] * log_rel, axis=1)
    pred = info.transform.target_forward(data["last_close"] * np.exp(log_return), data["last_close"],
                                         data["ticker"])
    return score(pred, data, info.transform)["skill"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="directory for the universe and files")
    parser.add_argument("--random-walk", action="store_true", help="a pure random walk (optimum 0)")
    parser.add_argument("--data-seed", type=int, default=1, help="seed of the synthetic universe")
    parser.add_argument("--representation", default="returns", choices=("returns", "seed"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.3, help="the seed model's dropout")
    parser.add_argument("--decay", choices=("none", "cosine"), default="none",
                        help="cosine: the learning rate falls from --lr to 0 over the run (per step)")
    parser.add_argument("--patience", type=int, default=0, help="early stopping on val loss (0: off)")
    parser.add_argument("--seed", type=int, default=0, help="weights and shuffling")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra/inter-op threads")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    path = prepare(args.work, RANDOM_WALK if args.random_walk else MEAN_REVERTING, args.data_seed,
                   args.representation)
    info = read_sequences_info(path)
    train, val, test = (load(path, s) for s in ("train", "val", "test"))
    print(f"data: {path} ({info.windows}, representation {info.representation}) "
          f"prepared in {time.perf_counter() - started:.1f} s", flush=True)
    best = info.optimum or {}
    print(f"optimum: kalman skill {best.get('kalman_skill')}, window skill {best.get('window_skill')}")
    print(f"true-parameter window forecast: test skill "
          f"{oracle_window_skill(args.work / 'raw', path, test, info):.4f}")
    print(f"least squares on the window's closes: test skill "
          f"{least_squares_reference(train, test, info.close_index, info.transform):.4f}", flush=True)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from stockpredict.job.model import build_model

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.keras.utils.set_random_seed(args.seed)
    model = build_model(info.seq_len, info.n_features, dropout=args.dropout,
                        representation=info.representation)
    lr = args.lr
    if args.decay == "cosine":
        lr = tf.keras.optimizers.schedules.CosineDecay(args.lr, args.epochs * (len(train["y"]) // args.batch))
    model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="mse")

    class ValSkill(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            pred = self.model.predict(val["x"], batch_size=8192, verbose=0)
            m = score(pred, val, info.transform)
            print(f"epoch {epoch + 1}: loss {logs['loss']:.4f} val_loss {logs['val_loss']:.4f} "
                  f"val skill {m['skill']:.4f} ({time.perf_counter() - fit_start:.0f} s)", flush=True)

    callbacks = [ValSkill()]
    if args.patience:
        callbacks.append(tf.keras.callbacks.EarlyStopping(patience=args.patience, restore_best_weights=True))
    fit_start = time.perf_counter()
    model.fit(train["x"], train["y"], batch_size=args.batch, epochs=args.epochs, shuffle=True,
              validation_data=(val["x"], val["y"]), callbacks=callbacks, verbose=0)
    fit_seconds = time.perf_counter() - fit_start
    result = score(model.predict(test["x"], batch_size=8192, verbose=0), test, info.transform)
    ratio = metrics.skill_of_optimum(result["skill"], info.optimum)
    summary = {"representation": info.representation, "random_walk": args.random_walk,
               "train_windows": info.windows["train"], "epochs": args.epochs, "batch": args.batch,
               "lr": args.lr, "dropout": args.dropout, "decay": args.decay, "patience": args.patience,
               "seed": args.seed,
               "fit_seconds": round(fit_seconds, 1),
               "test_skill": round(result["skill"], 4), "kalman_skill": best.get("kalman_skill"),
               "skill_of_optimum": None if ratio is None else round(ratio, 3),
               "rmse_price": round(result["rmse_price"], 5),
               "persistence_rmse_price": round(result["persistence_rmse_price"], 5),
               "direction_accuracy": round(result["direction_accuracy"], 4)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
