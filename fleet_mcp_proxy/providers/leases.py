"""The lease keeper: heartbeats for live instances, a release queue with retries, and a bounded drain.

Provider-agnostic: it calls what a provider gives it. An episode's end only hands instances over, so a
release never depends on the request, the session teardown budget or the episode that owned them.
"""

from __future__ import annotations

import logging
import math
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import stamina

from .. import telemetry
from .base import Instance

logger = logging.getLogger(__name__)


def _done() -> anyio.Event:
    event = anyio.Event()
    event.set()
    return event


_SET = _done()  # a release acknowledged before


class LeaseLost(Exception):
    """The platform says the instance is gone (not a transient failure); `str()` says why."""


@dataclass(frozen=True, slots=True)
class Beat:
    """A heartbeat the platform accepted; `ttl` is how long the lease now lasts, if it said."""

    ttl: float | None = None


Heartbeat = Callable[[Instance], Awaitable[Beat]]
Delete = Callable[[Instance], Awaitable[None]]


def beat_interval(ttl: float) -> float:
    """Beat well inside the lease: half the TTL, at most every 30 s, at least every 1 s."""
    return max(1.0, min(ttl / 2, 30.0))


@dataclass
class _Lease:
    instance: Instance
    on_lost: Callable[[str], None] | None
    stop: anyio.Event = field(default_factory=anyio.Event)
    deadline: float | None = None  # anyio clock: when the platform may stop it without another beat


