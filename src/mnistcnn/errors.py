"""The exceptions: UserError, the one type for mistakes a user can make (config, data,
paths), which `__main__` prints as a single line with exit code 2 (anything else is a
programming error and keeps its traceback); and the two ways training ends early,
Diverged and Interrupted, which the run records in its summary.
"""

import signal


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


def exit_with(message: str) -> None:
    """Print one error line and exit with code 2 (SystemExit passes through Hydra untouched)."""
    import sys

    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


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
