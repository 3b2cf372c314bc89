"""The model learns what is learnable: the seed's LSTM, trained with plain Keras on the default (returns)
representation of a small synthetic universe, beats persistence by a good share of the known optimum, and
does no harm on a random walk. Scored on the test split, in price units, by stockpredict.common.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.pipeline import build_dataset
from preprocess.preprocess_config import PreprocessConfig
from preprocess.synthetic import write_universe
from stockpredict.common import metrics
from stockpredict.common.reader import load_split
from stockpredict.common.sequences import read_sequences_info

# A strong signal: phi 0.5 makes about half of the 5-minute move predictable. Short windows (20 minutes
# carry all of it at phi 0.5) keep the test fast.
STRONG = {"tickers": 6, "days": 10, "phi": 0.5, "phi_spread": 0.1, "vol_spread": 0.3, "price_min": 10.0,
          "price_max": 900.0}
RANDOM_WALK = {**STRONG, "deviation_vol": 0.0, "fair_vol": 0.0008}


def _train_and_score(root, universe: dict, epochs: int = 3) -> tuple[float, dict | None]:
    import tensorflow as tf

    from stockpredict.job.model import build_model

    write_universe(root / "raw", seed=7, **universe)
    path = root / "sequences.h5"
    build_dataset(root / "raw", path, PreprocessConfig(seq_len=20), workers=1, progress=False)
    info = read_sequences_info(path)
    train, test = load_split(path, "train"), load_split(path, "test")
    tf.keras.utils.set_random_seed(0)
    model = build_model(info.seq_len, info.n_features, representation=info.representation)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(train["x"], train["y"], batch_size=64, epochs=epochs, shuffle=True, verbose=0)
    pred = model.predict(test["x"], batch_size=4096, verbose=0)
    sums = metrics.shard_sums(pred, test["y"], test["last_close"], test["ticker"], info.transform)
    return metrics.metrics_from_sums(sums)["skill"], info.optimum


@pytest.mark.slow
def test_a_strong_signal_is_learned_to_half_the_optimum(tmp_path):
    skill, optimum = _train_and_score(tmp_path, STRONG)
    assert optimum["kalman_skill"] > 0.3
    assert skill > 0.5 * optimum["kalman_skill"], (skill, optimum)


@pytest.mark.slow
def test_a_random_walk_is_not_made_worse_than_persistence(tmp_path):
    skill, optimum = _train_and_score(tmp_path, RANDOM_WALK)
    assert optimum["kalman_skill"] == pytest.approx(0, abs=1e-9)
    assert skill >= -0.05, skill
    assert np.isfinite(skill)
