"""Ready Fleet instances kept per configured environment, so a new episode starts in milliseconds.

Each environment with `warm_pool = N` gets a filler task that keeps N instances created, ready and
heartbeated by the lease keeper. An episode takes one (a list pop in one event loop: never two takers),
which wakes the filler. Instances too close to their platform TTL are released, never handed out, and
everything still warm is released at shutdown.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc

from ..config import EnvironmentConfig
from .base import Instance, ProvisionError

logger = logging.getLogger(__name__)
Make = Callable[[EnvironmentConfig, Callable[[str], None]], Awaitable[Instance]]
Rebind = Callable[[Instance, Callable[[str], None] | None], bool]
Release = Callable[[Instance], None]
_MAX_BACKOFF = 60.0


@dataclass(eq=False)
class _Shelf:
    env: EnvironmentConfig
    ready: list[Instance] = field(default_factory=list)
    making: int = 0
    wake: anyio.Event = field(default_factory=anyio.Event)


class WarmPool:
    """Keeps `warm_pool` ready instances per environment; `take` hands one over or None."""

    def __init__(self, make: Make, rebind: Rebind, release: Release, *, min_life: float = 300.0) -> None:
        self._make = make
        self._rebind = rebind
        self._release = release
        self._min_life = min_life
        self._shelves: dict[str, _Shelf] = {}
        self._scope = anyio.CancelScope()
        self.taken = 0

    async def run(self, environments: tuple[EnvironmentConfig, ...]) -> None:
        """Fill every shelf until `close()`; run in the proxy-wide task group."""
        with self._scope:
            async with anyio.create_task_group() as tg:
                for env in environments:
                    if env.warm_pool > 0:
                        shelf = self._shelves[env.name] = _Shelf(env)
                        tg.start_soon(self._fill, shelf, tg)

    def size(self, name: str) -> int:
        shelf = self._shelves.get(name)
        return len(shelf.ready) if shelf is not None else 0

    def take(self, env: EnvironmentConfig, on_lost: Callable[[str], None] | None) -> Instance | None:
        shelf = self._shelves.get(env.name)
        if shelf is None or shelf.env != env:
            return None
        while shelf.ready:
            # The one with the most life left: a long task must not lose its instance mid-episode.
            instance = max(shelf.ready, key=lambda i: i.expires_at if i.expires_at is not None else math.inf)
            shelf.ready.remove(instance)
            shelf.wake.set()
            if not self._fresh(instance):
                self._release(instance)
                continue
            if self._rebind(instance, on_lost):  # False: it was lost while it waited
                self.taken += 1
                return instance
        return None

    def _fresh(self, instance: Instance) -> bool:
        return instance.expires_at is None or instance.expires_at - time.time() > self._min_life

    async def _fill(self, shelf: _Shelf, tg: anyio.abc.TaskGroup) -> None:
        failures = 0
        while True:
            shelf.wake = anyio.Event()  # before counting: a take from here on wakes the wait below
            for instance in [i for i in shelf.ready if not self._fresh(i)]:
                shelf.ready.remove(instance)
                self._release(instance)
            missing = shelf.env.warm_pool - len(shelf.ready) - shelf.making
            if missing > 0:
                shelf.making += missing
                outcomes: list[bool] = []
                async with anyio.create_task_group() as batch:
                    for _ in range(missing):
                        batch.start_soon(self._make_one, shelf, outcomes)
                failures = 0 if all(outcomes) else failures + 1
                if failures:  # Fleet refused or failed: back off, within the breaker's own limits
                    await anyio.sleep(min(_MAX_BACKOFF, 2.0**failures))
                continue
            with anyio.move_on_after(max(self._min_life / 4, 1.0)):  # re-check ages now and then
                await shelf.wake.wait()

    async def _make_one(self, shelf: _Shelf, outcomes: list[bool]) -> None:
        try:
            instance = await self._make(shelf.env, lambda reason: self._lost(shelf, reason))
        except ProvisionError as exc:
            logger.warning("warm pool for %s: could not make an instance: %s", shelf.env.name, exc)
            outcomes.append(False)
        except Exception:  # top of a background task: report, never crash the proxy
            logger.exception("warm pool for %s: making an instance failed", shelf.env.name)
            outcomes.append(False)
        else:
            shelf.ready.append(instance)
            outcomes.append(True)
        finally:
            shelf.making -= 1

    def _lost(self, shelf: _Shelf, reason: str) -> None:
        logger.warning("warm pool for %s lost an idle instance: %s", shelf.env.name, reason)
        # The keeper dropped the lost lease before calling us: rebinding fails for it alone.
        shelf.ready[:] = [i for i in shelf.ready if self._rebind(i, lambda r: self._lost(shelf, r))]
        shelf.wake.set()

    def close(self) -> list[Instance]:
        """Stop filling; the instances still warm, for the caller to release."""
        self._scope.cancel()
        left = [instance for shelf in self._shelves.values() for instance in shelf.ready]
        for shelf in self._shelves.values():
            shelf.ready.clear()
        return left
