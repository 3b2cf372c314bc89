"""Stable name of stockpredict.common.timing (stockpredict/common/moved.py says why)."""
from stockpredict.common.moved import alias

alias(__name__, "stockpredict.common.timing")
