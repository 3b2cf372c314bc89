"""Horovod timeline -> where each training step's time went: computing, negotiating, allreducing.

    breakdown = read_timeline("run/timeline.json", skip_steps=1)
    breakdown.compute_share, breakdown.negotiate_share, breakdown.allreduce_share   # sum to 1

Horovod writes the timeline (HOROVOD_TIMELINE=<file>) on rank 0 only, in Chrome's trace format: a JSON
list of events, one "process" (pid) per tensor, each op a begin/end ("B"/"E") pair, nested: a top-level
NEGOTIATE_ALLREDUCE (rank 0 waiting until every rank has the tensor ready) then a top-level ALLREDUCE
holding its phases (MEMCPY_IN_FUSION_BUFFER, GLOO_ALLREDUCE or MPI_ALLREDUCE, MEMCPY_OUT_FUSION_BUFFER).
A killed job leaves the list unterminated; that is read too.

Steps: the gradient tensors are the ones allreduced most often (once per step each); step k ends when the
last of them finishes its k-th allreduce, and lasts from the end of step k - 1. Within a step, on rank 0's
clock, time is split three ways (each instant counted once):
- allreduce: some tensor is inside ALLREDUCE;
- negotiate: otherwise, some tensor is negotiating: rank 0 waits for the other ranks (which includes
  rank 0's own backward pass still producing later gradients, and slower ranks);
- compute: no Horovod op pending: forward pass, the start of the backward pass, the optimizer, Python.
The first step (graph building, ranks starting at different times) is skipped by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

NEGOTIATE_PREFIX = "NEGOTIATE_"
TOP_LEVEL_OPS = ("ALLREDUCE", "ALLGATHER", "BROADCAST", "ALLTOALL", "REDUCESCATTER")


class TimelineError(ValueError):
    """The file is no Horovod timeline or holds too few steps; the message says which."""


@dataclass(frozen=True)
class StepBreakdown:
    """Mean shares of a step (each 0..1, summing to 1) and the mean step time, over `steps` steps."""

    steps: int
    seconds_per_step: float
    compute_share: float
    negotiate_share: float
    allreduce_share: float
    gradient_tensors: int                 # tensors allreduced once per step
    phase_seconds: dict                   # mean seconds per step inside each ALLREDUCE phase (by name)

    def as_row(self) -> dict:
        return {"steps": self.steps, "seconds_per_step": self.seconds_per_step,
                "compute_share": self.compute_share, "negotiate_share": self.negotiate_share,
                "allreduce_share": self.allreduce_share, "gradient_tensors": self.gradient_tensors}


def load_events(text: str) -> list[dict]:
    """The events of a timeline file; an unterminated list (the job was killed) is closed first."""
    stripped = text.strip()
    if not stripped.startswith("["):
        raise TimelineError("not a Horovod timeline: it must be a JSON list of trace events")
    try:
        events = json.loads(stripped)
    except json.JSONDecodeError:
        body = stripped.rstrip(",")
        try:
            events = json.loads(body + "]")
        except json.JSONDecodeError:
            # Cut mid-event: drop the torn last event.
            cut = body.rfind("}")
            while cut > 0:
                try:
                    events = json.loads(body[:cut + 1] + "]")
                    break
                except json.JSONDecodeError:
                    cut = body.rfind("}", 0, cut)
            else:
                raise TimelineError("not a Horovod timeline: unreadable JSON") from None
    return [e for e in events if isinstance(e, dict)]


def activity_intervals(events: list[dict]) -> list[tuple[int, str, int, float, float]]:
    """(pid, name, depth, start, end) of every closed begin/end pair, times in seconds; depth 0 is a
    top-level op (NEGOTIATE_*, ALLREDUCE, ...), deeper ones its phases."""
    stacks: dict[int, list[tuple[str, float]]] = {}
    intervals = []
    for event in events:
        phase, pid = event.get("ph"), event.get("pid")
        if pid is None or "ts" not in event:
            continue
        stack = stacks.setdefault(pid, [])
        if phase == "B":
            stack.append((str(event.get("name")), float(event["ts"]) * 1e-6))
        elif phase == "E" and stack:
            name, start = stack.pop()
            intervals.append((pid, name, len(stack), start, float(event["ts"]) * 1e-6))
    return intervals


def _union_length(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of `spans` clipped to [lo, hi]."""
    total, reach = 0.0, lo
    for start, end in sorted(spans):
        start, end = max(start, reach), min(end, hi)
        if end > start:
            total += end - start
            reach = end
    return total


def step_breakdown(events: list[dict], skip_steps: int = 1) -> StepBreakdown:
    """Shares of compute, negotiation and allreduce per step (see the module docstring)."""
    intervals = activity_intervals(events)
    allreduces: dict[int, list[tuple[float, float]]] = {}
    for pid, name, depth, start, end in intervals:
        if depth == 0 and name == "ALLREDUCE":
            allreduces.setdefault(pid, []).append((start, end))
    if not allreduces:
        raise TimelineError("the timeline holds no allreduce: was it recorded during training?")
    count = max(len(spans) for spans in allreduces.values())
    gradient_pids = [pid for pid, spans in allreduces.items() if len(spans) == count]
    ends = [max(sorted(allreduces[pid])[k][1] for pid in gradient_pids) for k in range(count)]
    # Step k lies between the ends of steps k-1 and k: the first recorded step has no start.
    windows = list(zip(ends[:-1], ends[1:]))[max(skip_steps - 1, 0):]
    if not windows:
        raise TimelineError(f"the timeline holds {count} step(s): too few after skipping {skip_steps}")
    top = [(name, start, end) for _pid, name, depth, start, end in intervals if depth == 0]
    reducing = [(s, e) for name, s, e in top if name in TOP_LEVEL_OPS]
    negotiating = [(s, e) for name, s, e in top if name.startswith(NEGOTIATE_PREFIX)]
    busy = reducing + negotiating
    phases: dict[str, list[tuple[float, float]]] = {}
    for _pid, name, depth, start, end in intervals:
        if depth > 0:
            phases.setdefault(name, []).append((start, end))
    total = sum(hi - lo for lo, hi in windows)
    reduce_time = sum(_union_length(reducing, lo, hi) for lo, hi in windows)
    busy_time = sum(_union_length(busy, lo, hi) for lo, hi in windows)
    return StepBreakdown(
        steps=len(windows), seconds_per_step=total / len(windows),
        compute_share=(total - busy_time) / total, negotiate_share=(busy_time - reduce_time) / total,
        allreduce_share=reduce_time / total, gradient_tensors=len(gradient_pids),
        phase_seconds={name: sum(_union_length(spans, lo, hi) for lo, hi in windows) / len(windows)
                       for name, spans in sorted(phases.items())})


def read_timeline(path: Path | str, skip_steps: int = 1) -> StepBreakdown:
    """step_breakdown of the timeline file at `path` (TimelineError names the file on failure)."""
    try:
        return step_breakdown(load_events(Path(path).read_text(encoding="utf-8")), skip_steps)
    except OSError as err:
        raise TimelineError(f"cannot read timeline {path}: {err.strerror}") from None
    except TimelineError as err:
        raise TimelineError(f"{path}: {err}") from None
