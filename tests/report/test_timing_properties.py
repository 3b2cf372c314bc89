"""Generated hostile timing logs: a trainer's log with a field set to any JSON value (wrong types, huge and
non-finite numbers, nested junk), a field removed, the text cut anywhere, garbage bytes in any encoding
spliced in. `make report`'s reading (load_runs) either uses the run or skips it with a reason, and a
report built from whatever it used writes every table; nothing else may be raised."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from test_report import run_end, simple_run

from conftest import hypothesis_settings
from stockpredict import report
from stockpredict.common.errors import UserError

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
              st.sampled_from([0, -1, 1e308, -1e-308, "", "nan", "completed", "failed", "strong", "tf"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner,
                                                                         max_size=3)),
    max_leaves=6)


@st.composite
def timing_logs(draw) -> bytes:
    events = simple_run(draw(st.sampled_from([1, 2])), [10.0, 9.5])
    if draw(st.booleans()):
        events = events[:-1] + [run_end(status=draw(st.sampled_from(["completed", "failed", "preempted"])))]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        event = events[draw(st.integers(min_value=0, max_value=len(events) - 1))]
        names = sorted(event)
        name = draw(st.sampled_from(names))
        action = draw(st.sampled_from(["set", "delete", "nest"]))
        if action == "delete":
            event.pop(name)
        elif action == "set":
            event[name] = draw(json_values)
        elif isinstance(event.get(name), dict) and event[name]:
            inner = draw(st.sampled_from(sorted(event[name])))
            event[name] = dict(event[name], **{inner: draw(json_values)})
    text = "".join(json.dumps(e, allow_nan=True) + "\n" for e in events).encode()
    damage = draw(st.sampled_from(["none", "cut", "splice", "encode"]))
    if damage == "cut":
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    elif damage == "splice":
        at = draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=40)) + text[at:]
    elif damage == "encode":
        text = text.decode().encode(draw(st.sampled_from(["utf-16", "utf-32", "latin-1"])))
    return text


def _read_and_report(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        (runs / "r1").mkdir(parents=True)
        (runs / "r1" / "timing.jsonl").write_bytes(content)
        try:
            loaded = report.load_runs(runs)
        except UserError:
            return
        assert len(loaded.runs) + len(loaded.skipped) == 1
        if not loaded.runs:
            return
        config = report.ReportConfig(runs_dir=runs, out_dir=Path(tmp), plots=False)
        try:
            built = report.build_report(loaded, config)
        except UserError:
            return
        report.write_report(built, Path(tmp))
        assert (Path(tmp) / "scaling.md").is_file()


@hypothesis_settings(4000)
@given(timing_logs())
def test_any_damage_to_a_timing_log_is_used_or_skipped_with_a_reason_never_a_crash(content):
    _read_and_report(content)
