"""The stop signals: SIGUSR1 and SIGTERM set a flag that the epoch loop reads between training steps.

Light on purpose (stdlib only): `stockpredict.train` installs the handler before it imports TensorFlow,
because either signal's default action would kill a process still busy importing.

- SIGUSR1 is the warning the job script asks for before the time limit (`--signal=B:USR1@s`, forwarded to
  the ranks by the batch shell). Open MPI, PMIx and NCCL leave USR1 alone.
- SIGTERM is what Slurm sends every task when it preempts the job (PreemptMode=REQUEUE with a GraceTime:
  SIGCONT + SIGTERM, then SIGKILL after the grace time). The same signal also reaches the surviving
  ranks when `srun --kill-on-bad-exit` ends a step because one rank died; those ranks then cannot agree
  on a stop (the agreement and the checkpoint are collectives that need every rank), stay blocked and are
  killed after KillWait, so that job fails. Whether to requeue is decided by the batch script, which asks
  Slurm whether it preempted the job (`scontrol show job`: PreemptTime). See docs/training.md,
  "Preemption: the signal protocol".
"""

from __future__ import annotations

import signal

STOP_SIGNAL = signal.SIGUSR1           # the time-limit warning (kept under its old name)
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
    """Route SIGUSR1 (and with sigterm=True also SIGTERM) to a flag (no work in the handler: it may
    interrupt anything). The trainer's main() passes sigterm=True; merely importing the trainer
    (tests, in-process callers) leaves SIGTERM alone."""
    global _sigterm_original, _sigterm_installed
    signal.signal(STOP_SIGNAL, _request_stop)
    if sigterm and not _sigterm_installed:
        _sigterm_original = signal.signal(PREEMPT_SIGNAL, _request_stop)
        _sigterm_installed = True


def stop_requested() -> bool:
    """True once this process received a stop signal."""
    return _stop_signal is not None


def stop_signal_name() -> str | None:
    """"SIGUSR1" or "SIGTERM": the first stop signal received, or None."""
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
