"""benchmarks/interleaved_step.py's summary: medians of the rounds and the median per-round speedup."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO


def _module():
    path = REPO / "benchmarks" / "interleaved_step.py"
    spec = importlib.util.spec_from_file_location("interleaved_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # TensorFlow and Horovod are imported inside main(), not here
    return module


def test_the_speedup_is_the_median_of_each_rounds_own_ratio():
    # The host slows down between rounds: the 1-rank median over the 2-rank median would say 1.5x,
    # while every round, timed within the same second, says 2x or more.
    summary = _module().summarise([20.0, 30.0, 44.0], [10.0, 15.0, 20.0])
    assert summary["speedup"] == pytest.approx(2.0)
    assert summary["one_rank_ms_per_step"] == 30.0 and summary["n_rank_ms_per_step"] == 15.0
    q1, median, q3 = summary["speedup_quartiles"]
    assert q1 <= median <= q3 and median == pytest.approx(2.0)


def test_one_round_and_mismatched_rounds():
    summarise = _module().summarise
    assert summarise([30.0], [20.0])["speedup_quartiles"] == [1.5, 1.5, 1.5]
    with pytest.raises(ValueError):
        summarise([30.0, 31.0], [20.0])
    with pytest.raises(ValueError):
        summarise([], [])
