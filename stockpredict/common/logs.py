"""The package logger: one named logger, its level from $STOCKPREDICT_LOG_LEVEL."""

from __future__ import annotations

import logging
import os
import sys

LOG_LEVEL_ENV = "STOCKPREDICT_LOG_LEVEL"


def get_logger(name: str = "stockpredict") -> logging.Logger:
    """The package logger; its level comes from $STOCKPREDICT_LOG_LEVEL (default INFO)."""
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get(LOG_LEVEL_ENV, "INFO").upper())
        logger.propagate = False
    return logger
