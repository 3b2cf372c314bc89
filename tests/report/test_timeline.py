"""The Horovod timeline parser (stockpredict/report/timeline.py): a real 2-rank timeline recorded with
`HOROVOD_TIMELINE=... horovodrun -np 2 -H localhost:2 --gloo python tests/programs/timeline_train.py 5`
(tests/fixtures/horovod_timeline_2ranks.json: 1 warm-up step + 5 steps, 7 gradient tensors), and small
hand-made timelines whose shares are known exactly."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from stockpredict.report.timeline import TimelineError, load_events, read_timeline, step_breakdown

REAL = REPO / "tests" / "fixtures" / "horovod_timeline_2ranks.json"


def test_real_two_rank_timeline_gives_five_steps_of_seven_gradients():
    breakdown = read_timeline(REAL)
    assert breakdown.steps == 5 and breakdown.gradient_tensors == 7   # LSTM 3, Dense 2 x 2 variables
    shares = (breakdown.compute_share, breakdown.negotiate_share, breakdown.allreduce_share)
    assert all(0 < s < 1 for s in shares) and sum(shares) == pytest.approx(1.0)
    # Step time: from the end of the warm-up step's last allreduce to the end of the last one.
    events = json.loads(REAL.read_text())
    ends = sorted(e["ts"] for e in events if e.get("ph") == "E" and "args" in e and "shape" in e["args"])
    assert breakdown.seconds_per_step == pytest.approx((ends[-1] - ends[6]) * 1e-6 / 5, rel=1e-6)
    # Gloo's own reduction is part of the allreduce time, never more.
    allreduce_seconds = breakdown.allreduce_share * breakdown.seconds_per_step
    assert 0 < breakdown.phase_seconds["GLOO_ALLREDUCE"] <= allreduce_seconds


def test_an_unterminated_timeline_from_a_killed_job_still_reads():
    text = REAL.read_text()
    cut = text[: len(text) * 2 // 3]          # mid-event, no closing bracket
    events = load_events(cut)
    assert 0 < len(events) < len(json.loads(text))
    assert 1 <= step_breakdown(events).steps < 5


def _timeline(spans):
    """A timeline from (pid, name, start_ms, end_ms, children) tuples; children are (name, start, end)."""
    events = []
    for pid, name, start, end, children in spans:
        events.append({"ph": "B", "name": name, "ts": start * 1000, "pid": pid})
        for child, c_start, c_end in children:
            events += [{"ph": "B", "name": child, "ts": c_start * 1000, "pid": pid},
                       {"ph": "E", "ts": c_end * 1000, "pid": pid}]
        events.append({"ph": "E", "ts": end * 1000, "pid": pid})
    return sorted(events, key=lambda e: e["ts"])


def test_shares_of_a_hand_made_timeline():
    # Two tensors, steps every 10 ms. In each step: negotiation 4-6 ms (tensor 1) and 5-7 ms (tensor 2),
    # allreduce 6-8 ms (tensor 1, Gloo 6.5-7.5) and 7-9 ms (tensor 2): step ends at 9 ms.
    spans = []
    for step in range(4):
        t = 10 * step
        spans += [(1, "NEGOTIATE_ALLREDUCE", t + 4, t + 6, []), (2, "NEGOTIATE_ALLREDUCE", t + 5, t + 7, []),
                  (1, "ALLREDUCE", t + 6, t + 8, [("GLOO_ALLREDUCE", t + 6.5, t + 7.5)]),
                  (2, "ALLREDUCE", t + 7, t + 9, [])]
    breakdown = step_breakdown(_timeline(spans))
    assert breakdown.steps == 3 and breakdown.seconds_per_step == pytest.approx(0.010)
    # Per 10 ms step: allreduce 6-9 ms = 3 ms; negotiation alone 4-6 ms = 2 ms; the other 5 ms compute.
    assert (breakdown.allreduce_share, breakdown.negotiate_share, breakdown.compute_share) == \
        pytest.approx((0.3, 0.2, 0.5))
    assert breakdown.phase_seconds["GLOO_ALLREDUCE"] == pytest.approx(0.001)
    assert step_breakdown(_timeline(spans), skip_steps=2).steps == 2
    # A tensor reduced less often (e.g. a stop-flag check) is no gradient; its time still counts.
    extra = spans + [(3, "ALLREDUCE", 21, 22, [])]
    with_extra = step_breakdown(_timeline(extra))
    assert with_extra.gradient_tensors == 2
    assert with_extra.allreduce_share == pytest.approx((3 * 3 + 1) / 30)


def test_bad_timelines_fail_with_one_line_reasons(tmp_path):
    with pytest.raises(TimelineError, match="not a Horovod timeline"):
        load_events('{"traceEvents": []}')
    with pytest.raises(TimelineError, match="no allreduce"):
        step_breakdown(_timeline([(1, "NEGOTIATE_BROADCAST", 0, 1, [])]))
    with pytest.raises(TimelineError, match="too few"):
        step_breakdown(_timeline([(1, "ALLREDUCE", 0, 1, [])]))
    with pytest.raises(TimelineError, match="cannot read timeline .*missing.json"):
        read_timeline(tmp_path / "missing.json")
