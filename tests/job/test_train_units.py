"""Fast unit tests of the trainer's pure parts: sharding, shuffling, batching, LR schedule, GPU choice,
metrics, config and the timing log. The training runs themselves are in test_train.py."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from stockpredict.common import layout, metrics, reader, rundir, sequences, timing
from stockpredict.common.errors import UserError
from stockpredict.common.train_config import TrainConfig, parse_args, resolve_config
from stockpredict.common.transform import SeedTransform
from stockpredict.job import data
from stockpredict.job.loop import WarmupSchedule, choose_gpu, dataset_warnings


@pytest.mark.parametrize("visible, local_rank, expected", [
    (0, 0, None), (0, 3, None),      # CPU-only node
    (1, 0, 0), (1, 1, 0), (1, 3, 0),  # Slurm bound one GPU to the task: it is device 0
    (4, 0, 0), (4, 3, 3),             # all node GPUs visible: Horovod's local_rank pinning
    (2, 3, 1),                        # more ranks than GPUs: share round-robin
])
def test_choose_gpu(visible, local_rank, expected):
    assert choose_gpu(visible, local_rank) == expected


def test_the_lstm_is_unrolled_on_cpu_only():
    from stockpredict.job.model import unroll_lstm

    assert unroll_lstm([]) is True
    assert unroll_lstm(["/physical_device:GPU:0"]) is False  # cuDNN needs the looped layer


def test_the_unrolled_lstm_computes_what_the_looped_one_does():
    """Unrolling is a CPU speed-up only: same weights, same predictions and gradients (float32)."""
    import tensorflow as tf

    from stockpredict.job.model import build_model

    looped, unrolled = (build_model(60, 2, dropout=0.0, unroll=u) for u in (False, True))
    unrolled.set_weights(looped.get_weights())
    x = tf.constant(np.random.default_rng(0).normal(size=(16, 60, 2)), tf.float32)
    results = []
    for model in (looped, unrolled):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True) ** 2)
        results.append([loss, *tape.gradient(loss, model.trainable_variables)])
    assert unrolled.get_layer("lstm").unroll and not looped.get_layer("lstm").unroll
    for a, b in zip(*results):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n, size", [(10, 1), (10, 3), (15922, 4), (7, 7)])
def test_shards_partition_the_split_and_every_rank_can_run_the_steps(n, size):
    ranges = [data.shard_range(n, r, size) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    for batch in (1, 2, 3):
        steps = data.steps_per_epoch(n, batch, size)
        assert steps == n // (batch * size)
        assert all(stop - start >= steps * batch for start, stop in ranges)


def test_epoch_order_is_a_permutation_of_the_shard_deterministic_in_seed_epoch_and_rank():
    order = reader.epoch_order(8000, seed=3, epoch=1, rank=0)
    assert sorted(order.tolist()) == list(range(8000))
    assert np.array_equal(order, reader.epoch_order(8000, seed=3, epoch=1, rank=0))
    for other in (dict(seed=4, epoch=1, rank=0), dict(seed=3, epoch=2, rank=0),
                  dict(seed=3, epoch=1, rank=1)):
        assert not np.array_equal(order, reader.epoch_order(8000, **other))
    # a uniform shuffle, not blocks of neighbours: consecutive positions are far apart in the shard
    assert np.median(np.abs(np.diff(order))) > 1000


@pytest.fixture(scope="module")
def numbered_file(tmp_path_factory):
    """A sequences-shaped file whose window i holds the value i everywhere, to trace rows through batching."""
    path = tmp_path_factory.mktemp("numbered") / "numbered.h5"
    n = 5000
    with h5py.File(path, "w") as handle:
        handle["train/x"] = np.repeat(np.arange(n, dtype=np.float32), 4).reshape(n, 2, 2)
        handle["train/y"] = np.arange(n, dtype=np.float32)
        handle.attrs.update({"schema_version": 1, "features": ["close", "volume"], "target_feature": "close",
                             "norm_min": [0.0, 0.0], "norm_max": [1.0, 1.0]})
    return path, n


def test_train_batches_are_from_the_shard_without_repeats_and_resume_mid_epoch_exactly(numbered_file):
    path, n = numbered_file
    start, stop = data.shard_range(n, 1, 2)
    batch, steps = 32, data.steps_per_epoch(n, 32, 2)
    full = list(data.iter_train_batches(str(path), start, stop, batch, steps, seed=0, epoch=1, rank=1))
    assert len(full) == steps and all(len(y) == batch for _, y in full)
    ids = np.concatenate([y for _, y in full]).astype(int)
    assert len(set(ids)) == len(ids) and ids.min() >= start and ids.max() < stop
    assert all(np.array_equal(x[:, 0, 0], y) for x, y in full)
    assert not np.array_equal(ids, np.sort(ids))  # shuffled
    resumed = list(data.iter_train_batches(str(path), start, stop, batch, steps, seed=0, epoch=1, rank=1,
                                           skip_steps=17))
    assert len(resumed) == steps - 17
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(full[17:], resumed))


def test_warmup_schedule_ramps_from_base_to_ranks_times_base():
    schedule = WarmupSchedule(1e-4, ranks=4, warmup_steps=100)
    rates = [float(schedule(step)) for step in (0, 50, 100, 1000)]
    assert rates == pytest.approx([1e-4, 2.5e-4, 4e-4, 4e-4])
    assert float(WarmupSchedule(1e-4, ranks=4, warmup_steps=0)(0)) == pytest.approx(4e-4)
    assert float(WarmupSchedule(1e-4, ranks=1, warmup_steps=0)(7)) == pytest.approx(1e-4)


def test_cosine_decay_follows_the_warmup_down_to_zero_at_the_last_step():
    schedule = WarmupSchedule(1e-3, ranks=2, warmup_steps=100, total_steps=300)
    rates = [float(schedule(step)) for step in (0, 100, 200, 300, 400)]
    # ramp 1e-3 -> 2e-3, then half-way down the cosine, 0 at the end and after
    assert rates == pytest.approx([1e-3, 2e-3, 1e-3, 0.0, 0.0], abs=1e-9)
    assert float(WarmupSchedule(1e-3, ranks=1, warmup_steps=0, total_steps=10)(5)) == pytest.approx(5e-4)


def test_resolve_config_warmup_on_only_with_several_ranks_and_threads_from_slurm():
    cfg = TrainConfig(data="d.h5", run_dir="r", epochs=4)
    assert resolve_config(cfg, 1, {}).warmup_epochs == 0.0
    assert resolve_config(cfg, 2, {}).warmup_epochs == 2.0
    assert resolve_config(TrainConfig(data="d", run_dir="r", epochs=40), 8, {}).warmup_epochs == 5.0
    assert resolve_config(cfg, 2, {"SLURM_CPUS_PER_TASK": "3"}).threads == 3
    assert resolve_config(TrainConfig(data="d", run_dir="r", threads=1), 2,
                          {"SLURM_CPUS_PER_TASK": "3"}).threads == 1


def test_train_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(UserError, match=r"unknown train config key\(s\) epoch; valid: data, run_dir, epochs"):
        TrainConfig.from_mapping({"data": "d", "run_dir": "r", "epoch": 3})
    with pytest.raises(UserError, match="--batch-size must be a positive integer"):
        TrainConfig(data="d", run_dir="r", batch_size=0)
    with pytest.raises(UserError, match="--dropout"):
        TrainConfig(data="d", run_dir="r", dropout=1.0)


@pytest.mark.parametrize("values", [
    {},  # every default: only --data, --run-dir, --batch-size
    {"warmup_epochs": 0.5, "lr": 3e-4, "resume": True, "threads": 2, "mode": "weak"},
    {"epochs": 1, "batch_size": 7, "lstm_units": 8, "dropout": 0.0, "dense_units": 4, "seed": 12,
     "stop_check_steps": 3, "max_steps": 9, "warmup_epochs": 2.0, "lr": 1.0, "tensorboard_steps": 0},
    {"data": "/data/my data/seq.h5", "run_dir": "/r/run 1", "warmup_epochs": 0.0},
    {"engine": "tf", "resume": True},
])
def test_to_argv_round_trips_through_the_trainers_parser(values):
    config = TrainConfig.from_mapping({"data": "d.h5", "run_dir": "r", **values})
    argv = config.to_argv()
    assert parse_args(argv) == config
    assert argv[:4] == ["--data", config.data, "--run-dir", config.run_dir]
    # defaults stay off the command line (except the batch size, which job scripts always show)
    assert ("--seed" in argv) == (config.seed != 0) and "--batch-size" in argv


def test_to_argv_keeps_the_job_script_order_and_writes_whole_floats_as_integers():
    config = TrainConfig(data="d", run_dir="r", resume=True, batch_size=64, threads=2, epochs=3,
                         warmup_epochs=5.0, mode="strong")
    assert config.to_argv() == ["--data", "d", "--run-dir", "r", "--resume", "--batch-size", "64",
                                "--threads", "2", "--epochs", "3", "--warmup-epochs", "5", "--mode", "strong"]


def test_engine_is_on_the_command_line_only_when_not_the_default():
    assert "--engine" not in TrainConfig(data="d", run_dir="r").to_argv()
    assert TrainConfig(data="d", run_dir="r", engine="tf").to_argv()[-2:] == ["--engine", "tf"]
    with pytest.raises(UserError, match="--engine must be one of horovod, tf, not 'mpi'"):
        TrainConfig(data="d", run_dir="r", engine="mpi")


def test_tensorboard_steps_default_to_100_zero_means_epochs_only_and_negative_is_refused():
    assert TrainConfig(data="d", run_dir="r").tensorboard_steps == 100
    assert "--tensorboard-steps" not in TrainConfig(data="d", run_dir="r").to_argv()
    assert parse_args(["--data", "d", "--run-dir", "r", "--tensorboard-steps", "0"]).tensorboard_steps == 0
    with pytest.raises(UserError, match="--tensorboard-steps must be an integer >= 0, not -1"):
        TrainConfig(data="d", run_dir="r", tensorboard_steps=-1)


def test_fractional_warmup_is_parsed_as_a_float_and_negative_is_refused():
    assert parse_args(["--data", "d", "--run-dir", "r", "--warmup-epochs", "0.5"]).warmup_epochs == 0.5
    with pytest.raises(UserError, match="--warmup-epochs must be >= 0"):
        TrainConfig(data="d", run_dir="r", warmup_epochs=-0.5)


@pytest.fixture(scope="module")
def chunk_1000_file(tmp_path_factory):
    """The tiny synthetic universe preprocessed with --chunk-windows 1000 (not the default 2,048)."""
    from preprocess.pipeline import build_dataset
    from preprocess.preprocess_config import PreprocessConfig
    from preprocess.synthetic import TINY_UNIVERSE, write_universe

    root = tmp_path_factory.mktemp("chunk1000")
    write_universe(root / "raw", **TINY_UNIVERSE)
    out = root / "sequences.h5"
    build_dataset(root / "raw", out, PreprocessConfig(chunk_windows=1000), workers=1, progress=False)
    return out


def test_the_shard_is_loaded_once_per_process_and_the_chunk_length_still_read(chunk_1000_file):
    info = sequences.read_sequences_info(chunk_1000_file)
    assert info.block_windows == 1000 != sequences.BLOCK_WINDOWS
    start, stop = data.shard_range(info.windows["train"], 1, 3)
    data.shard_windows.cache_clear()
    for epoch in (1, 2):
        with data.epoch_batches(info, 32, 3, seed=0, epoch=epoch, rank=1, size=3) as batches:
            xs, ys = batches.take(2)
        assert xs.shape == (2, 32, info.seq_len, info.n_features) and ys.shape == (2, 32)
    assert data.shard_windows.cache_info().misses == 1 and data.shard_windows.cache_info().hits == 1


def test_epoch_batches_hand_over_the_epochs_batches_in_order_and_stop_cleanly(chunk_1000_file):
    info = sequences.read_sequences_info(chunk_1000_file)
    start, stop = data.shard_range(info.windows["train"], 0, 2)
    expected = list(data.iter_train_batches(str(chunk_1000_file), start, stop, 16, 10, seed=3, epoch=2,
                                            rank=0))
    with data.epoch_batches(info, 16, 10, seed=3, epoch=2, rank=0, size=2) as batches:
        first, rest = batches.take(3), batches.take(7)
        with pytest.raises(RuntimeError, match="ran out after 0 of 1"):
            batches.take(1)
    xs = np.concatenate([first[0], rest[0]])
    np.testing.assert_array_equal(xs, np.stack([x for x, _ in expected]))
    np.testing.assert_array_equal(np.concatenate([first[1], rest[1]]), np.stack([y for _, y in expected]))
    # stopped early (a stop signal mid-epoch): close() ends the reader, which closes the file
    batches = data.epoch_batches(info, 16, 10, seed=3, epoch=2, rank=0, size=2)
    batches.take(1)
    batches.close()
    assert not batches._thread.is_alive()
    h5py.File(chunk_1000_file, "r+").close()  # no reader left holding the file


def test_epoch_batches_raise_the_readers_error_in_the_training_thread(chunk_1000_file):
    info = sequences.read_sequences_info(chunk_1000_file)
    with data.epoch_batches(info, 16, 10**6, seed=0, epoch=1, rank=0, size=1) as batches:
        with pytest.raises(RuntimeError, match="ran out of rows"):
            batches.take(10**6)


def test_metrics_from_shard_sums_match_direct_computation_per_ticker():
    rng = np.random.default_rng(0)
    n = 400
    tickers = rng.integers(0, 3, n)
    norm_min = rng.uniform(10, 20, (3, 2))
    norm_max = norm_min + rng.uniform(5, 50, (3, 2))
    y, last, pred = rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    seed = SeedTransform(features=("close", "volume"), norm_min=norm_min, norm_max=norm_max)
    lo, hi = norm_min[tickers, 0], norm_max[tickers, 0]

    def price(v):
        return v * (hi - lo) + lo

    last_price = price(last)  # the trainer hands over the last close in price units
    # no move (the target is the last close, as preprocessing writes it): left out of direction accuracy
    y[:20] = seed.target_forward(last_price[:20], last_price[:20], tickers[:20])
    parts = [metrics.shard_sums(pred[s], y[s], last_price[s], tickers[s], seed)
             for s in (slice(0, 150), slice(150, n))]  # two "ranks"
    result = metrics.metrics_from_sums(parts[0] + parts[1])
    assert result["mse"] == pytest.approx(np.mean((pred - y) ** 2))
    assert result["rmse_price"] == pytest.approx(np.sqrt(np.mean((price(pred) - price(y)) ** 2)))
    assert result["mae_price"] == pytest.approx(np.mean(np.abs(price(pred) - price(y))))
    assert result["persistence_rmse_price"] == pytest.approx(np.sqrt(np.mean((price(last) - price(y)) ** 2)))
    # skill compares prices, whatever the representation
    assert result["skill"] == pytest.approx(
        1 - np.mean((price(pred) - price(y)) ** 2) / np.mean((price(last) - price(y)) ** 2))
    moved = slice(20, n)
    assert result["direction_accuracy"] == pytest.approx(
        np.mean(np.sign(pred[moved] - last[moved]) == np.sign(y[moved] - last[moved])))
    assert set(result) == set(timing.TEST_METRIC_FIELDS)


def test_timing_events_refuse_missing_or_unknown_fields():
    with pytest.raises(ValueError, match="missing"):
        timing.make_event("run_end", status="completed", total_seconds=1.0)
    with pytest.raises(ValueError, match="unknown"):
        timing.make_event("run_end", status="completed", total_seconds=1.0, test=None, extra=1)
    with pytest.raises(ValueError, match="status"):
        timing.make_event("run_end", status="done", total_seconds=1.0, test=None)
    record = timing.make_event("run_end", status="failed", total_seconds=None, test=None)
    assert record == {"schema": 1, "event": "run_end", "status": "failed", "total_seconds": None,
                      "test": None}


def test_timing_close_appends_failed_run_end_only_once(tmp_path, capsys):
    log = tmp_path / rundir.TIMING_LOG
    log.write_text(json.dumps({"schema": 1, "event": "run_start", "time": "2026-01-01T00:00:00Z"}) + "\n"
                   + '{"schema": 1, "event": "epo')  # torn line from a killed job
    assert timing.main(["close", str(tmp_path), "--status", "failed"]) == 0
    assert timing.main(["close", str(tmp_path)]) == 0
    events = timing.read_events(log)
    assert [e["event"] for e in events] == ["run_start", "run_end"]
    assert events[-1]["status"] == "failed" and events[-1]["test"] is None
    assert events[-1]["total_seconds"] > 0
    assert "already closed" in capsys.readouterr().out
    with pytest.raises(UserError, match="no timing.jsonl"):
        timing.close_run(tmp_path / "nowhere")


def test_dataset_warnings_come_from_the_files_attribute_and_absent_stays_absent(tmp_path):
    said = ["AAA: times without a UTC offset were read as America/New_York", "BBB: bars look end-labelled"]
    files = {}
    for name, attr in (("with", json.dumps(said)), ("none", "[]"), ("old", None), ("other", "not json")):
        files[name] = tmp_path / f"{name}.h5"
        with h5py.File(files[name], "w") as h5:
            if attr is not None:
                h5.attrs["warnings"] = attr
    assert dataset_warnings(str(files["with"])) == said
    assert dataset_warnings(str(files["none"])) == []
    assert dataset_warnings(str(files["old"])) is None      # a file from before the attribute
    assert dataset_warnings(str(files["other"])) is None    # another tool's attribute of that name
    start = dict(time="t", job_id=None, attempt=0, resumed_from_epoch=None, ranks=1, nodes=1, gpus_per_node=0,
                 hosts=["h"], batch_size_per_rank=1, global_batch_size=1, learning_rate=1e-3, epochs=1,
                 mode=None, dataset="d", windows={}, versions={}, config={}, hardware=None)
    assert timing.make_event("run_start", **start, dataset_warnings=said)["dataset_warnings"] == said
    assert "dataset_warnings" not in timing.make_event("run_start", **start, dataset_warnings=None)
    with pytest.raises(ValueError, match="dataset_warnings"):
        timing.make_event("run_start", **start, dataset_warnings="AAA: one string, not a list")


@pytest.mark.parametrize("user_value, expected", [(None, "1"), ("0", "0")])
def test_horovod_engine_makes_waiting_mpi_ranks_yield_unless_the_user_chose(user_value, expected):
    # Open MPI reads the variable in MPI_Init (inside hvd.init()), so HorovodEngine.init must set it first;
    # a fresh interpreter, since an initialised Horovod cannot be initialised again.
    import os
    import subprocess
    import sys

    from stockpredict.job.engine import MPI_YIELD_VARIABLE

    env = {k: v for k, v in os.environ.items() if k != MPI_YIELD_VARIABLE}
    if user_value is not None:
        env[MPI_YIELD_VARIABLE] = user_value
    code = ("import os; from stockpredict.job.engine import make_engine, MPI_YIELD_VARIABLE as V\n"
            "e = make_engine('horovod'); before = os.environ.get(V); e.init()\n"
            "print(before, os.environ.get(V), e.size)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=str(layout.__file__).rsplit("/stockpredict/", 1)[0])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(user_value), expected, "1"]
