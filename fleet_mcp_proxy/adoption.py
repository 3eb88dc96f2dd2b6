"""Taking over the live episode of a replica that is gone: the same episode id, the same instances, the same
outside names, so that the agent's next request simply succeeds.

A replica that receives a request for an episode held by an owner whose lease ran out (killed, or handed over
at a drain) claims the row by compare-and-set on that owner, so of two replicas racing for it exactly one wins,
re-attaches to the instances the store records, and serves on. Only replicas sharing a store get here.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

import anyio
from mcp import MCPError
from pydantic import ValidationError

from .episode import Episode
from .finisher import Finisher
from .ownership import Me, owner_alive
from .providers.base import Instance, ProvisionError
from .providers.pool import InstancePool
from .registry import Registry
from .store import EpisodeStore
from .store.records import PendingEnd, RouteTarget
from .tasks import Task
from .verify.scoring import Reward

logger = logging.getLogger(__name__)
ADOPT_TIMEOUT = 30.0  # the store reads, the claim and the links' start (each link bounds its own start)
SCAN_SECONDS = 5.0  # how often a replica looks for live episodes nobody holds (their instances need heartbeats)


def orphaned(target: RouteTarget, me: Me, *, at: float) -> bool:
    """A live episode whose holder is gone (or nobody holds it): it may be adopted."""
    if target.state != "live" or target.owner_id == me.owner_id:
        return False
    return target.owner is None or not owner_alive(target.owner, at=at, me=me)


@dataclass
class Adopter:
    registry: Registry
    store: EpisodeStore
    pool: InstancePool
    me: Me
    finisher: Finisher | None = None  # ends what cannot be adopted here (its environment died with its replica)
    _flights: dict[str, anyio.Event] = field(default_factory=dict)

    async def adopt(
        self, slot: str, target: RouteTarget, principal: str | None, session_id: str | None
    ) -> Episode | None:
        """The adopted episode, registered under `slot`; None when it is not this caller's to take (another
        principal's, claimed by another replica first, or held by processes of the owner that is gone).
        `principal`: the requester's (None: a background adoption, for whoever the episode belongs to)."""
        if (running := self._flights.get(slot)) is not None:  # one adoption per episode in this process
            await running.wait()
            return self.registry.episodes.get(slot)
        self._flights[slot] = done = anyio.Event()
        try:
            with anyio.fail_after(ADOPT_TIMEOUT):
                return await self._adopt(slot, target, principal, session_id)
        except Exception:  # a store or link failure: the request is answered as if nobody held it
            logger.exception("could not adopt episode %s", target.episode_id)
            return None
        finally:
            del self._flights[slot]
            done.set()

    async def settled(self, slot: str) -> Episode | None:
        """The episode registered under `slot`, once an adoption of it in flight here is done."""
        if (running := self._flights.get(slot)) is not None:
            await running.wait()
        return self.registry.episodes.get(slot)

    async def run(self) -> None:
        """Adopt, in the background, live episodes whose holder is gone and that no request has brought here yet:
        their instances get heartbeats again before the platform stops them (a drained replica hands its
        episodes over this way). Replicas race by compare-and-set; each episode goes to one."""
        while True:
            await anyio.sleep(SCAN_SECONDS * random.uniform(0.8, 1.2))
            if self.registry.closing or self.registry.draining:
                return
            try:
                with anyio.fail_after(ADOPT_TIMEOUT):
                    found = await self.store.orphans(time.time())
                for episode_id, route in found:
                    if route in self.registry.episodes:
                        continue
                    target = await self.store.route_target(route)
                    if (
                        target is not None
                        and target.episode_id == episode_id
                        and orphaned(target, self.me, at=time.time())
                    ):
                        await self.adopt(route, target, None, None)
            except Exception:  # the store is busy or gone: the next scan tries again
                logger.warning("could not look for episodes to adopt in the episode store")

    async def _adopt(
        self, slot: str, target: RouteTarget, principal: str | None, session_id: str | None
    ) -> Episode | None:
        pending = await self.store.pending_end(target.episode_id)
        if pending is None or pending.state != "live" or principal not in (None, pending.principal):
            return None
        if pending.owner != target.owner_id:  # taken since the holder was judged gone: not ours to take
            return None
        episode = self._episode(slot, pending)
        if episode is None:
            if self.finisher is not None and await self.finisher.take(pending, target.owner_id):
                logger.warning("finished episode %s, which could not be adopted", pending.episode_id)
            return None
        if not await self.store.claim(pending.episode_id, self.me.owner_id, target.owner_id):
            logger.info("episode %s was adopted by another replica first", pending.episode_id)
            return None
        instances: list[Instance] = []
        for held in pending.instances:
            try:
                instances.append(
                    self.pool.reattach(episode.environments[held.alias], held, episode.on_lost(held.alias))
                )
            except ProvisionError as exc:
                episode.lost[held.alias] = str(exc)
        await episode.adopt(instances)
        episode.outcome.restore(pending.answer, _reward(pending))
        if session_id is not None:
            episode.session_ids.add(session_id)
        self.registry.episodes[slot] = episode
        self.registry.adoptions += 1
        logger.warning(
            "adopted episode %s from replica %s, which is gone (%d instance(s) re-attached)",
            pending.episode_id,
            pending.owner or "(none)",
            len(instances),
        )
        return episode

    def _episode(self, slot: str, pending: PendingEnd) -> Episode | None:
        """The episode object for a recorded row, or None when this replica cannot take it over."""
        try:
            task = Task.model_validate(pending.task) if pending.task else None
            episode = self.registry.build(slot, pending.principal, task, episode_id=pending.episode_id)
        except (ValidationError, MCPError):
            logger.warning("episode %s cannot be adopted here: its task or environment is not available", slot)
            return None
        for held in pending.instances:
            env = episode.environments.get(held.alias)
            if env is None or not self.pool.can_reattach(env, held):
                logger.warning(
                    "episode %s cannot be adopted here: instance %s (%s) is not reachable from this replica",
                    pending.episode_id,
                    held.instance_id,
                    held.alias,
                )
                return None
        return episode


def _reward(pending: PendingEnd) -> Reward | None:
    try:
        return Reward(**pending.reward) if pending.reward is not None else None
    except TypeError:
        return None
