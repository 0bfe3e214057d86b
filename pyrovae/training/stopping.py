"""Stopping training on request: Ctrl-C (SIGINT) or a scheduler's SIGTERM ends the run at a step boundary.

The first signal sets a flag; the loop then saves a checkpoint and raises :class:`TrainingInterrupted`. A second
signal interrupts at once (the checkpoint write is atomic, so the previous checkpoint survives it).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint; ``fit(..., resume=True)`` continues from it
    (``pyrovae train --resume``)."""


class StopRequest:
    """A context in which SIGINT and SIGTERM set ``requested`` to their name instead of killing the loop (in the
    main thread only: elsewhere Python cannot install handlers)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
