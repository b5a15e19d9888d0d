"""How a command-line entry point reports a failure the user can fix.

An *expected* error (a missing or malformed file, a config that does not fit, an unreachable
judge, a refused run directory, Ctrl-C) becomes one line on stderr, ``deltabelief CMD: what
is wrong``, and a non-zero exit code; ``-v`` prints the traceback above that line. Every
other exception is a bug and propagates with its traceback: nothing is swallowed.

The project's error types are recognised by class name (any class in their MRO defined
under ``deltabelief``), so this module imports none of them (``--help`` stays instant,
and moving a class to another module does not change what users see).
"""

from __future__ import annotations

import sys
import traceback
from typing import Callable

CONFIG_EXIT = 2
"""Like argparse: the command line or the preset it names is wrong."""
ERROR_EXIT = 1
INTERRUPTED_EXIT = 130
"""128 + SIGINT, what shells report for a command stopped with Ctrl-C."""

PROJECT_ERRORS = {
    "ConfigError": CONFIG_EXIT,
    "DataFileError": ERROR_EXIT,
    "SourceFormatError": ERROR_EXIT,
    "ContractError": ERROR_EXIT,
    "SynthesisError": ERROR_EXIT,
    "KnowledgeBaseError": ERROR_EXIT,
    "RunDirError": ERROR_EXIT,
    "CorruptCheckpointError": ERROR_EXIT,
    "JudgeUnavailableError": ERROR_EXIT,
    "JudgeResponseError": ERROR_EXIT,
    "ChatTemplateError": ERROR_EXIT,
    "UnlocatableTargetError": ERROR_EXIT,
    "SharedStorageError": ERROR_EXIT,
    "Interrupted": INTERRUPTED_EXIT,
}
# Files the user named that are missing or unreadable; the message carries the path.
OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class Interrupted(Exception):
    """Ctrl-C, with what the user needs to know to carry on (e.g. the resume command)."""


def expected_exit_code(err: BaseException) -> int | None:
    """The exit code of an error the user can fix, or None for a bug."""
    if isinstance(err, KeyboardInterrupt):
        return INTERRUPTED_EXIT
    for cls in type(err).__mro__:
        if cls.__module__.startswith("deltabelief") and cls.__name__ in PROJECT_ERRORS:
            return PROJECT_ERRORS[cls.__name__]
    if isinstance(err, OS_ERRORS):
        return ERROR_EXIT
    return None


def one_line(err: BaseException) -> str:
    """The error's message on one line (reports that span lines are joined with '; ')."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    text = "; ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return text or type(err).__name__


def run_command(prog: str, body: Callable[[], int], *, verbose: bool) -> int:
    """``body()``'s exit code; an expected error prints ``prog: message`` (after the traceback with
    ``verbose``) and returns its exit code; any other error propagates."""
    try:
        return body()
    except (Exception, KeyboardInterrupt) as err:
        code = expected_exit_code(err)
        if code is None:
            raise
        if verbose:
            traceback.print_exception(err, file=sys.stderr)
        print(f"{prog}: {one_line(err)}", file=sys.stderr)
        return code
