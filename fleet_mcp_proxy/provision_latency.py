"""A bounded in-memory sample of recent provisioning latencies, read by `/status` and the dashboard.

Process-wide on purpose (like a metrics registry): one proxy runs per process, and the sample only feeds
a live view. The durable record of what happened is the episode store.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProvisionSample:
    """One environment instance that became usable: when (epoch seconds), which, and how long it took."""

    at: float
    environment: str
    provider: str
    seconds: float


class LatencySample:
    """The last `maxlen` provisioning latencies, oldest first."""

    def __init__(self, maxlen: int = 240) -> None:
        self._samples: deque[ProvisionSample] = deque(maxlen=maxlen)

    def record(self, environment: str, provider: str, seconds: float) -> None:
        self._samples.append(ProvisionSample(time.time(), environment, provider, round(seconds, 4)))

    def samples(self) -> list[ProvisionSample]:
        return list(self._samples)


PROVISIONING = LatencySample()
