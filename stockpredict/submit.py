"""Stable name of stockpredict.control.submit (stockpredict/common/moved.py says why)."""
from stockpredict.common.moved import alias

alias(__name__, "stockpredict.control.submit")
