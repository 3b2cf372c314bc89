"""The stop signals: SIGUSR2, SIGUSR1 and SIGTERM set a flag that the epoch loop reads between steps.

Light on purpose (stdlib only): `stockpredict.train` installs the handler before it imports TensorFlow,
because each signal's default action would kill a process still busy importing.

- SIGUSR2 (the default) or SIGUSR1 is the warning the job script asks for before the time limit
  (`--signal=B:USR2@s`, profile key `requeue_signal`, forwarded to the ranks by the batch shell). The
  handler takes the one the script exports as STOCKPREDICT_REQUEUE_SIGNAL, leaving the other alone
  (MPICH wants USR1 for itself); without it, both, so a script written before the signal was choosable
  (USR1) stops the ranks the same way. Why USR2 by default: common/signals.py.
- SIGTERM is what Slurm sends every task when it preempts the job (PreemptMode=REQUEUE with a GraceTime:
  SIGCONT + SIGTERM, then SIGKILL after the grace time). The same signal also reaches the surviving
  ranks when `srun --kill-on-bad-exit` ends a step because one rank died; those ranks then cannot agree
  on a stop (the agreement and the checkpoint are collectives that need every rank), stay blocked and are
  killed after KillWait, so that job fails. Whether to requeue is decided by the batch script, which asks
  Slurm whether it preempted the job (`scontrol show job`: PreemptTime). See docs/training.md,
  "Preemption: the signal protocol".
"""

from __future__ import annotations

import os
import signal

from stockpredict.common.signals import DEFAULT_REQUEUE_SIGNAL, REQUEUE_SIGNAL_ENV, handled_requeue_signals

# The time-limit warnings the handler takes: the job script's choice, or all allowed ones.
WARNING_SIGNALS = tuple(signal.Signals[f"SIG{name}"]
                        for name in handled_requeue_signals(os.environ.get(REQUEUE_SIGNAL_ENV)))
STOP_SIGNAL = signal.Signals[f"SIG{DEFAULT_REQUEUE_SIGNAL}"]  # the default warning (kept under its old name)
PREEMPT_SIGNAL = signal.SIGTERM        # Slurm's preemption notice (and its kill request)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL from sysexits.h: "try again later"; the batch script requeues on it

_stop_signal: int | None = None        # the first stop signal received, or None
_sigterm_original = None               # SIGTERM's handler before install_stop_handler(sigterm=True)
_sigterm_installed = False            # True while SIGTERM's handler is one this module set


def _request_stop(signum, frame):  # noqa: ARG001 -- signal handler signature
    global _stop_signal
    if _stop_signal is None:
        _stop_signal = signum


def install_stop_handler(sigterm: bool = False) -> None:
    """Route the warning signals (WARNING_SIGNALS; and with sigterm=True also SIGTERM) to a flag (no work
    in the handler: it may interrupt anything). The trainer's main() passes sigterm=True; merely importing
    the trainer (tests, in-process callers) leaves SIGTERM alone."""
    global _sigterm_original, _sigterm_installed
    for warning in WARNING_SIGNALS:
        signal.signal(warning, _request_stop)
    if sigterm and not _sigterm_installed:
        _sigterm_original = signal.signal(PREEMPT_SIGNAL, _request_stop)
        _sigterm_installed = True


def stop_requested() -> bool:
    """True once this process received a stop signal."""
    return _stop_signal is not None


def stop_signal_name() -> str | None:
    """"SIGUSR2", "SIGUSR1" or "SIGTERM": the first stop signal received, or None."""
    return signal.Signals(_stop_signal).name if _stop_signal is not None else None


def clear_stop() -> None:
    """Forget a stop request (for callers that run several trainings in one process, e.g. tests)."""
    global _stop_signal
    _stop_signal = None


def ignore_sigterm() -> None:
    """From the preemption point on, SIGTERM is ignored (see loop.preempt for why)."""
    global _sigterm_original, _sigterm_installed
    previous = signal.signal(PREEMPT_SIGNAL, signal.SIG_IGN)
    if not _sigterm_installed:
        _sigterm_original, _sigterm_installed = previous, True


def restore_sigterm() -> None:
    """Give SIGTERM back the handler it had before install_stop_handler(sigterm=True) (an in-process
    caller continues after the trainer returns)."""
    global _sigterm_installed
    if _sigterm_installed:
        signal.signal(PREEMPT_SIGNAL, _sigterm_original if _sigterm_original is not None else signal.SIG_DFL)
        _sigterm_installed = False
