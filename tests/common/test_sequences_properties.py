"""Generated damage to a sequences file (HDF5): cut short anywhere, a span overwritten with random bytes,
or both. Every reader a job opens it with (read_sequences_info, then each split's windows) returns whole
arrays or stops with a one-line UserError, never another exception."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import hypothesis_settings
from stockpredict.common.errors import UserError
from stockpredict.common.reader import SplitWindows
from stockpredict.common.sequences import read_sequences_info


@pytest.fixture(scope="module")
def pristine(tiny_dataset) -> bytes:
    return Path(tiny_dataset).read_bytes()


damage = st.tuples(st.sampled_from(["cut", "overwrite", "both"]), st.floats(min_value=0, max_value=1),
                   st.floats(min_value=0, max_value=1), st.binary(min_size=1, max_size=512))


def _damaged(pristine: bytes, how) -> bytes:
    kind, where, cut, noise = how
    data = bytearray(pristine)
    if kind in ("overwrite", "both"):
        at = int(where * (len(data) - 1))
        data[at:at + len(noise)] = noise
    if kind in ("cut", "both"):
        data = data[: int(cut * len(data))]
    return bytes(data)


@hypothesis_settings(1500)
@given(how=damage)
def test_a_damaged_sequences_file_reads_whole_or_is_a_one_line_error(pristine, how):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seq.h5"
        path.write_bytes(_damaged(pristine, how))
        try:
            info = read_sequences_info(path)
            for split in ("train", "val", "test"):
                windows = SplitWindows(path, split)
                x = windows.x(slice(None))
                assert x.shape[0] == len(windows) and x.shape[1:] == (windows.seq_len, windows.n_features)
        except UserError as err:
            assert str(err).strip() and len(str(err)) < 2000
            return
        assert info.n_features >= 1
    shutil.rmtree(tmp, ignore_errors=True)
