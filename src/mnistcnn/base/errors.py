"""The exceptions and exit codes: UserError, the one type for mistakes a user can make
(config, data, paths), which `__main__` prints as a single line with exit code 2 (anything
else is a programming error and keeps its traceback); exit code 1 for a command that ran to
its end with runs that did not complete; and the two ways training ends early, Diverged and
Interrupted, which the run records in its summary.
"""

import signal
import sys

USER_ERROR_EXIT = 2  # the command could not start (config, data, paths): nothing ran
FAILED_RUNS_EXIT = 1  # a sweep or a book ran to its end, but some of its runs did not complete


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


def exit_with(message: str, code: int = USER_ERROR_EXIT) -> None:
    """Print one error line and exit with code. SystemExit passes through Hydra untouched:
    its callback handler catches only Exception, and hydra.main lets it through."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def yaml_problem(error: Exception) -> str:
    """A YAML parser's error as a phrase for one line: where (1-based) and what, and where
    the construct it was reading began ("line 2, column 1: expected ',' or ']', but got
    '<stream end>', while parsing a flow sequence that starts at line 1, column 8")."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem
    context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and start is not None and start is not mark:
        text += f", {context} that starts at line {start.line + 1}, column {start.column + 1}"
    return " ".join(text.split())


class Diverged(Exception):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, batch: int, lr: float):
        super().__init__(f"training diverged: non-finite loss in epoch {epoch}, batch {batch} "
                         f"at lr {lr:g}; lower optim.lr or add a schedule")
        self.epoch, self.batch, self.lr = epoch, batch, lr


class Interrupted(KeyboardInterrupt):
    """A stop was requested (SIGINT/SIGTERM); raised after the batch in flight.

    A KeyboardInterrupt, so that it passes through Hydra and ends a whole sweep;
    `signum` gives the exit code (128 + signal number)."""

    def __init__(self, epoch: int, batch: int, signum: int = signal.SIGINT):
        where = f"in epoch {epoch} after batch {batch}" if epoch else "at once"
        super().__init__(f"interrupted {where}")
        self.epoch, self.batch, self.signum = epoch, batch, signum
