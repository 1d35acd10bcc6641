"""What a person reads in the terminal: the log set-up for commands that run without Hydra,
a run's epoch lines and its closing per-class lines."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from mnistcnn.base.formats import amount, pct
from mnistcnn.base.run_folder import CONFUSION, REPORT

log = logging.getLogger(__name__)


def console_logging(log_file: Path | None = None) -> None:
    """Log lines as Hydra's job logging prints them, for commands that run without Hydra."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None and log_file.parent.is_dir():
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=handlers, force=True)


def format_epoch(r: dict, epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs}", f"train/loss {amount(r['train/loss'], 'loss')}",
             f"train/acc {pct(r['train/acc'])}"]
    if "val/acc" in r:
        parts += [f"val/loss {amount(r['val/loss'], 'loss')}", f"val/acc {pct(r['val/acc'])}"]
    parts += [f"lr {r['lr']:.2g}", f"{amount(r['epoch_time_s'], 'time')}s"]
    return "  ".join(parts)


def log_class_findings(summary: dict) -> None:
    """The per-class lines of the console summary: averages, worst class, never-predicted."""
    log.info("test/macro_recall %s  test/macro_f1 %s  worst class %s (recall %s)",
             pct(summary["test/macro_recall"]), pct(summary["test/macro_f1"]),
             summary["test/worst_class"], pct(summary["test/worst_class_recall"]))
    never = summary["test/never_predicted"]
    if never:
        which = f"class {never[0]} is" if len(never) == 1 else f"classes {', '.join(never)} are"
        log.warning("%s never predicted on the test set: their test images all go to "
                    f"other classes (see {CONFUSION}, {REPORT})", which)
