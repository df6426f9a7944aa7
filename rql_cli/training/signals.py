"""Ctrl-C and SIGTERM while a run starts or trains: stop at a step boundary, with a checkpoint.

The first signal asks the run to stop: a loop checks ``requested`` between steps and saves. Work that
takes long between two such checks (loading data, compiling the update, a periodic evaluation) runs
in ``interruptible()`` sections, in which the first signal raises ``StopNow`` at once; the run drops
what was left of that work (a half-finished compile falls back to eager, a half-finished evaluation
is not recorded) and stops at the step it reached, saving as after any other interruption.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any

Handler = Callable[[int, FrameType | None], Any] | int | None
"""What ``signal.signal`` installs and returns: a function, ``SIG_DFL``/``SIG_IGN``, or None."""


class StopNow(KeyboardInterrupt):
    """A stop signal that arrived inside an ``interruptible()`` section."""


class StopSignals:
    """Catch SIGINT and SIGTERM while a loop runs; the loop checks ``requested`` between steps.

    The first signal asks the loop to stop at the next step boundary (after saving a checkpoint);
    a second one stops at once (KeyboardInterrupt). Handlers are restored on exit. Outside the main
    thread signals cannot be caught, and the caller handles interruption.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Handler] = {}
        self._raise_now = False

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signal_name is not None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        if self._raise_now:
            raise StopNow(self.signal_name)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A section in which the first signal raises ``StopNow`` at once instead of waiting for a step.

        A signal that came before the section raises at its start.
        """
        if self.requested:
            raise StopNow(self.signal_name)
        self._raise_now = True
        try:
            yield
        finally:
            self._raise_now = False

    def __enter__(self) -> StopSignals:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
