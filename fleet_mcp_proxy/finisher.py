"""Finishing episodes that a process left unfinished: grade those that still need it, then release.

Whoever opens the store runs this: the next start of the proxy (in the background), the detached finisher a
stopping proxy leaves behind, or `fleet-mcp-proxy finish`. A row is taken only from an owner that is gone
(or from nobody), by compare-and-set, so two finishers never work on one episode; a grade already stored is
kept (the store writes a grade once).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .ownership import Membership
from .providers.base import HttpTarget, Instance
from .providers.pool import InstancePool
from .recorder import now
from .store import EpisodeStore
from .store.records import PendingEnd, PendingInstance
from .tasks import Task
from .verify.runner import run_verifier
from .verify.scoring import unknown

logger = logging.getLogger(__name__)
_CONCURRENCY = 16


@dataclass
class FinishReport:
    finished: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # still unfinished (a release that did not go through)
    # Not ours to finish: an instance lives in another account (or host) than this process reaches.
    foreign: list[str] = field(default_factory=list)


def _instance(pending: PendingInstance) -> Instance:
    target = HttpTarget(pending.url or "")
    data_dir = Path(pending.data_dir) if pending.data_dir else None
    return Instance(
        pending.alias,
        pending.instance_id,
        pending.provider,
        target,
        data_dir=data_dir,
        expires_at=pending.expires_at,
        origin=pending.origin,
    )


class Finisher:
    def __init__(
        self,
        store: EpisodeStore,
        pool: InstancePool,
        membership: Membership,
        *,
        verify_timeout: float,
        partial: bool,
        adopts: bool = False,
    ) -> None:
        self.store = store
        self.pool = pool
        self.membership = membership
        self.verify_timeout = verify_timeout
        self.partial = partial
        # A serving replica on a shared store leaves live episodes on Fleet to adoption (`adoption.py`): their
        # agent may still be talking to them.
        self.adopts = adopts

    async def run(self, skip: frozenset[str] = frozenset()) -> FinishReport:
        """Finish every unfinished row whose owner is gone; rows in `skip` (this process's own) are left."""
        report = FinishReport()
        limiter = anyio.CapacityLimiter(_CONCURRENCY)

        async def one(pending: PendingEnd) -> None:
            async with limiter:
                done = await self._finish(pending)
            (report.finished if done else report.left).append(pending.episode_id)

        async with anyio.create_task_group() as tg:
            for pending in await self.store.unfinished():
                if pending.episode_id in skip or not await self.membership.dead_or_none(pending.owner):
                    continue
                if self.adopts and pending.routed and pending.state == "live" and self._adoptable(pending):
                    continue
                if not all(self.pool.can_finish(i.provider, i.origin) for i in pending.instances):
                    report.foreign.append(pending.episode_id)
                    continue
                if await self.store.claim(pending.episode_id, self.membership.me.owner_id, pending.owner):
                    tg.start_soon(one, pending)
        return report

    async def take(self, pending: PendingEnd, holder: str | None) -> bool:
        """Finish one row now, if this process reaches its instances and claims it from `holder` (gone)."""
        if not all(self.pool.can_finish(i.provider, i.origin) for i in pending.instances):
            return False
        if not await self.store.claim(pending.episode_id, self.membership.me.owner_id, holder):
            return False
        return await self._finish(pending)

    def _adoptable(self, pending: PendingEnd) -> bool:
        return all(i.provider == "fleet" and self.pool.can_finish(i.provider, i.origin) for i in pending.instances)

    async def _finish(self, pending: PendingEnd) -> bool:
        episode_id = pending.episode_id
        try:
            if pending.state == "live":  # its process died mid-episode
                await self.store.begin_end(episode_id, "proxy exited", now(), None)
            task = Task.model_validate(pending.task) if pending.task else None
            if task is not None and pending.reward is None:
                await self.store.set_state(episode_id, "verifying", now())
                await self._grade(pending, task)
            await self.store.set_state(episode_id, "releasing", now())
            released = await self._release_all(pending)
            if released:
                await self.store.set_state(episode_id, "closed", now())
            logger.info("finished episode %s%s", episode_id, "" if released else " (a release is still pending)")
            return released
        except Exception:  # one row must not stop the others; it stays unfinished for the next run
            logger.exception("could not finish episode %s", episode_id)
            return False

    async def _grade(self, pending: PendingEnd, task: Task) -> None:
        trigger = "submit" if pending.answer is not None else "close"
        grading = next((i for i in pending.instances), None)
        if not task.verifier_code:
            reward, report = unknown("no_verifier", trigger), None
        elif grading is None:
            reward, report = unknown("not_provisioned", trigger), None
        elif grading.expires_at is not None and grading.expires_at <= time.time():
            reward, report = unknown("instance_lost", trigger), None
        else:
            instance = _instance(grading)
            self.pool.hold_for_grading(instance)  # heartbeats while it grades: the platform must not stop it
            execute = self.pool.verifier(instance, task, pending.answer, self.verify_timeout)
            with anyio.move_on_after(self.verify_timeout) as scope:
                reward, report = await run_verifier(execute, partial=self.partial, trigger=trigger)
            if scope.cancelled_caught:
                reward, report = unknown("verifier_timeout", trigger), None
        verifier = report.to_json() if report is not None else {"stdout": None, "error": None, "attempts": 0}
        stored = await self.store.grade(pending.episode_id, reward.to_json(), verifier, now())
        logger.info("graded episode %s: %s", pending.episode_id, stored.get("reward"))

    async def _release_all(self, pending: PendingEnd) -> bool:
        ok = True
        for held in pending.instances:
            if await self.pool.release_now(_instance(held)):
                await self.store.instance_released(pending.episode_id, held.instance_id, now())
            else:
                ok = False
        return ok
