"""Stable name of stockpredict.job.train (stockpredict/common/moved.py says why)."""
from stockpredict.common.moved import alias

alias(__name__, "stockpredict.job.train")
