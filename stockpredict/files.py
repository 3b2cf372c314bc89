"""Write files so that no reader ever sees half of one: a temporary file in the same directory, then
os.replace (atomic on POSIX). Used for run records, job scripts, reports and the trainer's JSON files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: Path | str, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` via a temporary file and os.replace; on error remove it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path | str, data: Any) -> None:
    """`data` as indented, key-sorted JSON with a final newline, written atomically."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
