"""The stop signal: SIGUSR1 sets a flag that the epoch loop reads between training steps.

Light on purpose (stdlib only): `stockpredict.train` installs the handler before it imports TensorFlow,
because USR1's default action would kill a process still busy importing. Open MPI, PMIx and NCCL
leave USR1 alone, while SIGTERM is what Slurm and mpirun use to kill tasks. See docs/training.md,
"Preemption: the signal protocol".
"""

from __future__ import annotations

import signal

STOP_SIGNAL = signal.SIGUSR1
EXIT_PREEMPTED = 75  # EX_TEMPFAIL from sysexits.h: "try again later"; the batch script requeues on it

_stop_requested = False
_sigterm_before_preempt = signal.SIG_DFL


def _request_stop(signum, frame):  # noqa: ARG001 -- signal handler signature
    global _stop_requested
    _stop_requested = True


def install_stop_handler() -> None:
    """Route SIGUSR1 to a flag (no work in the handler: it may interrupt anything)."""
    signal.signal(STOP_SIGNAL, _request_stop)


def stop_requested() -> bool:
    """True once this process received the stop signal."""
    return _stop_requested


def clear_stop() -> None:
    """Forget a stop request (for callers that run several trainings in one process, e.g. tests)."""
    global _stop_requested
    _stop_requested = False


def ignore_sigterm() -> None:
    """From the preemption point on, SIGTERM is ignored (see loop.preempt for why)."""
    global _sigterm_before_preempt
    _sigterm_before_preempt = signal.signal(signal.SIGTERM, signal.SIG_IGN)


def restore_sigterm() -> None:
    """Undo ignore_sigterm() (an in-process caller continues after a preempted run)."""
    signal.signal(signal.SIGTERM, _sigterm_before_preempt)
