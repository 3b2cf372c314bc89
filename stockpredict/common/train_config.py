"""The training run's configuration: one definition for the trainer, `submit`, `demo` and submitit.

TensorFlow-free on purpose: the submission side (`stockpredict.submit`, `stockpredict.demo`) builds a
`TrainConfig`, validates it before anything is queued, and hands the trainer `config.to_argv()`; the
trainer parses that argv back with `parse_args` into an equal `TrainConfig`. The flags live in one
table (FLAGS), so the two sides cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from stockpredict.common.errors import UserError, reject_unknown_keys
from stockpredict.common.timing import MODES

ENGINES = ("horovod", "tf")  # stockpredict/job/engine/__init__.py, stockpredict/job/engine/tf.py
DEFAULT_WARMUP_EPOCHS = 5  # Goyal et al. 2017 warm up over 5 epochs; capped at half the run
LR_DECAYS = ("cosine", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as config.json and in every checkpoint)."""

    data: str                         # the preprocessing stage's HDF5 sequences file
    run_dir: str                      # outputs, checkpoints and logs of this run
    # Defaults measured to learn the move (docs/training.md "Accuracy"): on a mean-reverting universe of
    # ~140,000 training windows, one rank reached 0.91 x the Kalman optimum's skill with these. The
    # seed's values were epochs 10, batch 32, lr 1e-4, dropout 0.3, constant LR.
    epochs: int = 5                   # passes over the training split
    batch_size: int = 128             # windows per step PER RANK (global batch = this x ranks)
    lr: float = 1e-3                  # Adam learning rate of one rank; scaled linearly by the ranks
    warmup_epochs: float | None = None  # linear ramp from lr to lr x ranks; None: 0 on one rank,
    #                                     else min(5, epochs / 2) (Goyal et al. 2017)
    lr_decay: str = "cosine"          # after the warm-up: "cosine" to 0 at the last step, or "none"
    lstm_units: int = 50              # the seed's model
    dropout: float = 0.0              # the seed's 0.3 learned less of the move in 5 epochs (0.87 x)
    dense_units: int = 32
    seed: int = 0                     # initial weights, dropout masks and the per-epoch shuffle
    resume: bool = False              # continue from the latest checkpoint in run_dir if there is one
    mode: str | None = None           # "strong" or "weak": a label for the scaling report only
    threads: int | None = None        # TensorFlow intra-op threads; None: $SLURM_CPUS_PER_TASK or TF's
    stop_check_steps: int = 20        # steps between the ranks' stop agreements (~2 ms each, 2 ranks)
    max_steps: int | None = None      # cap on steps per epoch (benchmarks, smoke runs); None: all
    engine: str = "horovod"           # "horovod" (ring-allreduce) or "tf" (tf.distribute multi-worker)
    stall_timeout: int = 300          # seconds without a step, while a peer rank stopped answering, before
    #                                   the job ends (stockpredict/job/watchdog.py); 0: no watchdog
    tensorboard_steps: int = 100      # TensorBoard step scalars every N steps of an epoch; 0: epochs only

    def __post_init__(self):
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "lstm_units": self.lstm_units, "dense_units": self.dense_units,
                    "stop_check_steps": self.stop_check_steps}
        if isinstance(self.stall_timeout, bool) or not isinstance(self.stall_timeout, int) \
                or self.stall_timeout < 0:
            raise UserError(f"--stall-timeout must be an integer number of seconds >= 0 (0: off), "
                            f"not {self.stall_timeout!r}")
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, not {value!r}")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, not {self.lr!r}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), not {self.dropout!r}")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise UserError(f"--warmup-epochs must be >= 0, not {self.warmup_epochs!r}")
        if self.lr_decay not in LR_DECAYS:
            raise UserError(f"--lr-decay must be one of {', '.join(LR_DECAYS)}, not {self.lr_decay!r}")
        if self.mode not in (None, *MODES):
            raise UserError(f"--mode must be strong or weak, not {self.mode!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be a positive integer, not {self.max_steps!r}")
        if self.engine not in ENGINES:
            raise UserError(f"--engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if isinstance(self.tensorboard_steps, bool) or not isinstance(self.tensorboard_steps, int) \
                or self.tensorboard_steps < 0:
            raise UserError(f"--tensorboard-steps must be an integer >= 0, not {self.tensorboard_steps!r}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be a positive integer, not {self.threads!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a dict (e.g. a saved config.json); unknown keys fail listing the valid ones."""
        reject_unknown_keys(cls, values, "train config key")
        return cls(**values)

    def to_argv(self) -> list[str]:
        """The trainer's command line for this config: `parse_args(c.to_argv()) == c`.

        --data, --run-dir, --resume (when set) and --batch-size always; every other field only when
        it differs from its default, in ARGV_ORDER (what job scripts have always shown).
        """
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        argv = ["--data", self.data, "--run-dir", self.run_dir]
        for name in ARGV_ORDER:
            value = getattr(self, name)
            if name == "resume":
                argv += ["--resume"] if value else []
            elif name == "batch_size" or value != defaults[name]:
                argv += [_flag(name), _text(value)]
        return argv


# Field order on the command line; data and run_dir come first. The first five match what `submit`
# has always rendered into job scripts (--resume --batch-size B --threads T --epochs E ...).
ARGV_ORDER = ("resume", "batch_size", "threads", "epochs", "lr", "warmup_epochs", "seed", "mode",
              "lstm_units", "dropout", "dense_units", "stop_check_steps", "max_steps", "lr_decay", "engine",
              "stall_timeout", "tensorboard_steps")

# name -> (argparse type or "flag", help). One table for the trainer's and `submit`'s flags.
FLAGS: dict[str, tuple[Any, str]] = {
    "data": (str, "HDF5 sequences file from preprocessing"),
    "run_dir": (str, "directory for this run's outputs"),
    "epochs": (int, "passes over the training split (default 5)"),
    "batch_size": (int, "windows per step per rank (default 128)"),
    "lr": (float, "base learning rate of one rank, scaled by the rank count (default 1e-3)"),
    "lr_decay": (LR_DECAYS, "learning-rate decay after the warm-up (default cosine, to 0 at the last step)"),
    "warmup_epochs": (float, "LR warm-up epochs, may be fractional (default: 0 on one rank, "
                             "else min(5, epochs/2))"),
    "lstm_units": (int, "LSTM units (default 50)"),
    "dropout": (float, "dropout rate (default 0; the seed's was 0.3)"),
    "dense_units": (int, "hidden dense units (default 32)"),
    "seed": (int, "seed of the weights, dropout masks and shuffle (default 0)"),
    "resume": ("flag", "continue from the latest checkpoint in RUN_DIR/checkpoints if any"),
    "mode": (MODES, "scaling-study label"),
    "threads": (int, "intra-op threads (default: $SLURM_CPUS_PER_TASK if set)"),
    "stop_check_steps": (int, "steps between the ranks' check for a stop signal (default 20)"),
    "max_steps": (int, "cap on steps per epoch (benchmarks and smoke runs; default: the whole shard)"),
    "engine": (ENGINES, "distributed engine: horovod (default; horovodrun, srun --mpi=pmix) or tf "
                        "(tf.distribute MultiWorkerMirroredStrategy; plain srun)"),
    "stall_timeout": (int, "end the job when a peer rank stopped answering and no step ran for this many "
                           "seconds (default 300; 0: off)"),
    "tensorboard_steps": (int, "TensorBoard step scalars (loss, learning rate) every N steps of an epoch, "
                               "0: per epoch only (default 100)"),
}
assert set(FLAGS) == {f.name for f in dataclasses.fields(TrainConfig)}, "FLAGS must name every field"
assert set(ARGV_ORDER) | {"data", "run_dir"} == set(FLAGS)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _text(value: Any) -> str:
    """A value as the trainer's argparse reads it back; 5.0 -> "5" (floats round-trip through repr)."""
    text = repr(value) if isinstance(value, float) else str(value)
    return text[:-2] if text.endswith(".0") else text


def add_train_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None,
                        suppress_defaults: bool = False) -> None:
    """Add the flags of `names` (default: every field) to `parser`, typed from FLAGS.

    `suppress_defaults`: unset flags are absent from the namespace (argparse.SUPPRESS), so a caller
    such as `submit` passes on only what the user gave and the dataclass supplies the rest.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in names or list(FLAGS):
        kind, help_text = FLAGS[name]
        kwargs: dict[str, Any] = {"help": help_text}
        if name in ("data", "run_dir"):
            kwargs["required"] = True
        elif suppress_defaults:
            kwargs["default"] = argparse.SUPPRESS
        elif kind != "flag":
            kwargs["default"] = defaults[name]
        if kind == "flag":
            kwargs["action"] = "store_true"
        elif isinstance(kind, tuple):
            kwargs["choices"] = kind
        else:
            kwargs["type"] = kind
        parser.add_argument(_flag(name), **kwargs)


def parse_args(argv: Sequence[str] | None, description: str | None = None) -> TrainConfig:
    """The trainer's command line -> TrainConfig (argparse exits 2 on a malformed flag)."""
    parser = argparse.ArgumentParser(prog="python -m stockpredict.train", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    return TrainConfig.from_mapping(vars(parser.parse_args(argv)))


def resolve_config(config: TrainConfig, ranks: int, environ: Mapping[str, str] = os.environ) -> TrainConfig:
    """Fill the automatic defaults (warm-up, threads) for a run on `ranks` ranks."""
    warmup = config.warmup_epochs
    if warmup is None:
        warmup = 0.0 if ranks == 1 else min(float(DEFAULT_WARMUP_EPOCHS), config.epochs / 2)
    threads = config.threads
    if threads is None and environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        threads = int(environ["SLURM_CPUS_PER_TASK"])
    return dataclasses.replace(config, warmup_epochs=float(warmup), threads=threads)
