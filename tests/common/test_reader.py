"""The one reader of windows (stockpredict/common/reader.py): a schema-3 file yields the same (x, y) as a
schema-2 file of the same input, matched by (ticker, window_end), on the synthetic universe and on awkward
inputs; damaged and newer files are one-line errors; batches and their order do not depend on the schema
or the thread count."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from preprocess.pipeline import build_dataset
from preprocess.preprocess_config import PreprocessConfig
from preprocess.synthetic import write_universe
from stockpredict.common import reader
from stockpredict.common.errors import UserError
from stockpredict.common.sequences import read_sequences_info

SPLITS = ("train", "val", "test")

# name: (universe options, preprocessing options). Heavy vendor mess (gaps of every length, bad rows:
# many dropped windows and ticker-sessions broken into pieces), gaps filled, per-ticker min-max of the
# seed representation, more features (high/low shifted by the close, like it), the random split.
CASES = {
    "returns": ({}, {}),
    "gaps_and_drops": ({"missing_frac": 0.02, "bad_row_frac": 0.01}, {}),
    "filled_gaps": ({"missing_frac": 0.02}, {"fill_gaps": 3}),
    "seed_per_ticker": ({"missing_frac": 0.01}, {"representation": "seed", "normalize": "per_ticker"}),
    "seed_global_4_features": ({}, {"representation": "seed",
                                    "features": ("close", "volume", "high", "low")}),
    "returns_4_features": ({"missing_frac": 0.01}, {"features": ("high", "close", "low", "volume")}),
    "random_split": ({}, {"split": "random", "split_seed": 4}),
}


_BUILT: dict = {}


def _both(name, tmp_path_factory):
    """The case's universe preprocessed as schema 2 and as schema 3 (built once per test session)."""
    if name not in _BUILT:
        universe, options = CASES[name]
        root = tmp_path_factory.mktemp(name)
        write_universe(root / "raw", tickers=5, days=6, seed=11, **universe)
        files = {}
        for schema in (2, 3):
            files[schema] = root / f"schema{schema}.h5"
            build_dataset(root / "raw", files[schema], PreprocessConfig(schema=schema, **options),
                          workers=1, progress=False)
        _BUILT[name] = (name, files)
    return _BUILT[name]


@pytest.fixture(params=sorted(CASES))
def both_schemas(request, tmp_path_factory):
    return _both(request.param, tmp_path_factory)


@pytest.fixture(params=["returns", "seed_per_ticker"])
def each_representation(request, tmp_path_factory):
    return _both(request.param, tmp_path_factory)


@pytest.fixture
def returns_files(tmp_path_factory):
    return _both("returns", tmp_path_factory)


def test_schema_3_gives_schema_2_windows_matched_by_ticker_and_window_end(both_schemas):
    name, files = both_schemas
    assert [read_sequences_info(files[s]).schema_version for s in (2, 3)] == [2, 3]
    for split in SPLITS:
        old, new = reader.load_split(files[2], split), reader.load_split(files[3], split)
        assert len(old["y"]) == len(new["y"]) and (split != "train" or len(old["y"]) > 300)
        # matched by (ticker, window_end), not by row, so a reordering would not pass unnoticed
        key = lambda d: d["ticker"].astype(np.int64) * 2**40 + d["window_end"]  # noqa: E731
        a, b = np.argsort(key(old)), np.argsort(key(new))
        np.testing.assert_array_equal(key(old)[a], key(new)[b])
        for field in ("y", "last_close"):
            np.testing.assert_array_equal(old[field][a], new[field][b], err_msg=f"{name} {split} {field}")
        x_old, x_new = old["x"][a], new["x"][b]
        if name.startswith("seed"):
            np.testing.assert_array_equal(x_old, x_new)  # min-max per minute: bit for bit
        else:
            # float32 rounding of the session-centred stored minutes: a few ulp of the stored values
            np.testing.assert_allclose(x_new, x_old, rtol=0, atol=4e-6, err_msg=f"{name} {split}")
            close = list(read_sequences_info(files[3]).features).index("close")
            assert np.all(x_new[:, -1, close] == 0)


def test_batches_are_the_same_from_either_schema_and_any_thread_count(each_representation):
    name, files = each_representation
    n = read_sequences_info(files[2]).windows["train"]
    start, stop = reader.shard_range(n, 1, 2)
    order = reader.epoch_order(stop - start, seed=5, epoch=2, rank=1)
    shards = {s: reader.SplitWindows(files[s], "train", start, stop, extras=False) for s in (2, 3)}
    two = list(reader.iter_batches(shards[2], order, 64))
    three = list(reader.iter_batches(shards[3], order, 64, threads=2))
    assert len(two) == len(three) == (stop - start) // 64
    for (x2, y2), (x3, y3) in zip(two, three):
        np.testing.assert_array_equal(y2, y3)
        np.testing.assert_allclose(x3, x2, atol=4e-6)
    resumed = list(reader.iter_batches(shards[3], order, 64, first=3))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(three[3:], resumed))


def _copy(src, dst, edit):
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        for key, value in a.attrs.items():
            b.attrs[key] = value
        for name in a:
            a.copy(name, b)
        edit(b)
    return dst


@pytest.mark.parametrize("damage, message", [
    ("past_the_end", "lie outside /train/series"),
    ("negative", "lie outside /train/series"),
    ("across_sessions", "crosses the end of its ticker-session"),
    ("newer", "schema_version is 4"),
])
def test_damaged_or_newer_schema_3_files_are_one_line_errors(returns_files, tmp_path, damage, message):
    _, files = returns_files

    def edit(h5):
        start = h5["train/start"]
        if damage == "past_the_end":
            start[7] = h5["train/series"].shape[0] - 10
        elif damage == "negative":
            start[7] = -1
        elif damage == "across_sessions":
            segments = h5["train/segment_start"][:]
            start[7] = segments[1] - 30  # the last 30 minutes of one session and 30 of the next
        else:
            h5.attrs["schema_version"] = 4

    bad = _copy(files[3], tmp_path / f"{damage}.h5", edit)
    with pytest.raises(UserError, match=message) as err:
        reader.SplitWindows(bad, "train")
    assert "\n" not in str(err.value)
    if damage == "newer":
        with pytest.raises(UserError, match=message):
            read_sequences_info(bad)


def test_truncated_or_foreign_files_are_one_line_errors(returns_files, tmp_path):
    _, files = returns_files
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(files[3].read_bytes()[:5000])
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h5:
        h5["something"] = np.arange(3)
    for path, message in ((truncated, "not a readable HDF5 file"), (foreign, "schema_version is 0")):
        with pytest.raises(UserError, match=message) as err:
            reader.SplitWindows(path, "train")
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        read_sequences_info(truncated)


def test_schema_3_is_much_smaller_than_schema_2(returns_files):
    _, files = returns_files
    # 4.5x on this small universe, where metadata is a larger share; 13.8x at 503 x 21 days (docs/data.md)
    assert files[3].stat().st_size * 3 < files[2].stat().st_size
