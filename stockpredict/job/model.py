"""The seed's forecasting model: LSTM(50) -> Dropout(0.3) -> Dense(32, relu) -> Dense(1, out), MSE loss.

The output layer follows the file's representation (stockpredict/common/transform.py):
    returns  linear: the target is a standardised log return, negative as often as positive;
    seed     ReLU, as in the seed: targets are min-max normalised prices in [0, 1] (a test-split price
             below the training minimum can fall slightly below 0; the ReLU then clips it).
"""

from __future__ import annotations

import tensorflow as tf

OUTPUT_ACTIVATION = {"returns": None, "seed": "relu"}  # None = linear


def build_model(seq_len: int, n_features: int, lstm_units: int = 50, dropout: float = 0.3,
                dense_units: int = 32, representation: str = "returns",
                unroll: bool = False) -> tf.keras.Model:
    """A fresh, built (weights created) model for windows of shape (seq_len minutes, n_features).

    `representation` is the sequences file's (SequencesInfo.representation); it picks the output layer.
    `unroll` lays the LSTM's time steps out as straight-line ops instead of a tf.while_loop: the same
    weights and arithmetic, for CPU training (see `unroll_lstm`). It rules out the cuDNN kernel.
    """
    if representation not in OUTPUT_ACTIVATION:
        raise ValueError(f"unknown representation {representation!r}; known: {', '.join(OUTPUT_ACTIVATION)}")
    return tf.keras.Sequential([
        tf.keras.Input(shape=(seq_len, n_features), name="window"),
        tf.keras.layers.LSTM(lstm_units, unroll=unroll, name="lstm"),
        tf.keras.layers.Dropout(dropout, name="dropout"),
        tf.keras.layers.Dense(dense_units, activation="relu", name="dense"),
        tf.keras.layers.Dense(1, activation=OUTPUT_ACTIVATION[representation], name="forecast"),
    ], name="seed_lstm")


def unroll_lstm(gpu_devices: list) -> bool:
    """Unroll the LSTM when training on CPU, never on a GPU.

    On a CPU core the while_loop's per-iteration control flow is a fixed cost of every step, whatever
    the batch: one pinned core, same process, interleaved (docs/scaling.md, "Unrolled LSTM on CPU"):
    22.8 -> 17.7 ms per step at batch 128 and 40.0 -> 33.3 ms at batch 256, so the per-step overhead
    that caps strong scaling fell from about 5.6 to 2.1 ms. The cost is tracing, about 4 s more per
    trainer process, which a run at batch 128 earns back within about a thousand steps (a demo epoch
    is 664). On a GPU, Keras uses cuDNN's fused LSTM only when the layer is not unrolled.
    """
    return not gpu_devices


def dropout_generators(model: tf.keras.Model) -> list[tf.random.Generator]:
    """The tf.random.Generator behind each Dropout layer (needs enable_tf_random_generator()).

    Keras does not track them in checkpoints; the trainer saves their state itself so a resumed run
    draws the same dropout masks as an uninterrupted one. Reaches into Keras 2.15 internals
    (`_random_generator._generator`), which is pinned with TensorFlow 2.15.1.
    """
    generators = []
    for layer in model.layers:
        rng = getattr(getattr(layer, "_random_generator", None), "_generator", None)
        if isinstance(layer, tf.keras.layers.Dropout) and rng is not None:
            generators.append(rng)
    return generators
