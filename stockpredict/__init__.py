"""stockpredict: distributed LSTM training on minute-level S&P 500 data with Horovod on Slurm.

Stages (one module each, data flowing forward through files with documented schemas):
    preprocess/            raw minute bars (CSV)      -> windowed sequences (HDF5)
    stockpredict.train     HDF5 sequences             -> run directory (timing.jsonl, model, metrics)
    stockpredict.submit    parameters + site profile  -> rendered sbatch script, submitted job
    stockpredict.report    results/runs/*/timing.jsonl -> scaling tables and plots
"""

__version__ = "0.1.0"
