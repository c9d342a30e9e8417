"""Stopping a training run at a step boundary on SIGINT, SIGTERM or SIGHUP.

How jobs end: Ctrl-C (SIGINT), Slurm and Kubernetes (SIGTERM, then SIGKILL after a grace period), a
closed terminal (SIGHUP). Inside `StopSignals` these only record the request; the step runner finishes
the step in progress (optimiser step, EMA update and step counter are one unit), saves the state and
raises `Stopped`, so a resumed run continues exactly. SIGKILL cannot be caught: resume then starts
from the last periodic save, which is exact too.
"""
from __future__ import annotations

import signal
import threading

from discodiff.errors import UserError

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class Stopped(UserError):
    """The run stopped on a signal after saving its state; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """Context manager: while inside, the signals above set `requested` instead of interrupting."""

    def __init__(self):
        self.requested: int | None = None
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        self.requested = self.requested or signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.requested).name if self.requested else ""
