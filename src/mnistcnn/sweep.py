"""The Hydra callback that ends every multirun with its comparison.

Registered in conf/config.yaml under `hydra.callbacks`, so any sweep — whatever
its sweeper (basic, optuna) or launcher (basic, joblib, submitit) — writes
comparison.md/.csv/.html and the comparison figures into its sweep folder once
the last job has returned. The callback runs in the process that launched the
sweep, after every job, which is why it is also where a sweep with failed jobs
turns into a non-zero exit.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mnistcnn import compare

# Exit code of a sweep that ran to its end with failed jobs; 2 stays "the command could
# not start" (a config or data error), as for every other command.
FAILED_JOBS_EXIT = 1


class ComparisonCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            comparison = compare.build(compare.load_runs([sweep_dir]))
            compare.write(comparison, sweep_dir)
        except Exception:
            # Hydra would turn an exception here into a warning and exit 0: a sweep whose
            # comparison is missing must fail visibly, with the traceback of the bug.
            traceback.print_exc()
            fail(f"the comparison of {sweep_dir} could not be written (traceback above)")
        # print, not logging: after a sweep in this process, logging still writes into the
        # last job's train.log.
        print(f"\n{compare.console_text(comparison)}")
        print(f"comparison -> {sweep_dir / 'comparison.md'} (.csv, .html, *.png)")
        if comparison.failed:
            fail(compare.failure_line(comparison) + f"; see {sweep_dir / 'comparison.md'}")


def fail(message: str) -> None:
    """One error line and a non-zero exit. SystemExit passes through Hydra's callback
    handler (it only catches Exception) and through hydra.main."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(FAILED_JOBS_EXIT)
