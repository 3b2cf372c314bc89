"""A terminal waiting on a job prints each finished epoch from timing.jsonl (stockpredict.control.follow)."""

from __future__ import annotations

from stockpredict.common import rundir, timing
from stockpredict.control.follow import EpochPrinter, epoch_line


def _epoch(n: int, loss: float) -> dict:
    return timing.make_event("epoch", epoch=n, train_seconds=12.5, val_seconds=1.0, steps=10, samples=1280,
                             samples_per_second=2500.0, train_loss=loss, val_loss=None, resumed=False)


def test_each_epoch_is_printed_once_as_it_lands_and_a_torn_line_waits(tmp_path):
    lines: list[str] = []
    printer = EpochPrinter(tmp_path, label="2 node(s)", out=lines.append)
    printer()  # no log yet: nothing, no error
    assert lines == []
    log = tmp_path / rundir.TIMING_LOG
    start = {"schema": 1, "event": "run_start", "epochs": 4}
    timing.append_event(log, start)
    timing.append_event(log, _epoch(1, 0.75))
    with open(log, "a") as handle:
        handle.write('{"schema": 1, "event": "epo')  # the trainer is still writing this line
    printer()
    assert lines == ["2 node(s) epoch 1/4: 12.50 s, 2,500 samples/s, loss 0.7500"]
    with open(log, "a") as handle:
        handle.write('ch"}\n')  # completes as an epoch record without its fields: skipped, no crash
    timing.append_event(log, _epoch(2, 0.7))
    printer()
    printer()
    assert lines[1:] == ["2 node(s) epoch 2/4: 12.50 s, 2,500 samples/s, loss 0.7000"]


def test_epoch_line_shows_val_loss_when_there_is_one():
    record = dict(_epoch(3, 0.5), val_loss=0.25)
    assert epoch_line(record) == "epoch 3: 12.50 s, 2,500 samples/s, loss 0.5000 (val 0.2500)"


def test_an_allreduce_benchmark_shows_allreduces_not_samples_or_loss(tmp_path):
    lines: list[str] = []
    printer = EpochPrinter(tmp_path, label="bench", out=lines.append)
    log = tmp_path / rundir.TIMING_LOG
    timing.append_event(log, {"schema": 1, "event": "run_start", "epochs": 3, "kind": "allreduce"})
    timing.append_event(log, _epoch(2, 0.0))
    printer()
    assert lines == ["bench epoch 2: 10 allreduces in 12.50 s"]
