"""Releasing the run's Fleet instances that no unfinished episode in the store names.

Two callers share one rule: the fleet-wide sweep, run periodically by one replica at a time under a lease in
the store, and a process's backstop at shutdown. An instance is kept when an unfinished row names it (a live,
pending or adopted episode: whoever owns the row now), and when the process that made it still lives (it may be
creating it, or holding it warm, before any row names it: a row is written only once the instance is ready and
linked, up to `provision_timeout` + `startup_timeout` after the create). One whose maker is gone or unknown is
taken only once it is older than that window (`min_age`), so a maker that merely looks gone is still covered.
At shutdown a process also takes its own unnamed instances, whatever their age: nothing of it will name them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import anyio

from .config import ProxyConfig
from .ownership import Membership
from .providers.base import Listed
from .providers.pool import InstancePool
from .store import EpisodeStore

logger = logging.getLogger(__name__)
LEASE = "sweep"
MARGIN = 60.0  # seconds past the provisioning window, for the clocks of the platform and the replicas
BUDGET = 120.0  # the most one sweep may take (listing, store reads, deletes); the lease outlasts it
STORE_TIMEOUT = 10.0


def min_age(config: ProxyConfig) -> float:
    if config.cluster.sweep_min_age is not None:
        return config.cluster.sweep_min_age
    startup = max((env.startup_timeout for env in config.environments), default=60.0)
    return config.fleet.provision_timeout + startup + MARGIN


@dataclass(frozen=True)
class Facts:
    """What the store says at the time of a sweep."""

    referenced: frozenset[str]  # instance ids an unfinished row names (not yet released)
    alive: frozenset[str]  # owner ids of the processes that still live on the store
    me: str
    now: float  # epoch seconds
    min_age: float


def sweepable(item: Listed, facts: Facts, *, mine: bool) -> bool:
    """Pure: whether `item` may be released; `mine`: this process's own unnamed instances too (at shutdown)."""
    if item.instance_id in facts.referenced:
        return False
    if item.creator is not None and item.creator == facts.me:
        return mine
    if item.creator is not None and item.creator in facts.alive:
        return False
    return item.created_at is not None and facts.now - item.created_at >= facts.min_age


async def gather(store: EpisodeStore, membership: Membership, age: float) -> Facts:
    with anyio.fail_after(STORE_TIMEOUT):
        referenced = frozenset(i.instance_id for end in await store.unfinished() for i in end.instances)
        alive = frozenset(await membership.alive_ids())
    return Facts(referenced, alive, membership.me.owner_id, time.time(), age)


async def backstop_selection(
    store: EpisodeStore, membership: Membership, age: float, listed: list[Listed]
) -> list[str] | None:
    """What a stopping process may release of `listed`; None when the store cannot say (then nothing is)."""
    try:
        facts = await gather(store, membership, age)
    except Exception:
        logger.warning("the episode store did not say which instances are in use: no backstop release at shutdown")
        return None
    return sorted(item.instance_id for item in listed if sweepable(item, facts, mine=True))


class Sweeper:
    """The fleet-wide sweep: every `interval`, if this replica holds (or takes) the lease, one pass."""

    def __init__(
        self, store: EpisodeStore, membership: Membership, pool: InstancePool, *, interval: float, age: float
    ) -> None:
        self.store = store
        self.membership = membership
        self.pool = pool
        self.interval = interval
        self.age = age
        self.sweeps = 0  # passes this replica ran
        self.released = 0  # instances those passes released (acknowledged by the platform)
        self.held_elsewhere = 0  # ticks at which another replica held the lease

    async def run_forever(self) -> None:
        while True:
            await self.once()
            await anyio.sleep(self.interval)

    async def once(self) -> list[str] | None:
        """One tick: None when this replica did not sweep (lease held elsewhere, store or Fleet unreachable)."""
        me = self.membership.me.owner_id
        try:
            now = time.time()
            with anyio.fail_after(STORE_TIMEOUT):
                mine = await self.store.claim_lease(LEASE, me, now + self.interval + BUDGET, now)
        except Exception:  # the next tick tries again
            logger.warning("could not take the sweep lease in the episode store %s", self.store.path)
            return None
        if not mine:
            self.held_elsewhere += 1
            logger.debug("another replica holds the sweep lease")
            return None
        listed = await self.pool.listing(timeout=BUDGET / 4)
        if listed is None:
            return None
        try:
            facts = await gather(self.store, self.membership, self.age)
        except Exception:
            logger.warning("the episode store did not say which instances are in use: no sweep this time")
            return None
        chosen = sorted(item.instance_id for item in listed if sweepable(item, facts, mine=False))
        reason = "no unfinished episode in the store names it (fleet-wide sweep)"
        released = await self.pool.release_orphans(chosen, reason=reason, timeout=BUDGET / 2)
        self.sweeps += 1
        self.released += len(released)
        if chosen:
            logger.warning(
                "fleet-wide sweep released %d of %d unnamed instance(s): %s",
                len(released),
                len(chosen),
                ", ".join(released) or "none acknowledged",
            )
        return released
