"""What the measuring programs and the login node agree on, without TensorFlow: the allreduce
benchmark's configuration and the model's gradient shapes (the submission side builds and validates a
BenchConfig, stockpredict/job/allreduce_bench.py runs it), and the prefix of the interleaved program's
lines (stockpredict/job/interleaved.py prints them, stockpredict/control/interleaved_launch.py follows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stockpredict.common.errors import UserError

BYTES_PER_PARAMETER = 4  # fp32 gradients
DEFAULT_FEATURES = 2     # the seed's windows: close and volume per minute
INTERLEAVED_PREFIX = "interleaved:"  # rank 0's lines of the interleaved program start with it


def gradient_shapes(n_features: int, lstm_units: int = 50, dense_units: int = 32) -> list[tuple[int, ...]]:
    """Shapes of the seed model's trainable variables (stockpredict.model.build_model), in Keras order:
    LSTM kernel, recurrent kernel, bias (4 gates each), Dense kernel and bias, output kernel and bias.
    The window length does not appear: an LSTM's weights do not depend on it."""
    gates = 4 * lstm_units
    return [(n_features, gates), (lstm_units, gates), (gates,), (lstm_units, dense_units), (dense_units,),
            (dense_units, 1), (1,)]


def gradient_bytes(n_features: int, lstm_units: int = 50, dense_units: int = 32) -> int:
    """Bytes allreduced per training step: 4 x trainable parameters (12,265 x 4 = 49,060 for the seed)."""
    shapes = gradient_shapes(n_features, lstm_units, dense_units)
    return BYTES_PER_PARAMETER * sum(math.prod(s) for s in shapes)


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run."""

    run_dir: str                      # gets timing.jsonl (must not hold one yet)
    iterations: int = 200             # allreduces per epoch
    epochs: int = 3                   # the first is warm-up
    data: str | None = None           # a sequences file: its feature count sizes the model
    n_features: int = DEFAULT_FEATURES  # without --data
    lstm_units: int = 50              # the seed's model (stockpredict.train.TrainConfig defaults)
    dense_units: int = 32
    single_buffer_bytes: int | None = None  # instead of the model's shapes: one buffer of this size
    threads: int = 1                  # TensorFlow intra-op threads per rank

    def __post_init__(self) -> None:
        for name in ("iterations", "epochs", "n_features", "lstm_units", "dense_units", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, not {value!r}")
        size = self.single_buffer_bytes
        if size is not None and (size < BYTES_PER_PARAMETER or size % BYTES_PER_PARAMETER):
            raise UserError(f"--single-buffer-bytes must be a positive multiple of {BYTES_PER_PARAMETER}, "
                            f"not {size!r}")

    def shapes(self) -> list[tuple[int, ...]]:
        if self.single_buffer_bytes is not None:
            return [(self.single_buffer_bytes // BYTES_PER_PARAMETER,)]
        return gradient_shapes(self.features(), self.lstm_units, self.dense_units)

    def features(self) -> int:
        if self.data is None:
            return self.n_features
        from stockpredict.common.sequences import read_sequences_info  # h5py only

        return read_sequences_info(self.data).n_features
