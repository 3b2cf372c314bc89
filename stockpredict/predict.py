"""Stable name of stockpredict.job.predict (stockpredict/common/moved.py says why)."""
from stockpredict.common.moved import alias

alias(__name__, "stockpredict.job.predict")
