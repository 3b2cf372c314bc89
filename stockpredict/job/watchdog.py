"""Hang detection: a rank that stops answering ends the job within --stall-timeout seconds.

A rank stopped by a frozen node, a stalled filesystem or SIGSTOP leaves every other rank blocked in the
next collective (a Horovod allreduce, a tf.distribute all-reduce) until the job's time limit. Neither
engine ends such a job by itself: Horovod's stall check only warns unless HOROVOD_STALL_SHUTDOWN_TIME_
SECONDS is set, and then names no host; tf.distribute's collective timeouts do not name the rank either
(docs/training.md, "Hangs"). So every rank runs this watchdog, the same on both engines:

- The training loop calls `Watchdog.progress()` after each group of steps (and each evaluation batch).
- A thread of each rank writes `<run dir>/heartbeats/rank-<R>.json` every few seconds: its rank, host,
  pid, the wall time of this write (`beat`) and of its last progress (`progress`). The thread runs while
  the main thread waits in a collective, so a fresh `beat` means "this process still answers"; a
  stopped process (SIGSTOP, a frozen node) writes nothing, and one whose file system hangs cannot write.
- When a rank's own progress is older than the timeout, it reads its peers' files (`decide`): a peer
  whose beat is that old stopped answering. The lowest rank still answering prints
  `error: rank R on host H stopped answering (no step for N s); ending the job` and leaves with
  EXIT_STALLED (os._exit: the main thread is blocked in the collective), so the launcher
  (srun --kill-on-bad-exit) ends the step and the batch script marks the job FAILED.
- Every rank blocked for twice the timeout while all of them still answer (a network stall) ends the
  job too, saying so.

Stdlib only (no TensorFlow): unit-tested on its own (tests/job/test_watchdog.py). Node clocks are
assumed NTP-synchronised to well under the timeout (seconds against minutes).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from stockpredict.common import rundir

EXIT_STALLED = 124  # timeout(1)'s "timed out"; the batch script reports it as a failure, not a requeue
DEFAULT_STALL_TIMEOUT = 300  # seconds (TrainConfig.stall_timeout; docs/training.md says why)


def check_interval(timeout: float) -> float:
    """Seconds between the thread's heartbeats and checks: a fifth of the timeout, 1 to 10 s."""
    return min(10.0, max(1.0, timeout / 5))


def heartbeat_path(run_dir: Path | str, rank: int) -> Path:
    return Path(run_dir) / rundir.HEARTBEATS / f"rank-{rank}.json"


@dataclass(frozen=True)
class Peer:
    """What one rank's heartbeat file says (times are wall-clock seconds since the epoch)."""

    rank: int
    host: str
    beat: float        # when the rank's watchdog thread last wrote the file
    progress: float    # when the rank last finished a group of steps


@dataclass(frozen=True)
class Verdict:
    """A decision to end the job: the line to print (by `reporter`) and whether this rank is it."""

    line: str
    report: bool       # this rank prints the line and exits now; other ranks wait a little longer
    stopped: tuple[int, ...]


