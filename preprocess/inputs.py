"""Read every ticker of a `--raw` path, and say what was understood: the summary's input rows and the
time-zone and bar-label warnings (docs/data.md, "Input formats" and "Time-zone safety").

`load_universe` runs its per-file and per-ticker tasks through a caller's runner (the pipeline's process
pool), so reading in parallel stays the pipeline's business and this module stays pure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from preprocess import bars, formats
from preprocess.preprocess_config import PreprocessConfig
from stockpredict.common.errors import UserError
from stockpredict.common.logs import get_logger

log = get_logger("stockpredict.preprocess")

Runner = Callable[[list], Iterable]  # [(function, args)] -> results in submission order


def run_serially(tasks: list) -> Iterable:
    """The simplest Runner: each task in this process, in order (for small inputs, tests, predict)."""
    return (function(*args) for function, args in tasks)


def load_universe(raw: Path, config: PreprocessConfig, run: Runner
                  ) -> tuple[list[bars.TickerSeries], dict[str, str], dict[str, str]]:
    """Read and clean every ticker. Returns (series sorted by ticker, {source: skip reason}, {file: sha256}).

    Raises UserError when `raw` holds nothing to read; a problem with one file or ticker is a skip.
    """
    raw = Path(raw)
    one_ticker_files, many_ticker_files = formats.plan_inputs(raw)
    skipped: dict[str, str] = {}
    hashes: dict[str, str] = {}
    tasks = [(load_ticker_file, (path, config)) for path in one_ticker_files]
    if many_ticker_files:
        groups, skipped, hashes = formats.gather_tickers(many_ticker_files, config, run,
                                                         single_file=raw.is_file())
        if raw.is_file() and not groups:
            raise UserError(f"input file {raw} has no rows")
        tasks += [(clean_group, (frame, ticker, label, config)) for ticker, (label, frame) in groups.items()]

    loaded: dict[str, bars.TickerSeries] = {}
    for label, digest, result in (run(tasks) if tasks else []):
        if digest:
            hashes[label] = digest
        if isinstance(result, str):
            log.warning("skipping %s", result)
            skipped[label] = result
        elif result.ticker in loaded:
            reason = f"{label}: ticker {result.ticker} already read from another file"
            log.warning("skipping %s", reason)
            skipped[label] = reason
        else:
            loaded[result.ticker] = result
    return [loaded[name] for name in sorted(loaded)], skipped, dict(sorted(hashes.items()))


def load_ticker_file(path: Path, config: PreprocessConfig):
    """Task: (file name, sha256, TickerSeries or skip reason) of a file holding one ticker."""
    digest = formats.file_sha256(path)
    try:
        frame = bars.read_ticker_csv(path, config)
        return path.name, digest, bars.clean_bars(frame, formats.ticker_from_path(path), path.name, config)
    except bars.TickerSkipped as err:
        return path.name, digest, str(err)


def clean_group(frame: pd.DataFrame, ticker: str, label: str, config: PreprocessConfig):
    """Task: (label, None, TickerSeries or skip reason) of one ticker's rows from many-ticker files."""
    try:
        return label, None, bars.clean_bars(frame, ticker, label, config)
    except bars.TickerSkipped as err:
        return label, None, str(err)


@dataclass
class InputReport:
    """What the reader understood, for the summary table, the log and the HDF5 attributes."""

    rows: list[tuple[str, str]]     # (summary row name, value)
    warnings: list[str]             # one line each
    understood: dict                # JSON-able: time, zone, bar_label, regular_minutes_share


def check_inputs(series: list[bars.TickerSeries], config: PreprocessConfig) -> InputReport:
    """Summarise how the tickers' times were read, and warn when they look shifted or end-labelled."""
    checks = [s.check for s in series if s.check is not None]
    if not checks:
        return InputReport([], [], {})
    times, zones = Counter(c.time for c in checks), Counter(c.zone for c in checks)
    regular = sum(c.regular_minutes for c in checks)
    possible = bars.SESSION_MINUTES * sum(c.sessions for c in checks)
    share = regular / possible if possible else 0.0
    label_text = {"start": "minute start (09:30 is the first bar)",
                  "end": "minute end (--bar-label end: each bar moved back one minute)"}[config.bar_label]
    rows = [("time column", _counted(times, len(checks))),
            ("time zone", _counted(zones, len(checks))),
            ("bar labels", label_text),
            ("regular-session minutes", f"{share:.1%} present ({regular:,} of {possible:,} in "
                                        f"{sum(c.sessions for c in checks):,} ticker-sessions)")]
    # A shifted clock also puts bars at 16:00 and none at 09:30: fix the zone first, then the labels.
    zone_warning = time_zone_warning(checks, config)
    warnings = [zone_warning] if zone_warning else [w for w in [bar_label_warning(checks, config)] if w]
    understood = {"time": sorted(times), "zone": sorted(zones), "bar_label": config.bar_label,
                  "regular_minutes_share": round(share, 4)}
    return InputReport(rows, warnings, understood)


