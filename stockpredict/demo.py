"""Stable name of stockpredict.control.demo (stockpredict/common/moved.py says why)."""
from stockpredict.common.moved import alias

alias(__name__, "stockpredict.control.demo")
