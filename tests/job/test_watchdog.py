"""The stall watchdog's decision and heartbeats (stockpredict/job/watchdog.py), without TensorFlow.

The real hang (a SIGSTOPped rank of a 2-node job on the local cluster, both engines) is
tests/cluster/test_faults_slurm.py::test_stopped_rank_ends_job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from stockpredict.common import rundir
from stockpredict.common.errors import UserError
from stockpredict.common.train_config import TrainConfig, parse_args
from stockpredict.job import watchdog
from stockpredict.job.watchdog import EXIT_STALLED, Peer, Watchdog, decide, read_peers


def peers(**beats):
    """rank -> Peer from {"r1": (beat, progress)}."""
    return {int(k[1:]): Peer(rank=int(k[1:]), host=f"node{int(k[1:]) + 1}", beat=b, progress=p)
            for k, (b, p) in beats.items()}


def test_no_verdict_while_this_rank_makes_progress():
    # rank 1's heartbeat is ancient, but rank 0 still steps: nothing is blocked yet.
    assert decide(0, 2, 20, now=1000, own_progress=990, armed=0, peers=peers(r1=(100, 100))) is None


def test_blocked_rank_names_the_peer_that_stopped_answering():
    verdict = decide(0, 2, 20, now=1000, own_progress=975, armed=0,
                     peers=peers(r0=(998, 975), r1=(978, 974)))
    assert verdict is not None and verdict.report and verdict.stopped == (1,)
    assert verdict.line == ("error: rank 1 on host node2 stopped answering (no step for 26 s, stall timeout "
                            "20 s); ending the job")


def test_blocked_but_every_peer_answers_waits_until_twice_the_timeout():
    alive = peers(r0=(999, 975), r1=(999, 975))
    assert decide(0, 2, 20, now=1000, own_progress=975, armed=0, peers=alive) is None
    verdict = decide(0, 2, 20, now=1000, own_progress=959, armed=0, peers=alive)
    assert verdict is not None and verdict.stopped == () and "all 2 still answer" in verdict.line


def test_lowest_answering_rank_reports_when_rank_0_stopped():
    # 3 ranks, rank 0 frozen: rank 1 reports, rank 2 holds back (its exit would kill rank 1 first).
    seen = peers(r0=(970, 969), r1=(999, 975), r2=(999, 975))
    v1 = decide(1, 3, 20, now=1000, own_progress=975, armed=0, peers=seen)
    v2 = decide(2, 3, 20, now=1000, own_progress=975, armed=0, peers=seen)
    assert v1.report and not v2.report and v1.stopped == v2.stopped == (0,)
    assert "rank 0 on host node1 stopped answering" in v1.line


def test_a_previous_attempts_heartbeat_counts_from_when_this_attempt_armed():
    # rank 1's file is from the attempt before a requeue (beat 100); this attempt armed at 990.
    stale = peers(r1=(100, 100))
    assert decide(0, 2, 20, now=1000, own_progress=979, armed=990, peers=stale) is None
    verdict = decide(0, 2, 20, now=1011, own_progress=990, armed=990, peers=stale)
    assert verdict is not None and verdict.stopped == (1,) and "no step for 21 s" in verdict.line


def test_missing_heartbeat_names_an_unknown_host():
    verdict = decide(0, 2, 20, now=1000, own_progress=970, armed=970, peers={})
    assert "rank 1 on host unknown (no heartbeat yet) stopped answering" in verdict.line


def test_heartbeats_round_trip_and_torn_files_are_skipped(tmp_path):
    clock = iter([100.0, 101.0, 102.0, 103.0]).__next__
    dog = Watchdog(tmp_path, rank=0, size=3, host="node1", timeout=20, clock=clock)
    dog.start()
    dog.stop()
    (tmp_path / rundir.HEARTBEATS / "rank-2.json").write_text('{"rank": 2, "host"')  # torn
    found = read_peers(tmp_path, 3)
    assert list(found) == [0] and found[0].host == "node1" and found[0].beat >= 100
    record = json.loads((tmp_path / rundir.HEARTBEATS / "rank-0.json").read_text())
    assert record["pid"] == os.getpid() and record["rank"] == 0


def test_check_exits_with_the_stall_status_and_prints_one_line(tmp_path, capsys):
    now = [1000.0]
    exits = []
    dog = Watchdog(tmp_path, rank=0, size=2, host="node1", timeout=20, exit=exits.append,
                   clock=lambda: now[0], interval=5)
    dog.start()
    dog.stop()  # drive check() by hand
    watchdog.heartbeat_path(tmp_path, 1).write_text(json.dumps(
        {"rank": 1, "host": "node2", "pid": 1, "beat": 1001.0, "progress": 1001.0}))
    now[0] = 1015.0
    assert dog.check() is None and exits == []
    now[0] = 1022.0
    dog.beat()
    assert dog.check() is not None
    assert exits == [EXIT_STALLED]
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: rank 1 on host node2 stopped answering (no step for 21 s, stall timeout 20 s); "
        "ending the job"]


def test_stall_timeout_flag_and_validation():
    config = parse_args(["--data", "d.h5", "--run-dir", "r", "--stall-timeout", "20"])
    assert config.stall_timeout == 20 and parse_args(config.to_argv()) == config
    assert "--stall-timeout" not in TrainConfig(data="d", run_dir="r").to_argv()  # the default stays off
    assert TrainConfig.stall_timeout == watchdog.DEFAULT_STALL_TIMEOUT
    with pytest.raises(UserError, match="--stall-timeout must be an integer number of seconds >= 0"):
        TrainConfig(data="d", run_dir="r", stall_timeout=-1)


_PEER = """
import sys, time
from stockpredict.job.watchdog import Watchdog
Watchdog(sys.argv[1], rank=1, size=2, host="peer-host", timeout=2, interval=0.2).start()
while True:
    time.sleep(0.05)
"""


def test_a_sigstopped_peer_process_is_named(tmp_path, capsys):
    """Two real processes: the peer's watchdog thread beats until SIGSTOP freezes the whole process."""
    peer = subprocess.Popen([sys.executable, "-c", _PEER, str(tmp_path)])
    try:
        path = watchdog.heartbeat_path(tmp_path, 1)
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert path.exists(), "the peer never wrote its heartbeat"
        exits = []
        dog = Watchdog(tmp_path, rank=0, size=2, host="me", timeout=2, exit=exits.append, interval=0.2)
        dog.start()
        time.sleep(0.5)
        assert exits == []  # blocked (no progress) but the peer still answers
        dog.progress()  # from here this rank is "blocked"; the peer stops answering at the same time
        os.kill(peer.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 30  # a correctness bound, not a timing goal
        while not exits and time.monotonic() < deadline:
            time.sleep(0.1)
        dog.stop()
        assert exits == [EXIT_STALLED]
        assert "error: rank 1 on host peer-host stopped answering" in capsys.readouterr().err
    finally:
        peer.kill()  # SIGKILL works on a stopped process
        peer.wait()


def test_stop_ends_the_thread_and_its_heartbeats(tmp_path):
    """finish() stops the watchdog after the last collective: no thread may outlive it and judge a peer
    that has simply exited."""
    dog = Watchdog(tmp_path, rank=0, size=2, host="node1", timeout=2, exit=lambda status: None, interval=0.1)
    dog.start()
    time.sleep(0.3)
    dog.stop()
    assert not dog._thread.is_alive()
    path = watchdog.heartbeat_path(tmp_path, 0)
    written = path.read_text()
    time.sleep(0.3)
    assert path.read_text() == written and dog.verdict is None
