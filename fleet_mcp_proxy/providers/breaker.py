"""Fleet availability guards: a circuit breaker and a retry budget. Pure logic on an injectable clock.

The breaker watches every attempt that reaches Fleet. It opens after `failures` consecutive failed
attempts, provided the evidence is in: at least `ratio` of the last `window` outcomes *plus the attempts
still out* failed. A Fleet that is down fails everything and trips it after a handful of attempts; a
flaky Fleet (say 30 % of answers 503) produces runs of failures between its successes, and its errors
often come back long before its successes (a 503 is quick, a create is slow), so a burst of quick
errors while most attempts are still under way must not lock every agent out. Open, it refuses
calls without touching the network; after `open_for` seconds one call goes out as the probe; its success
closes the breaker, its failure opens it again for twice as long (capped), the shape of Envoy's outlier
ejection. Any success closes it: Fleet answered.

The retry budget bounds retries in flight, proxy-wide, to max(`minimum`, `ratio` x provisions in
flight) (Envoy's `RetryBudget`), so retries cannot multiply the load on a struggling Fleet.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio

logger = logging.getLogger(__name__)
Clock = Callable[[], float]


class FleetUnavailable(Exception):
    """The breaker refused a Fleet call; `str()` is written for the agent and the operator."""

    def __init__(self, message: str, retry_in: float) -> None:
        super().__init__(message)
        self.retry_in = retry_in


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # the open interval is over: the next call is the probe


class CircuitBreaker:
    """Consecutive-failure breaker with one half-open probe per open interval."""

    def __init__(
        self,
        *,
        failures: int = 5,
        open_for: float = 30.0,
        max_open_for: float = 300.0,
        window: int = 20,
        ratio: float = 0.8,
        clock: Clock = time.monotonic,
    ) -> None:
        if failures < 1 or open_for <= 0 or max_open_for < open_for or window < 1 or not 0 <= ratio <= 1:
            raise ValueError("need failures >= 1, 0 < open_for <= max_open_for, window >= 1, 0 <= ratio <= 1")
        self._threshold = failures
        self._recent: deque[bool] = deque(maxlen=window)  # True: failed
        self._ratio = ratio
        self._base = open_for
        self._max = max_open_for
        self._clock = clock
        self._state = State.CLOSED
        self._consecutive = 0
        self._open_for = open_for
        self._reopen_at = 0.0
        self._probing = False
        self._out = 0  # attempts under way
        self.opened = 0  # times it opened (a figure for tests and logs)

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._clock() >= self._reopen_at:
            return State.HALF_OPEN
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    def retry_in(self) -> float:
        """Seconds until the next probe may go out (0 when it may go now)."""
        return 0.0 if self._state is State.CLOSED else max(0.0, self._reopen_at - self._clock())

    def refusal(self) -> FleetUnavailable | None:
        """What `admit` would raise now, if anything (no side effect)."""
        if self._state is State.CLOSED:
            return None
        if self._probing:
            return FleetUnavailable(
                "Fleet is unavailable: its API failed repeatedly and the proxy is checking it again right now. "
                "Try again in a few seconds.",
                retry_in=1.0,
            )
        wait = self._reopen_at - self._clock()
        if wait > 0:
            return FleetUnavailable(
                f"Fleet is unavailable: its API failed {self._consecutive} times in a row. "
                f"The proxy will try it again in {math.ceil(wait)} s; try again after that.",
                retry_in=wait,
            )
        return None

    def admit(self) -> bool:
        """May a call go out now? True when it is the probe.

        Raises:
            FleetUnavailable: the breaker is open, or the probe is already under way.
        """
        refused = self.refusal()
        if refused is not None:
            raise refused
        if self._state is State.CLOSED:
            return False
        self._probing = True
        return True

    def begin(self) -> None:
        """An attempt goes out; it ends with `succeeded`, `failed` or `abandoned`."""
        self._out += 1

    def succeeded(self, probe: bool = False) -> None:
        """An attempt got an answer from Fleet: close."""
        self._out = max(0, self._out - 1)
        if probe:
            self._probing = False
        self._recent.append(False)
        if self._state is not State.CLOSED:
            logger.warning("Fleet answered again: new provisions are accepted")
        self._state = State.CLOSED
        self._consecutive = 0
        self._open_for = self._base

    def failed(self, probe: bool = False) -> None:
        """An attempt failed (Fleet unreachable, timed out or answered 502/503/504)."""
        self._out = max(0, self._out - 1)
        self._consecutive += 1
        self._recent.append(True)
        if probe:
            self._probing = False
        if self._state is State.CLOSED:
            mostly_failing = sum(self._recent) >= self._ratio * (len(self._recent) + self._out)
            if self._consecutive >= self._threshold and mostly_failing:
                self._open()
        elif probe:  # still down: wait twice as long before the next probe
            self._open_for = min(self._open_for * 2, self._max)
            self._open()

    def abandoned(self, probe: bool = False) -> None:
        """An attempt ended without a verdict (cancelled): the next call may probe instead."""
        self._out = max(0, self._out - 1)
        if probe:
            self._probing = False

    def _open(self) -> None:
        self._state = State.OPEN
        self._reopen_at = self._clock() + self._open_for
        self.opened += 1
        logger.warning(
            "Fleet failed %d times in a row: new provisions fail fast for %g s, then one probe is sent",
            self._consecutive,
            self._open_for,
        )


class RetryBudget:
    """Retries in flight stay within max(`minimum`, `ratio` x provisions in flight)."""

    def __init__(self, *, ratio: float = 0.2, minimum: int = 3) -> None:
        if not 0 <= ratio <= 1 or minimum < 0:
            raise ValueError("need 0 <= ratio <= 1 and minimum >= 0")
        self._ratio = ratio
        self._minimum = minimum
        self.provisions = 0
        self.retries = 0
        self.waited = 0  # retries that had to wait for a slot (a figure)
        self.peak = 0  # most retries in flight at once (a figure)
        self._freed: anyio.Event | None = None  # made by the first waiter (needs a running loop)

    @property
    def limit(self) -> int:
        return max(self._minimum, math.floor(self._ratio * self.provisions))

    @contextmanager
    def provisioning(self) -> Iterator[None]:
        """One provision in flight (its calls and their retries)."""
        self.provisions += 1
        try:
            yield
        finally:
            self.provisions -= 1

    def try_acquire(self) -> bool:
        """Take a retry slot if the budget has one; the caller must `release` it."""
        if self.retries >= self.limit:
            return False
        self.retries += 1
        self.peak = max(self.peak, self.retries)
        return True

    async def acquire(self, give_up: Callable[[], bool]) -> bool:
        """Wait for a retry slot (the caller's deadline bounds the wait); False once `give_up()` says so.

        `give_up` is asked before waiting and again whenever a slot frees up.
        """
        if self.try_acquire():
            return True
        self.waited += 1
        while not give_up():
            if self._freed is None:
                self._freed = anyio.Event()
            await self._freed.wait()
            if self.try_acquire():
                return True
        return False

    def release(self) -> None:
        self.retries -= 1
        if self._freed is not None:  # wake every waiter; the first to ask gets the slot
            self._freed.set()
            self._freed = None
