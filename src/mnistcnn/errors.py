"""The one exception type for mistakes a user can make (config, data, paths).

`__main__` prints it as a single line and exits with code 2; anything else is a
programming error and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


def exit_with(message: str) -> None:
    """Print one error line and exit with code 2 (SystemExit passes through Hydra untouched)."""
    import sys

    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
