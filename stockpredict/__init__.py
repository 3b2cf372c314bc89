"""stockpredict: distributed LSTM training on minute-level S&P 500 data with Horovod on Slurm.

Stages (one module each, data flowing forward through files with documented schemas):
    preprocess/            raw minute bars (CSV)      -> windowed sequences (HDF5)
    stockpredict.train     HDF5 sequences             -> run directory (timing.jsonl, model, metrics)
    stockpredict.submit    parameters + site profile  -> rendered sbatch script, submitted job
    stockpredict.report    results/runs/*/timing.jsonl -> scaling tables and plots
"""

import importlib.util as _util
import os as _os

__version__ = "0.1.0"

# TensorFlow >= 2.16 maps tf.keras to Keras 3 unless TF_USE_LEGACY_KERAS=1; the trainer is written for
# Keras 2: the tf-keras package there (ENGINE=tf's stack, TF 2.21), built in on TF 2.15, where setting
# the variable would make TF look for tf_keras. Hence only when tf_keras is installed; before TF loads.
if _util.find_spec("tf_keras") is not None:
    _os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
