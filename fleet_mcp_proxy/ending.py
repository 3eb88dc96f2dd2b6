"""The durable end of a live episode: live -> ending -> verifying -> graded -> releasing -> closed.

Each transition is written to the store (committed) before it is acted on (docs/episode-end.md). Functions of
the episode rather than methods, so the episode module keeps to its lifecycle and routing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from . import telemetry
from .providers.base import Instance
from .recorder import now

if TYPE_CHECKING:
    from .episode import Episode

logger = logging.getLogger("fleet_mcp_proxy.episode")


async def end_episode(self: Episode, reason: str) -> None:
    """The durable end: each transition is written before it is acted on (docs/episode-end.md).

    Only the proxy's shutdown grace cuts it short, while grading: the episode is then left pending, its
    instances alive and its row ungraded, for whoever finishes it next (a finisher, the next start).
    """
    if self._end_started:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._end_timeout):
            await self._end_done.wait()
        return
    self._end_started = True
    self.ended = reason
    graded = False
    try:
        await _transition(self, "ending", reason)
        if self.task is not None and not self.outcome.verified:
            await _transition(self, "verifying")
            if self.task.verifier_code and not self.provisioned:
                # Fleet's harness grades an agent that never acted on the seed state: so does the proxy,
                # with an instance made (or still starting) for that and released right after.
                flight = self._start_flight()
                with anyio.move_on_after(self._verify_timeout):
                    await flight.done.wait()
            await self.verify("close")  # verify-on-close: an abandoned episode is still graded
        graded = True
    finally:
        with anyio.CancelScope(shield=True):
            if graded:
                await _transition(self, "releasing")
                await _stop(self, release=True)
                if not self._unreleased:  # else it stays releasing: the next finisher deletes what is left
                    await _transition(self, "closed")
            else:
                self.end_state = "pending"
                await _stop(self, release=False)
            self.listen.close()  # open listen streams end gracefully instead of pinning this episode
            self._end_done.set()
        logger.info("episode %s ended: %s%s", self.id, reason, "" if graded else " (grading left pending)")
        if telemetry.ON:
            reward = self.outcome.reward
            telemetry.episode_ended(
                self.id, reason, reward.reward if reward else None, reward.status if reward else None
            )


async def _transition(self: Episode, state: str, reason: str | None = None) -> None:
    self.end_state = state
    if state == "ending":
        task = self.task.model_dump(mode="json") if self.task is not None else None
        await self.recorder.commit("begin_end", self.id, reason, now(), task)
    else:
        await self.recorder.commit("set_state", self.id, state, now())


async def _stop(self: Episode, *, release: bool) -> None:
    """Close every link and, unless the instances are still needed to grade, release them; bounded.

    A release only hands the instance to the lease keeper, so it never waits on a link's teardown.
    """
    with anyio.move_on_after(self._end_timeout):
        async with anyio.create_task_group() as tg:
            for link in list(self.links.values()):
                tg.start_soon(link.stop, self._end_timeout / 2)
            for instance in list(self.instances.values()) if release else ():
                tg.start_soon(release_instance, self, instance)
    self.links.clear()
    self.connections.clear()
    if release:
        self.instances.clear()


async def release_instance(self: Episode, instance: Instance, *, recorded: bool = True) -> bool:
    """Release and record it once acknowledged; False leaves it recorded as held, for the next finisher.

    `recorded=False`: an instance whose link never started was never recorded, so neither is its release.
    """
    try:
        with anyio.CancelScope(shield=True):
            acknowledged = await self._provider.release(instance, wait=self._end_timeout / 2)
    except Exception:  # one failed release must not stop the others
        logger.exception("releasing %s (%s) failed", instance.instance_id, instance.alias)
        return False
    if acknowledged and recorded:
        self.recorder.emit("instance_released", self.id, instance.instance_id, now())
    elif not acknowledged:
        self._unreleased += 1
    return acknowledged
