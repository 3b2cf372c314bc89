"""Write files so that no reader ever sees half of one: a temporary file in the same directory, then
os.replace (atomic on POSIX). Used for run records, job scripts, reports and the trainer's JSON files.

A full disk or quota (ENOSPC, EDQUOT) is an error the user must fix, not a bug: `disk_full_cause` recognises
it in an OSError, an h5py error or a TensorFlow error, and `DiskFull` (a UserError) reports it as one line
naming the path and the cause (docs/training.md, "Faults").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from stockpredict.common.errors import UserError

# errno -> (the C name, the text the C library and TensorFlow put into their messages)
DISK_FULL_ERRNOS = {errno.ENOSPC: ("ENOSPC", "No space left on device"),
                    errno.EDQUOT: ("EDQUOT", "Disk quota exceeded")}


class DiskFull(UserError):
    """A write failed because the file system (or the user's quota) is full."""

    def __init__(self, path: Path | str, cause: str):
        super().__init__(f"cannot write {path}: {cause}; free space (or quota) there and rerun")
        self.path, self.cause = str(path), cause


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file's bytes as stored (a .csv.gz is hashed compressed), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def disk_full_cause(err: BaseException) -> str | None:
    """'No space left on device (ENOSPC)' or 'Disk quota exceeded (EDQUOT)' if `err` means a full disk.

    OSError carries errno; h5py puts errno 28 in an OSError too; TensorFlow raises ResourceExhaustedError
    with the C library's text in the message, so the text is matched as well.
    """
    number = getattr(err, "errno", None)
    if number in DISK_FULL_ERRNOS:
        name, text = DISK_FULL_ERRNOS[number]
        return f"{text} ({name})"
    message = str(err)
    for name, text in DISK_FULL_ERRNOS.values():
        if text in message:
            return f"{text} ({name})"
    return None


@contextlib.contextmanager
def reporting_disk_full(path: Path | str) -> Iterator[None]:
    """Turn a full-disk error raised inside the block into DiskFull(path, cause); others pass through."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        cause = disk_full_cause(err)
        if cause is None:
            raise
        raise DiskFull(path, cause) from None


def fsync_dir(path: Path | str) -> None:
    """Make a rename or file creation inside directory `path` durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path | str, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` via a temporary file and os.replace; on error remove it.

    The data are fsynced before the rename: after a node crash the name never points at an empty file
    (the zero-length-after-rename effect of delayed allocation). A full disk raises DiskFull.
    """
    path = Path(path)
    with reporting_disk_full(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json_atomic(path: Path | str, data: Any) -> None:
    """`data` as indented, key-sorted JSON with a final newline, written atomically."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
