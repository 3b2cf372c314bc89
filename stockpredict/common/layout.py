"""The HDF5 sequences file's contract: names, schema version, attribute keys, chunk length.

One definition for the writer (preprocess/store.py, preprocess/pipeline.py), the reader
(stockpredict/job/data.py) and the benchmarks' synthetic files (benchmarks/bench_train.py). h5py and
numpy only, no TensorFlow, so preprocessing imports it freely. docs/data.md describes the layout:

    /<split>/x           float32 (n, seq_len, n_features)   normalised inputs
    /<split>/y           float32 (n,)                       normalised close at e + horizon
    /<split>/ticker      int32   (n,)                       index into /tickers
    /<split>/window_end  int64   (n,)                       UTC epoch seconds of minute e
    /<split>/last_close  float64 (n,)                       close at minute e, price units (schema 2)
    /tickers             variable-length UTF-8 strings
    root attributes      ATTRS below

Schema 3 replaces /<split>/x by each ticker-session's minutes stored once, and what defines a window:

    /<split>/series          float32 (m, n_features)  the minutes of every ticker-session with a window in
                                                      the split, one after another, in the stored form
                                                      (common/transform.py, series_forward)
    /<split>/start           int64   (n,)             row of the window's first minute in series
    /<split>/segment_start   int64   (s,)             row of each ticker-session's first stored minute
    /<split>/segment_ticker  int32   (s,)             its index into /tickers
    y, ticker, window_end, last_close as in schema 2. Window i is series[start[i] : start[i] + seq_len],
    with the representation's per-window shift applied (common/reader.py builds it).
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 3                  # bump on any change a reader must know about
# 1: the seed's min-max price levels; 2: + /<split>/last_close and the attrs representation, transform,
# optimum (stockpredict/common/transform.py). Schema-1 files still read, as the seed representation.
# 3: /<split>/x replaced by series + start (+ segment_start, segment_ticker); attributes as in 2.
READABLE_SCHEMAS = (1, 2, 3)
WRITABLE_SCHEMAS = (2, 3)           # preprocess --schema (2 only to compare against it)
SPLITS = ("train", "val", "test")   # a split may hold n = 0 windows; its datasets still exist

# Datasets of each split group, and the file-level ticker names.
X, Y, TICKER, WINDOW_END = "x", "y", "ticker", "window_end"
SPLIT_DATASETS = (X, Y, TICKER, WINDOW_END)
LAST_CLOSE = "last_close"
SERIES, START, SEGMENT_START, SEGMENT_TICKER = "series", "start", "segment_start", "segment_ticker"
TICKERS = "tickers"

# Root attribute keys.
ATTR_SCHEMA_VERSION = "schema_version"  # int, == SCHEMA_VERSION
ATTR_CONFIG = "config"                  # JSON of the PreprocessConfig that wrote the file
ATTR_FEATURES = "features"              # UTF-8 strings: the columns of x, in order
ATTR_TARGET_FEATURE = "target_feature"  # the feature y predicts (one of features)
ATTR_NORMALIZATION = "normalization"    # "global" or "per_ticker" min-max
ATTR_NORM_MIN = "norm_min"              # (n_features,) or (n_tickers, n_features), float64
ATTR_NORM_MAX = "norm_max"
ATTR_SEQ_LEN = "seq_len"                # minutes per window
ATTR_HORIZON = "horizon"                # minutes from a window's last minute to its target
ATTR_WINDOW_COUNTS = "window_counts"    # JSON {"train": n, "val": n, "test": n}

# Windows per HDF5 chunk along n when the writer is not told otherwise (preprocess --chunk-windows).
# 2,048 windows of 60 x 2 float32 = 1 MB: one chunk-aligned read is about as cheap as a single-window read.
DEFAULT_CHUNK_WINDOWS = 2048
# Schema 3's chunk of /<split>/series, in minutes (x n_features float32): 16,384 x 2 x 4 B = 128 KB. The
# reader loads a shard's series whole, so only the write and load speed depend on it.
SERIES_CHUNK_MINUTES = 16384


def dataset_path(split: str, name: str) -> str:
    """"train", "x" -> "train/x"."""
    return f"{split}/{name}"


def chunk_windows(dataset: Any, default: int = DEFAULT_CHUNK_WINDOWS) -> int:
    """Windows per chunk of an h5py dataset chunked along its first axis; `default` if contiguous.

    Readers align their block reads to this, so a file written with `--chunk-windows 1000` is still
    read one whole chunk at a time.
    """
    chunks = getattr(dataset, "chunks", None)
    return int(chunks[0]) if chunks else default
