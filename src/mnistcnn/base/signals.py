"""Ctrl-C and SIGTERM: one place that takes them over, for a run (stop after the batch in
flight) and for the studies command (pass them on to the study's process)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

from mnistcnn.base.errors import Interrupted

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals_to(handler: Callable[[int, object], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to handler(signum, frame) while inside; the previous handlers
    come back on the way out. Handlers can only be set in the main thread; elsewhere this
    changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class StopOnSignal:
    """A stop request for the training loop (`fit(stop=...)`): the first SIGINT/SIGTERM asks
    it to stop after the batch in flight; a second stops at once (every file is written
    atomically, so nothing already written is damaged)."""

    def __init__(self):
        self.signum: int | None = None
        self._handling = stop_signals_to(self.handle)

    def __enter__(self) -> StopOnSignal:
        self._handling.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._handling.__exit__(*exc)

    def handle(self, signum: int, _frame) -> None:
        if self.signum is not None:
            raise Interrupted(0, -1, signum)
        self.signum = signum
        log.warning("%s: stopping after this batch (again to stop at once)",
                    signal.Signals(signum).name)

    def __call__(self) -> bool:
        return self.signum is not None
