"""`python -m mnistcnn COMMAND [overrides]`: pick the command, hand the rest to it.

A bare @hydra.main would read COMMAND as an override, so dispatch comes first.
User errors (UserError, and Hydra/OmegaConf config errors) become one line on
stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import re
import signal
import sys

USAGE = "usage: python -m mnistcnn COMMAND [overrides]   (python -m mnistcnn --help)"


def describe(exc: BaseException) -> str:
    """One line for a config error: Hydra's message plus OmegaConf's cause, minus noise."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = str(exc)
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and "full_key" in str(cause):
        key = re.search(r"full_key: (\S+)", str(cause)).group(1)
        return (f"unknown config key '{key}': check its spelling; "
                f"`python -m mnistcnn train --cfg job` lists every key")
    if "Could not find" in text:
        m = re.search(r"Could not find '([^']+)'", text)
        options = re.search(r"Available options in '([^']+)':\s*(.*?)Config search path", text,
                            re.S)
        line = f"unknown config option '{m.group(1) if m else text.splitlines()[0]}'"
        if options:
            line += f"; choose {options.group(1)} from: " + ", ".join(options.group(2).split())
        return line
    merging = re.match(r"Error merging override (\S+)", text)
    if merging and cause is not exc:
        return (f"{merging.group(1)}: {str(cause).splitlines()[0]}; fix the value "
                f"(`python -m mnistcnn train --cfg job` shows every key with its value)")
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Let Hydra's errors reach us instead of being printed by Hydra with exit code 1.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mnistcnn.base.errors import UserError, exit_with
    from mnistcnn.cli import COMMANDS

    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE + "\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        print("\n`python -m mnistcnn train --help` shows the config groups and every key.")
        return
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        exit_with(f"unknown command '{command}'; choose one of: {', '.join(COMMANDS)}")
    try:
        COMMANDS[command][0](args)
    except UserError as e:
        exit_with(str(e))
    except (HydraException, OmegaConfBaseException) as e:
        exit_with(describe(e))
    except OSError as e:  # e.g. Hydra cannot make the run folder
        exit_with(f"{e.filename or ''}: {e.strerror or e}; choose a folder you can write "
                  f"(hydra.run.dir=PATH or hydra.sweep.dir=PATH)")
    except KeyboardInterrupt as e:
        # 130 for SIGINT, 143 for SIGTERM: the shell convention 128 + signal number.
        sys.exit(128 + int(getattr(e, "signum", signal.SIGINT)))


if __name__ == "__main__":
    main()