def universe_profile(profiles: list[np.ndarray | None]) -> np.ndarray | None:
    """Mean of the tickers' volume profiles (each sums to 1), so every ticker weighs the same."""
    present = [p for p in profiles if p is not None]
    return np.mean(present, axis=0) if present else None


def time_zone_warning(checks: list[bars.InputCheck], config: PreprocessConfig) -> str | None:
    """One line when few regular-session minutes are present or the volume peak is mid-session."""
    share = _share([(c.regular_minutes, c.sessions) for c in checks])
    profile = universe_profile([c.volume_profile for c in checks])
    peak = bars.volume_peak_minute(profile) if profile is not None else None
    problems = []
    if share < bars.LOW_COVERAGE:
        problems.append(f"only {share:.0%} of regular-session minutes are present")
    if peak is not None and not bars.peak_near_open_or_close(peak):
        problems.append(f"the heaviest trading is at {bars.clock(peak)}, not near the open (09:30) or the "
                        f"close (16:00)")
    if not problems:
        return None
    naive = [c for c in checks if c.zone == config.tz]
    head = f"time zone check: {' and '.join(problems)}"
    if len(naive) * 2 < len(checks):
        return (f"{head}; the times carry their own zone (UTC offsets or epoch), so --tz does not apply: "
                f"check that the input holds regular-session US minute bars")
    alternatives = [c.alternative for c in naive if c.alternative]
    zone = bars.alternative_zone(config.tz)
    fix = f"--tz {zone}"
    if alternatives:
        alt_share = _share([(a["regular_minutes"], a["sessions"]) for a in alternatives])
        alt_profile = universe_profile([a["volume_profile"] for a in alternatives])
        alt_peak = bars.volume_peak_minute(alt_profile) if alt_profile is not None else None
        peak_ok = alt_peak is None or bars.peak_near_open_or_close(alt_peak)
        if alt_share >= bars.LOW_COVERAGE and peak_ok and alt_share >= share:
            seen = f"{alt_share:.0%} present" + (f", peak at {bars.clock(alt_peak)}" if alt_peak is not None
                                                 else "")
            return (f"{head} (times without offset read in {config.tz}); read in {zone} instead: {seen}: "
                    f"if the input's times are {zone}, pass {fix}")
    return (f"{head} (times without offset read in {config.tz}); pass the zone the input's times are in, "
            f"e.g. {fix}")


def bar_label_warning(checks: list[bars.InputCheck], config: PreprocessConfig) -> str | None:
    """One line when most tickers' bars run 09:31-16:00 (end labels read as start), or the reverse."""
    if config.bar_label == "start":
        present, absent, fix, form = "16:00", "09:30", "--bar-label end", "at the end of their minute"
    else:
        present, absent, fix, form = "09:29", "15:59", "--bar-label start (the default)", "at its start"
    flagged = [c for c in checks if c.sessions and c.edge_sessions.get(absent, 0) == 0
               and c.edge_sessions.get(present, 0) * 2 >= c.sessions]
    if not flagged or len(flagged) * 2 < len(checks):
        return None
    if config.bar_label == "start":
        return (f"bar labels: {len(flagged)} of {len(checks)} tickers have bars stamped 16:00 and none at "
                f"09:30, as when each bar is stamped {form}: pass {fix}")
    return (f"bar labels: read with --bar-label end, {len(flagged)} of {len(checks)} tickers have bars at "
            f"09:29 and none at 15:59, as when each bar is stamped {form}: pass {fix}")


def _share(pairs: list[tuple[int, int]]) -> float:
    possible = bars.SESSION_MINUTES * sum(sessions for _, sessions in pairs)
    return sum(minutes for minutes, _ in pairs) / possible if possible else 0.0


def _counted(counter: Counter, total: int) -> str:
    if len(counter) == 1:
        return next(iter(counter))
    return "; ".join(f"{value} ({n} of {total} tickers)" for value, n in counter.most_common())
