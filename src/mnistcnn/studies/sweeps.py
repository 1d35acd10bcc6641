"""The Hydra callback that ends every multirun with its comparison.

The callback is registered in conf/config.yaml under `hydra.callbacks`, so any sweep —
whatever its sweeper (basic, optuna) or launcher (basic, joblib, submitit) — writes
comparison.md/.csv/.html and the comparison figures into its sweep folder once the last
job has returned. It runs in the process that launched the sweep, after every job, which
is why it is also where a sweep with failed jobs turns into a non-zero exit.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mnistcnn.base.errors import FAILED_RUNS_EXIT, exit_with
from mnistcnn.base.run_reader import load_runs
from mnistcnn.reporting import comparison


class ComparisonCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            comp = comparison.build(load_runs([sweep_dir]))
            comparison.write(comp, sweep_dir)
        except Exception:
            # Hydra would turn an exception here into a warning and exit 0: a sweep whose
            # comparison is missing must fail visibly, with the traceback of the bug.
            traceback.print_exc()
            exit_with(f"the comparison of {sweep_dir} could not be written (traceback above)",
                      FAILED_RUNS_EXIT)
        # print, not logging: after a sweep in this process, logging still writes into the
        # last job's train.log.
        print(f"\n{comparison.console_text(comp)}")
        print(f"comparison -> {sweep_dir / 'comparison.md'} (.csv, .html, *.png)")
        if comp.failed:
            exit_with(comparison.failure_line(comp) + f"; see {sweep_dir / 'comparison.md'}",
                      FAILED_RUNS_EXIT)
