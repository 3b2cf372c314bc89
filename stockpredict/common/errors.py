"""What every command-line entry point shares: one-line user errors and exit codes.

A user mistake (bad path, bad flag value, wrong file schema) raises `UserError`; `run_cli` turns it
into `error: <message>` on stderr and exit status 2, never a traceback. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, Mapping, Sequence

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


def reject_unknown_keys(config_class: type, values: Mapping[str, Any], what: str) -> None:
    """Raise UserError if `values` has keys that are not fields of the dataclass `config_class`.

    The message names the unknown keys and lists the valid ones, e.g.
    `unknown report setting(s) plot; valid: runs_dir, out_dir, warmup_epochs, plots`.
    """
    valid = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise UserError(f"unknown {what}(s) {', '.join(unknown)}; valid: {', '.join(valid)}")


def parse_int_list(text: str, what: str) -> list[int]:
    """"1 2 4" or "1,2,4" -> [1, 2, 4]; a UserError naming `what` for anything else or an empty list."""
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{what} must be integers separated by spaces, got {text!r}") from None
    if not values:
        raise UserError(f"{what} is empty")
    return values


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)`, mapping UserError and Ctrl-C to a one-line message and a non-zero status."""
    try:
        return int(main(argv) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
