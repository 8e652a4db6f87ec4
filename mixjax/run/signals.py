"""SIGTERM / SIGINT -> a flag the step loop reads: it checkpoints and returns cleanly."""

from __future__ import annotations

import signal


class Interrupted(RuntimeError):
    """A signal stopped a job after it checkpointed; the same command resumes it.
    ``signal``: its number (the commands exit with 128 + it, as ``mixjax train`` does)."""

    def __init__(self, message: str, signal: int | None):
        super().__init__(message)
        self.signal = signal

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal or 0)


class StopOnSignal:
    """SIGTERM/SIGINT set ``signum``; the loop saves a checkpoint and returns.

    Outside the main thread no handler can be installed: the flag then never
    rises and nothing is restored.
    """

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        try:
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: no handlers, nothing to restore
            self._old = {}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