class LeaseKeeper:
    """Owns the background work of every instance lease in this proxy."""

    def __init__(
        self,
        task_group: anyio.abc.TaskGroup,
        *,
        release_attempts: int = 6,
        release_timeout: float = 60.0,
        released_kept: int = 10_000,
    ) -> None:
        self._tg = task_group
        self._leases: dict[str, _Lease] = {}
        # Ids already released, so a second release is a no-op; only the most recent are kept (a proxy runs
        # for months). A repeat older than that deletes again, which the platform answers as already gone.
        self._released: OrderedDict[str, None] = OrderedDict()
        self._released_kept = released_kept
        self._acks: dict[str, anyio.Event] = {}  # releases in progress
        self._pending = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._release_attempts = release_attempts
        self._release_timeout = release_timeout

    def hold(
        self,
        instance: Instance,
        *,
        heartbeat: Heartbeat | None = None,
        ttl: float | None = None,
        on_lost: Callable[[str], None] | None = None,
        since: float | None = None,
    ) -> None:
        """Keep `instance` alive from now on (heartbeats start at once, before readiness).

        `since`: when the create was sent (anyio clock). The platform counts the lease from the create, and a
        create can take long to answer (it waits for the instance), so the first beat is due that much sooner.
        """
        lease = _Lease(instance, on_lost)
        if telemetry.ON and instance.instance_id not in self._leases:
            telemetry.instances_changed(1, instance.provider)
        self._leases[instance.instance_id] = lease
        if heartbeat is not None and ttl is not None:
            since = anyio.current_time() if since is None else since
            lease.deadline = since + ttl  # the create counts as the first beat
            self._tg.start_soon(self._beat, lease, heartbeat, ttl, since)

    def rebind(self, instance: Instance, on_lost: Callable[[str], None] | None) -> bool:
        """Hand a held lease to a new owner (a warm instance taken by an episode); False if it was lost."""
        lease = self._leases.get(instance.instance_id)
        if lease is None:
            return False
        lease.on_lost = on_lost
        return True

    def forget(self, instance: Instance) -> None:
        """Stop heartbeats for an instance whose release the caller does itself."""
        lease = self._leases.pop(instance.instance_id, None)
        if lease is not None:
            lease.stop.set()
            if telemetry.ON:
                telemetry.instances_changed(-1, instance.provider)

    def release(self, instance: Instance, delete: Delete) -> anyio.Event:
        """Stop heartbeats and queue the release; idempotent. The event is set once the provider acknowledged
        the release (it stays unset if every retry failed)."""
        self.forget(instance)
        acknowledged = self._acks.get(instance.instance_id)
        if acknowledged is not None or instance.instance_id in self._released:
            return acknowledged or _SET
        acknowledged = self._acks[instance.instance_id] = anyio.Event()
        self._released[instance.instance_id] = None
        while len(self._released) > self._released_kept:
            self._released.popitem(last=False)
        self._pending += 1
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._tg.start_soon(self._release, instance, delete)
        return acknowledged

    async def drain(self, timeout: float) -> bool:
        """Wait (bounded, shielded) until every queued release finished; True if all did."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
            await self._idle.wait()
        return self._pending == 0

    @property
    def pending(self) -> int:
        return self._pending

    def time_left(self, instance_id: str) -> float | None:
        """Seconds until the heartbeat lease of a held instance lapses; None when it has no heartbeat lease."""
        lease = self._leases.get(instance_id)
        if lease is None or lease.deadline is None:
            return None
        return max(0.0, lease.deadline - anyio.current_time())

    async def _release(self, instance: Instance, delete: Delete) -> None:
        try:
            with (
                anyio.CancelScope(shield=True),
                telemetry.release(instance.alias, instance.instance_id, instance.provider) as step,
            ):
                async for attempt in stamina.retry_context(
                    on=Exception, attempts=self._release_attempts, timeout=self._release_timeout, wait_max=5.0
                ):
                    with attempt:
                        step.set(attempts=attempt.num)
                        await delete(instance)
            logger.info("released %s (%s)", instance.instance_id, instance.alias)
            self._acks[instance.instance_id].set()
        except Exception:
            logger.exception(
                "could not release %s (%s); the shutdown backstop will", instance.instance_id, instance.alias
            )
        finally:
            self._acks.pop(instance.instance_id, None)
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    async def _beat(self, lease: _Lease, heartbeat: Heartbeat, ttl: float, since: float) -> None:
        interval = beat_interval(ttl)
        last_ok = since
        wait, failures = max(0.0, since + interval - anyio.current_time()), 0
        while True:
            with anyio.move_on_after(wait):
                await lease.stop.wait()
            if lease.stop.is_set():
                return
            try:
                # One beat may not eat the slack the lease has left: the platform stops it at last_ok + ttl.
                attempt = max(1.0, min(interval / 3, 10.0))
                with (
                    telemetry.heartbeat(lease.instance.alias, lease.instance.instance_id),
                    anyio.fail_after(attempt),
                ):
                    beat = await heartbeat(lease.instance)
            except LeaseLost as lost:
                if not lease.stop.is_set():  # refused because it was released meanwhile: that is no loss
                    self._lose(lease, str(lost))
                return
            except Exception as exc:  # transient until a whole TTL passes without an accepted beat
                if lease.stop.is_set():
                    return
                if anyio.current_time() - last_ok > ttl:
                    self._lose(lease, f"no heartbeat was accepted for {ttl:g} s")
                    return
                # Soon, not a whole interval later: after one missed beat the next due one is the deadline.
                failures += 1
                wait = min(interval / 3, 0.5 * 2 ** (failures - 1)) * random.uniform(0.8, 1.2)
                kind = type(exc).__name__  # the type only: an SDK message may quote the request
                logger.warning("heartbeat for %s failed (%s); retrying", lease.instance.instance_id, kind)
                continue
            last_ok, wait, failures = anyio.current_time(), interval, 0
            if beat.ttl is not None and math.isfinite(beat.ttl) and beat.ttl > 0:
                ttl, interval = beat.ttl, beat_interval(beat.ttl)
                wait = interval
            lease.deadline = last_ok + ttl

    def _lose(self, lease: _Lease, reason: str) -> None:
        logger.warning("instance %s (%s) lost: %s", lease.instance.instance_id, lease.instance.alias, reason)
        if self._leases.pop(lease.instance.instance_id, None) is not None and telemetry.ON:
            telemetry.instances_changed(-1, lease.instance.provider)
            telemetry.error("instance_lost")
        if lease.on_lost is not None:
            lease.on_lost(reason)
