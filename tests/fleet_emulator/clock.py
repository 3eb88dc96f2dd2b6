"""The emulator's notion of time: epoch seconds that tests can freeze and move forward."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """Epoch seconds. By default it follows real time (monotonic, anchored to the wall clock once).

    `advance(seconds)` moves it forward by an offset that is kept for good; `freeze()` stops it, so that
    only `advance` moves it. Everything the emulator decides about time (TTLs, heartbeat deadlines,
    provisioning delays, timestamps in answers) reads this clock, never `time` directly.
    """

    def __init__(self, *, start: float | None = None, frozen: bool = False) -> None:
        self._epoch0 = time.time() if start is None else start
        self._mono0 = time.monotonic()
        self._offset = 0.0
        self._frozen_at: float | None = self._epoch0 if frozen else None

    def now(self) -> float:
        if self._frozen_at is not None:
            return self._frozen_at + self._offset
        return self._epoch0 + (time.monotonic() - self._mono0) + self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward; returns the new time."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds
        return self.now()

    def freeze(self) -> None:
        """Stop following real time; from now on only `advance` moves the clock."""
        if self._frozen_at is None:
            self._frozen_at = self.now() - self._offset

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None


def iso(ts: float) -> str:
    """An epoch timestamp as ISO 8601 UTC with a `Z` suffix."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
