"""Stable name of stockpredict.job.allreduce_bench (stockpredict/common/moved.py says why)."""
from stockpredict.common.moved import alias

alias(__name__, "stockpredict.job.allreduce_bench")
