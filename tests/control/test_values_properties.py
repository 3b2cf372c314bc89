"""Generated hostile inputs for what a user types or keeps in a file on the login node: site profiles
(TOML with unknown or hostile keys and values, or not TOML at all, in any encoding) and the make/CLI
values (lists, job ids, time limits, signals). Each case ends in a result or a one-line UserError, never
another exception; a profile that loads renders a script whose #SBATCH lines are single lines."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from conftest import hypothesis_settings
from stockpredict.common.errors import UserError, parse_int_list
from stockpredict.common.train_config import TrainConfig
from stockpredict.control import submit
from stockpredict.control.jobscript import PROFILE_KEYS, SPEC_FIELDS, make_spec, render_job, validate

# --- TOML written from generated values -----------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["00:10:00", "1-00", "59", "0", "-1", "srun-pmix", "mpirun", "USR1", "SIGKILL", "KILL",
                     "$(reboot)", "`id`", "a\nb", "--exclusive", "x" * 300, "\x00", "node[1-4]"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
keys = st.one_of(st.sampled_from(PROFILE_KEYS + ("description", "price_per_gpu_hour", "price_per_node_hour")),
                 st.text(min_size=1, max_size=20))


def toml_value(value) -> str | None:
    """`value` as TOML text (None for what TOML cannot hold: null, a list holding one)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) \
            else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string (\uXXXX escapes included)
    parts = [toml_value(v) for v in value]
    return None if any(p is None for p in parts) else "[" + ", ".join(parts) + "]"


def toml_text(table: dict) -> str:
    lines = []
    for key, value in table.items():
        text = toml_value(value)
        if text is not None:
            lines.append(f"{json.dumps(key)} = {text}")
    return "\n".join(lines) + "\n"


profiles = st.one_of(
    st.dictionaries(keys, values, max_size=8).map(lambda t: toml_text(t).encode()),
    st.binary(max_size=200),                                       # garbage, any encoding
    st.text(max_size=200).map(lambda t: t.encode("utf-16")),       # another encoding
    st.dictionaries(keys, values, max_size=8).map(lambda t: toml_text(t).encode()[: len(toml_text(t)) // 2]))


def _check_profile(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.toml"
        path.write_bytes(content)
        config = TrainConfig(data="/d.h5", run_dir="")
        try:
            spec = submit.train_spec(str(path), Path("/scratch/run"), config)
        except UserError as err:
            assert "\n" not in str(err).strip() or str(err).count("\n") < 3
            return
    script = render_job(spec)
    for line in script.splitlines():
        if line.startswith("#SBATCH"):
            assert line.startswith("#SBATCH --") and "\r" not in line, line
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert any(d.startswith("#SBATCH --nodes=") for d in directives)


@hypothesis_settings(3000)
@given(profiles)
def test_a_site_profile_either_loads_and_renders_or_is_a_one_line_error(content):
    _check_profile(content)


# --- make / CLI values ------------------------------------------------------------------------------

words = st.one_of(st.text(max_size=30),
                  st.lists(st.integers(), max_size=5).map(lambda v: " ".join(map(str, v))),
                  st.sampled_from(["1 2 4", "1,2", "0", "-1", "1e3", "٣", "1 2 x", " ", "41:42", "41_3",
                                   "41;rm", "9" * 40]))


@hypothesis_settings(2000)
@given(text=words, kind=st.one_of(st.sampled_from(submit.AFTER_KINDS), st.text(max_size=12)))
def test_make_values_are_a_result_or_a_one_line_error(text, kind):
    try:
        numbers = parse_int_list(text, "NODES_LIST")
        assert numbers and all(isinstance(n, int) for n in numbers)
    except UserError:
        pass
    try:
        args = submit.dependency_args(text, kind)
        assert all(a.startswith("--dependency=") and "\n" not in a and ";" not in a for a in args)
    except UserError:
        pass


@hypothesis_settings(2000)
@given(field=st.sampled_from(["time", "requeue_signal", "nodes", "partition", "mem", "job_name",
                              "extra_directives", "launcher", "signal_seconds", "cpus_per_task", "unknown"]),
       value=values)
def test_a_job_value_from_any_source_is_valid_or_a_one_line_error(field, value):
    try:
        spec = validate(make_spec({field: value}))
    except UserError:
        return
    assert field in SPEC_FIELDS
    if field == "time":
        assert submit._minutes(spec.time) >= 0
    render_job(spec)  # a spec that validates always renders
