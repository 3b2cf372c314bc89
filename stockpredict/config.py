"""Stable name of stockpredict.common.train_config (stockpredict/common/moved.py says why)."""
from stockpredict.common.moved import alias

alias(__name__, "stockpredict.common.train_config")
