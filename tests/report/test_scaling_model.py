"""The scaling model (stockpredict/report/scaling_model.py) and its rendering: parameter recovery, held-out
check,
presets, cost arithmetic, a synthetic ring-allreduce world, and the seed's own published table."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from stockpredict.report import scaling_model as sm
from stockpredict.report.prediction import (
    last_worthwhile_doubling,
    plot_prediction,
    render_markdown,
    write_prediction_csv,
)

S = 49_900          # gradient bytes of the seed's model (about 12,300 fp32 parameters)
W = 1_000_000       # windows per epoch of the synthetic worlds


def _world(overhead, per_sample, latency, bandwidth, compute_extra=lambda b: 0.0, noise=0.0, seed=0):
    """Timing logs of a world whose steps take exactly the ring model's time (plus `compute_extra(b)`
    and multiplicative noise): returns a function (ranks, batch, mode) -> MeasuredPoint."""
    rng = np.random.default_rng(seed)

    def run(ranks, batch, mode=None):
        step = (overhead + per_sample * batch + compute_extra(batch) + 2 * (ranks - 1) * latency
                + 2 * (ranks - 1) / ranks * S / bandwidth)
        step *= 1.0 + noise * rng.uniform(-1.0, 1.0)
        steps = W // (ranks * batch)
        return sm.MeasuredPoint(ranks, batch, steps * step, S, windows=W, mode=mode,
                                label=f"p{ranks}-b{batch}")
    return run


def test_recovers_known_parameters_from_noise_free_logs():
    run = _world(overhead=2e-3, per_sample=30e-6, latency=150e-6, bandwidth=1.0e9)
    points = [run(1, b) for b in (32, 64, 128, 256)] + [run(p, 64, "weak") for p in (2, 4, 8, 16)]
    fit = sm.fit_model(points)
    assert fit.overhead_s == pytest.approx(2e-3, rel=1e-3)   # steps are floored: tiny rounding only
    assert fit.per_sample_s == pytest.approx(30e-6, rel=1e-3)
    assert fit.latency_s == pytest.approx(150e-6, rel=1e-2)
    assert fit.bandwidth_bytes_per_s == pytest.approx(1.0e9, rel=2e-2)
    assert "fitted" in fit.communication_source and not fit.notes


def test_nnls_keeps_parameters_non_negative_and_matches_lstsq_when_feasible():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    assert sm.nnls(a, np.array([1.0, 3.0, 5.0])) == pytest.approx([1.0, 2.0])
    # The unconstrained slope would be negative: it is clamped to zero and the intercept refitted.
    assert sm.nnls(a, np.array([5.0, 3.0, 1.0])) == pytest.approx([3.0, 0.0])


def test_too_few_rank_counts_fit_latency_only_and_say_so():
    run = _world(overhead=1e-3, per_sample=10e-6, latency=200e-6, bandwidth=math.inf)
    points = [run(1, 32), run(1, 128), run(2, 32, "weak"), run(4, 32, "weak")]
    fit = sm.fit_model(points)
    assert math.isinf(fit.bandwidth_bytes_per_s) and fit.latency_s == pytest.approx(200e-6, rel=1e-2)
    assert any("too few" in note for note in fit.notes)
    with_preset = sm.fit_model(points, network="10gbe")
    assert with_preset.bandwidth_bytes_per_s == sm.NETWORKS["10gbe"].bandwidth_bytes_per_s
    assert "preset 10gbe" in with_preset.communication_source
    # The preset's bandwidth term is taken out of the measured communication: latency shrinks by it.
    assert with_preset.latency_s < fit.latency_s


def test_presets_are_used_when_only_one_rank_was_measured_and_unknown_names_fail():
    run = _world(overhead=1e-3, per_sample=10e-6, latency=0, bandwidth=math.inf)
    points = [run(1, 32), run(1, 256)]
    with pytest.raises(sm.ModelError, match="network preset"):
        sm.fit_model(points)
    for name, preset in sm.NETWORKS.items():
        fit = sm.fit_model(points, network=name)
        assert (fit.latency_s, fit.bandwidth_bytes_per_s) == (preset.latency_s, preset.bandwidth_bytes_per_s)
        assert name in fit.communication_source
        assert preset.latency_s > 0 and preset.bandwidth_bytes_per_s > 0 and preset.source
    # Faster networks predict faster allreduces of the same gradient on 64 ranks.
    times = {n: sm.fit_model(points, network=n).allreduce_seconds(64) for n in ("10gbe", "100gbe", "ib-ndr")}
    assert times["10gbe"] > times["100gbe"] > times["ib-ndr"]
    with pytest.raises(sm.ModelError, match="unknown network 'token-ring'; valid: shm, 10gbe"):
        sm.network_preset("token-ring")


def test_on_network_keeps_compute_and_swaps_communication():
    run = _world(overhead=1e-3, per_sample=10e-6, latency=500e-6, bandwidth=1e8)
    points = [run(1, 32), run(1, 64)] + [run(p, 32, "weak") for p in (2, 4, 8)]
    fit = sm.fit_model(points)
    ib = fit.on_network("ib-hdr")
    assert (ib.overhead_s, ib.per_sample_s) == (fit.overhead_s, fit.per_sample_s)
    assert ib.latency_s == sm.NETWORKS["ib-hdr"].latency_s
    assert ib.step_seconds(8, 32) < fit.step_seconds(8, 32)


def test_held_out_refits_without_the_largest_rank_count_and_reports_its_error():
    run = _world(overhead=2e-3, per_sample=20e-6, latency=300e-6, bandwidth=2e9)
    points = [run(1, 32), run(1, 128)] + [run(p, 32, "weak") for p in (2, 4, 8, 16)]
    # Make the 16-rank run 20 % slower than the world: the held-out check must see exactly that error.
    slow = points[-1]
    points[-1] = sm.MeasuredPoint(16, 32, slow.seconds_per_epoch * 1.2, S, windows=W, mode="weak",
                                  label="slow")
    held = sm.held_out_check(points)
    assert held.ranks == 16 and [p.point.label for p in held.points] == ["slow"]
    assert held.points[0].error == pytest.approx(1 / 1.2 - 1, abs=0.01)
    assert held.max_abs_error == pytest.approx(abs(1 / 1.2 - 1), abs=0.01)
    # The refit never saw the 16-rank run: its parameters are the world's.
    assert held.fit.latency_s == pytest.approx(300e-6, rel=0.02)


def test_held_out_keeps_allreduce_benchmarks_and_explains_when_impossible():
    run = _world(overhead=2e-3, per_sample=20e-6, latency=300e-6, bandwidth=math.inf)
    ones = [run(1, 32), run(1, 128)]
    assert "only one rank count" in sm.held_out_check(ones).reason
    train2 = run(2, 64, "strong")
    # Without a benchmark, the 1-rank runs alone cannot give the communication terms.
    assert "cannot be fitted" in sm.held_out_check(ones + [train2]).reason
    # A 2-rank allreduce benchmark: 1000 allreduces, each 2 x 300 us.
    bench = sm.MeasuredPoint(2, 0, 1000 * 600e-6, S, steps_per_epoch=1000, kind="allreduce", label="bench")
    held = sm.held_out_check(ones + [bench, train2])
    assert held.ranks == 2 and abs(held.points[0].error) < 1e-3


def test_cost_columns_bill_gpus_or_whole_nodes():
    gpu = sm.Pricing(price_per_hour=3.0, unit="gpu", target_epochs=10)
    assert gpu.cost_columns(8, 1800.0) == pytest.approx(
        {"cost_per_epoch": 0.5 * 8 * 3.0, "hours_to_target": 5.0, "cost_to_target": 10 * 12.0})
    node = sm.Pricing(price_per_hour=20.0, unit="node", ranks_per_node=4)
    assert node.billed_units(5) == 2 and node.billed_units(8) == 2
    assert node.cost_columns(5, 3600.0)["cost_per_epoch"] == pytest.approx(40.0)
    with pytest.raises(sm.ModelError):
        sm.Pricing(price_per_hour=1.0, unit="cpu")


def test_predictions_cover_the_grid_per_series_with_costs():
    run = _world(overhead=1e-3, per_sample=20e-6, latency=100e-6, bandwidth=1e9)
    points = [run(1, 256, "strong"), run(1, 32), run(2, 128, "strong"),
              run(3, 32, "weak"), run(4, 32, "weak")]
    analysis = sm.analyse(points, network="10gbe", pricing=sm.Pricing(2.0, target_epochs=3))
    series = {(s.mode, s.batch) for s in analysis.series}
    assert series == {("strong", 256), ("weak", 32)}
    strong = [r for r in analysis.rows if r["mode"] == "strong"]
    weak = [r for r in analysis.rows if r["mode"] == "weak"]
    assert [r["ranks"] for r in strong] == [1, 2, 4, 8, 16, 32, 64, 128, 256]   # 3 does not divide 256
    assert [r["ranks"] for r in weak] == [1, 2, 3, 4, 8, 16, 32, 64, 128, 256]
    assert all(r["global_batch_size"] == 256 for r in strong)
    assert all(r["batch_size_per_rank"] == 32 and r["global_batch_size"] == 32 * r["ranks"] for r in weak)
    for r in analysis.rows:
        assert r["predicted_efficiency"] == pytest.approx(r["predicted_speedup"] / r["ranks"])
        assert r["cost_to_target"] == pytest.approx(3 * r["cost_per_epoch"])
        expected = r["predicted_seconds_per_epoch"] / 3600 * r["ranks"] * 2.0
        assert r["cost_per_epoch"] == pytest.approx(expected)
    assert strong[0]["predicted_speedup"] == 1.0 and strong[0]["measured_seconds_per_epoch"] is not None
    assert [r["ranks"] for r in weak if r["measured_seconds_per_epoch"] is not None] == [1, 3, 4]
    text = write_prediction_csv(analysis)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(sm.PREDICTION_COLUMNS + sm.COST_COLUMNS) and len(rows) == len(analysis.rows)


def test_known_ring_allreduce_world_predicts_16_and_32_ranks_within_15_percent():
    """A world that is not exactly the model: compute is concave in the batch and every run has up to
    +-3 % noise. 1-rank batch sweep plus strong scaling at 1, 2, 4, 8 ranks (speedup peaks at 4)."""
    def extra(b):
        return 0.5e-3 * (1 - math.exp(-b / 64))
    truth = _world(overhead=1e-3, per_sample=40e-6, latency=500e-6, bandwidth=1.25e9, compute_extra=extra)
    measure = _world(overhead=1e-3, per_sample=40e-6, latency=500e-6, bandwidth=1.25e9, compute_extra=extra,
                     noise=0.03, seed=7)
    points = [measure(1, b) for b in (32, 64, 128)] + [measure(p, 256 // p, "strong") for p in (1, 2, 4, 8)]
    true_speedup = {p: truth(1, 256).seconds_per_epoch / truth(p, 256 // p).seconds_per_epoch
                    for p in (1, 2, 4, 8, 16, 32)}
    assert true_speedup[4] > true_speedup[8] and true_speedup[4] > true_speedup[2] > 1   # peaks, then falls
    analysis = sm.analyse(points)
    predicted = {r["ranks"]: r["predicted_speedup"] for r in analysis.rows if r["mode"] == "strong"}
    for p in (16, 32):
        assert predicted[p] == pytest.approx(true_speedup[p], rel=0.15), (p, predicted[p], true_speedup[p])
    assert dict(analysis.peaks)["strong, global batch 256"]["ranks"] == 4


def seed_points() -> list[sm.MeasuredPoint]:
    """The seed's published epoch times (vrsivananda/CS205_FinalProject,
    stock_predict/performance_testing/training/*.txt): one M60 at batch 32/64/96/128, then 1-4 nodes with
    one GPU each at 32 per node (global batch 32 x nodes: steps per epoch shrink with the nodes)."""
    windows = 775_000
    ones = [sm.MeasuredPoint(1, b, t, S, windows=windows, label=f"1 GPU, batch {b}")
            for b, t in ((32, 148.0), (64, 71.0), (96, 49.0), (128, 37.0))]
    nodes = [sm.MeasuredPoint(n, 32, t, S, windows=windows, mode="weak", label=f"{n} nodes")
             for n, t in ((2, 106.0), (3, 82.5), (4, 72.0))]
    return ones + nodes


def test_the_seeds_table_with_the_4_node_run_held_out_predicts_it_within_10_percent():
    held = sm.held_out_check(seed_points())
    assert held.ranks == 4 and len(held.points) == 1
    assert abs(held.points[0].error) <= 0.10, held.points[0]
    fit = held.fit
    # What limited the seed: ~6 ms per step whatever the batch, and ~1 ms per ring step.
    assert 5e-3 < fit.overhead_s < 7e-3 and fit.per_sample_s < 5e-6
    assert 0.5e-3 < fit.latency_s < 2e-3


def test_markdown_and_plot_render_the_analysis():
    analysis = sm.analyse(seed_points(), network="10gbe", pricing=sm.Pricing(1.0, target_epochs=20))
    text = render_markdown(analysis)
    assert text.startswith("## Scaling model\n")
    assert "Refitted without the 4-rank runs" in text and "| 4 nodes | 4 | 32 | 72 |" in text
    assert "weak, batch 32 per rank: highest predicted speedup" in text
    assert "cost_per_epoch" in text
    assert plot_prediction(analysis)[:8] == b"\x89PNG\r\n\x1a\n"


def test_last_worthwhile_doubling():
    speedups = ((1, 1.0), (2, 1.9), (4, 3.0), (8, 3.2), (16, 3.0))
    rows = [{"ranks": r, "predicted_speedup": s} for r, s in speedups]
    assert last_worthwhile_doubling(rows) == 4
    assert last_worthwhile_doubling([]) is None
