"""The requeue signal: what Slurm sends the batch shell before the time limit, and the ranks then get.

One list, read by both sides: the control side validates a profile's `requeue_signal` (make SIGNAL=)
against it and renders `#SBATCH --signal=B:<name>@<seconds>` plus `export
STOCKPREDICT_REQUEUE_SIGNAL=<name>` (REQUEUE_SIGNAL_ENV) for the ranks; the trainer's stop handler
(stockpredict/job/preemption.py) then takes that signal only, and leaves the other one to whoever wants
it. Without the variable (a script written before the signal was choosable, which says USR1; a trainer
started by hand) it takes both, so such scripts still requeue and resume.

Why USR2 is the default (docs/training.md, "Which requeue signal"): SIGUSR1 is not free everywhere.
MPICH uses SIGUSR1 for its own process-failure notices and installs a handler for it
(pmodels/mpich#1449, #3159), so Cray MPICH sites have it taken; the NCCL release of mid-2022 caught
SIGUSR1 for a proxy-state dump (NVIDIA/nccl#704; the next release made it opt-in through
NCCL_PROXY_DUMP_SIGNAL); submitit moved its requeue signal to USR2 for that reason
(facebookincubator/submitit#1697). A library that installs its handler after ours takes the signal away
from the trainer, and the job then runs into the time limit without a checkpoint. USR1 stays allowed
for sites whose stack leaves it alone.

The other signals are refused: TERM is what Slurm itself sends at the time limit, on scancel and on
preemption (the trainer already treats it as a stop, and the batch shell must tell those apart); INT
has the terminal's meaning (Python raises KeyboardInterrupt, srun treats it as an interactive abort);
HUP, QUIT, ALRM and the job-control signals have default meanings other tools rely on; KILL and STOP
cannot be caught.
"""

from __future__ import annotations

from stockpredict.common.errors import UserError

REQUEUE_SIGNALS = ("USR2", "USR1")   # names without "SIG", as sbatch --signal and `kill -s` take them
DEFAULT_REQUEUE_SIGNAL = "USR2"
# What job scripts rendered before the signal was choosable use: they still requeue and resume.
LEGACY_REQUEUE_SIGNAL = "USR1"
# Set by the job script for the ranks: the one signal the trainer's stop handler takes.
REQUEUE_SIGNAL_ENV = "STOCKPREDICT_REQUEUE_SIGNAL"


def handled_requeue_signals(environ_value: str | None) -> tuple[str, ...]:
    """The warning signals the trainer catches: the one the job script named in REQUEUE_SIGNAL_ENV, or
    every allowed one when it named none (or one not allowed: an older or hand-written launch)."""
    if environ_value:
        try:
            return (requeue_signal_name(environ_value),)
        except UserError:
            pass
    return REQUEUE_SIGNALS


def requeue_signal_name(value: object) -> str:
    """"USR2", "usr2" or "SIGUSR2" -> "USR2"; a one-line UserError for anything not in REQUEUE_SIGNALS."""
    text = value.strip().upper() if isinstance(value, str) else ""
    name = text[3:] if text.startswith("SIG") else text
    if name not in REQUEUE_SIGNALS:
        raise UserError(f"requeue signal {value!r} is not allowed; use one of {', '.join(REQUEUE_SIGNALS)} "
                        f"(TERM, INT, HUP, QUIT and the rest already mean something to Slurm, MPI or the "
                        f"shell: docs/training.md, \"Which requeue signal\")")
    return name