def read_peers(run_dir: Path | str, size: int) -> dict[int, Peer]:
    """Every rank's heartbeat file that exists and parses (a torn or missing file is left out)."""
    peers: dict[int, Peer] = {}
    for rank in range(size):
        try:
            record = json.loads(heartbeat_path(run_dir, rank).read_text())
            peers[rank] = Peer(rank=rank, host=str(record["host"]), beat=float(record["beat"]),
                               progress=float(record["progress"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return peers


def decide(rank: int, size: int, timeout: float, now: float, own_progress: float, armed: float,
           peers: Mapping[int, Peer]) -> Verdict | None:
    """Whether rank `rank` should end the job now, and what to say; None while nothing is wrong.

    `own_progress`: this rank's last progress (wall time); `armed`: when this rank's watchdog started, the
    earliest a peer can be expected to have written a heartbeat (an older file is a previous attempt's).
    A peer is stopped when its heartbeat is older than `timeout`. Nothing is decided while this rank still
    makes progress: a peer that stopped answering blocks this rank's next collective within one group of
    steps, so the blocked ranks find it.
    """
    blocked_for = now - own_progress
    if blocked_for < timeout:
        return None
    stopped = []
    for other in range(size):
        if other == rank:
            continue
        peer = peers.get(other)
        last_beat = max(peer.beat if peer is not None else armed, armed)
        if now - last_beat >= timeout:
            stopped.append(other)
    if stopped:
        answering = [r for r in range(size) if r not in stopped]
        names = ", ".join(f"rank {r} on host {_host(peers, r)}" for r in stopped)
        last_step = min(peers[r].progress if r in peers else armed for r in stopped)
        line = (f"error: {names} stopped answering (no step for {now - max(last_step, armed):.0f} s, "
                f"stall timeout {timeout:g} s); ending the job")
        return Verdict(line=line, report=rank == min(answering), stopped=tuple(stopped))
    if blocked_for >= 2 * timeout:
        line = (f"error: no rank made a step for {blocked_for:.0f} s although all {size} still answer "
                f"(stall timeout {timeout:g} s: a collective is stuck, e.g. the network); ending the job")
        return Verdict(line=line, report=rank == 0, stopped=())
    return None


def _host(peers: Mapping[int, Peer], rank: int) -> str:
    return peers[rank].host if rank in peers else "unknown (no heartbeat yet)"


class Watchdog:
    """One rank's heartbeat writer and stall check (a daemon thread); `progress()` from the loop.

    `exit` is os._exit in the trainer; tests pass a recorder. `clock` is the wall clock.
    """

    def __init__(self, run_dir: Path | str, rank: int, size: int, host: str, timeout: float,
                 exit: Callable[[int], None] = os._exit, clock: Callable[[], float] = time.time,
                 interval: float | None = None):
        self.run_dir, self.rank, self.size, self.host = Path(run_dir), rank, size, host
        self.timeout = float(timeout)
        self.interval = check_interval(self.timeout) if interval is None else interval
        self._exit, self._clock = exit, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.armed = self._last_progress = clock()
        self.verdict: Verdict | None = None   # the decision that ended the job (tests read it)
        self._first_verdict_at: float | None = None

    def progress(self) -> None:
        """The loop finished a group of steps (cheap: one float written, no I/O)."""
        self._last_progress = self._clock()

    def start(self) -> "Watchdog":
        (self.run_dir / rundir.HEARTBEATS).mkdir(parents=True, exist_ok=True)
        self.armed = self._last_progress = self._clock()
        self.beat()
        self._thread = threading.Thread(target=self._run, name=f"stall-watchdog-{self.rank}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)

    def beat(self) -> None:
        """Write this rank's heartbeat file (atomic replace, so a reader never sees half of it)."""
        path = heartbeat_path(self.run_dir, self.rank)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        record = {"rank": self.rank, "host": self.host, "pid": os.getpid(), "beat": self._clock(),
                  "progress": self._last_progress}
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
        except OSError:
            pass  # a full or vanished run directory: the peers then see this rank as not answering

    def check(self) -> Verdict | None:
        """One round: decide, and end the process if this rank should (returns the verdict acted on)."""
        now = self._clock()
        verdict = decide(self.rank, self.size, self.timeout, now, self._last_progress, self.armed,
                         read_peers(self.run_dir, self.size))
        if verdict is None:
            self._first_verdict_at = None
            return None
        if self._first_verdict_at is None:
            self._first_verdict_at = now
        # The reporter exits at once; another rank that reached the same verdict gives it a few rounds to
        # print first (its exit makes the launcher kill the others), then reports itself.
        if verdict.report or now - self._first_verdict_at >= 3 * self.interval:
            self.verdict = verdict
            print(verdict.line, file=sys.stderr, flush=True)
            sys.stdout.flush()
            self._exit(EXIT_STALLED)
            return verdict
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()
            if self.check() is not None:
                return


class NoWatchdog:
    """--stall-timeout 0: no thread, no files."""

    def progress(self) -> None:
        pass

    def stop(self) -> None:
        pass
