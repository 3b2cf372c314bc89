"""Restarts of a run and the training time they cost, from the attempts in one timing log.

A restart is a `run_start` after the first. The time lost to it is the wall time of the interrupted
attempt (its `run_end` total_seconds) that did not become training the run kept: minus the epochs it
logged that the next attempt did not redo, minus the steps of its last, partly trained epoch that the
next attempt resumed after (`resumed_from_step`, valued at the run's median seconds per step). What is
left is start-up after the imports, graph building, checkpoint writes and steps trained after the last
checkpoint. Unknown (None) when the interrupted attempt has no run_end with a time (killed outright).
See docs/report.md, "Restarts".
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class Restart:
    """One restart: where the next attempt resumed and what the interrupted attempt lost (seconds)."""

    resumed_from_epoch: int
    resumed_from_step: int
    lost_seconds: float | None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _position(start: Mapping[str, Any]) -> tuple[int, int]:
    """(epochs done, steps into the next epoch) an attempt started from; (0, 0) for a fresh start."""
    epoch, step = start.get("resumed_from_epoch"), start.get("resumed_from_step")
    return (epoch if isinstance(epoch, int) else 0, step if isinstance(step, int) else 0)


def seconds_per_step(events: Sequence[Mapping[str, Any]]) -> float | None:
    """Median train_seconds/steps over the log's epochs (not resumed ones, unless there are no others)."""
    epochs = [e for e in events if e.get("event") == "epoch" and (_number(e.get("steps")) or 0) > 0]
    plain = [e for e in epochs if not e.get("resumed")] or epochs
    rates = [e["train_seconds"] / e["steps"] for e in plain if _number(e.get("train_seconds")) is not None]
    return statistics.median(rates) if rates else None


def restarts_of(events: Sequence[Mapping[str, Any]]) -> tuple[Restart, ...]:
    """Every restart in a log's events (in file order), with the time the interrupted attempt lost."""
    attempts: list[dict] = []
    for event in events:
        if event.get("event") == "run_start":
            attempts.append({"start": event, "epochs": [], "end": None})
        elif attempts and event.get("event") == "epoch":
            attempts[-1]["epochs"].append(event)
        elif attempts and event.get("event") == "run_end":
            attempts[-1]["end"] = event
    per_step = seconds_per_step(events)
    restarts = []
    for attempt, following in zip(attempts, attempts[1:]):
        epoch0, step0 = _position(attempt["start"])
        kept_epoch, kept_step = _position(following["start"])
        total = _number((attempt["end"] or {}).get("total_seconds"))
        kept = sum(e["train_seconds"] + e["val_seconds"] for e in attempt["epochs"]
                   if e.get("epoch", 0) <= kept_epoch)
        # Steps of epoch kept_epoch + 1 that this attempt trained and the next one kept.
        partial = 0 if kept_epoch < epoch0 else kept_step - (step0 if kept_epoch == epoch0 else 0)
        if total is None or (partial > 0 and per_step is None):
            lost = None
        else:
            lost = round(max(0.0, total - kept - max(partial, 0) * (per_step or 0.0)), 3)
        restarts.append(Restart(kept_epoch, kept_step, lost))
    return tuple(restarts)


def restart_summary(runs: Sequence[Any]) -> str:
    """The report header's line: restarts per run and the training time lost to them."""
    restarted = [r for r in runs if r.restarts]
    if not restarted:
        return "- **Restarts:** none (no run was preempted or requeued)."
    parts = []
    for run in restarted:
        lost = [r.lost_seconds for r in run.restarts]
        known = sum(x for x in lost if x is not None)
        text = f"{run.run_id}: {len(lost)} restart{'s' if len(lost) > 1 else ''}, {known:.1f} s lost"
        unknown = sum(1 for x in lost if x is None)
        if unknown:
            text += f" (+ {unknown} unmeasured: attempt killed before its run_end)"
        parts.append(text)
    return (f"- **Restarts:** {sum(len(r.restarts) for r in restarted)} in {len(restarted)} run(s); training "
            "time lost = wall time of an interrupted attempt not kept as training (start-up, checkpoints, "
            "steps after the last checkpoint): " + "; ".join(parts) + ".")
