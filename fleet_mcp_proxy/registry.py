"""Episodes by key, the idle reaper, and the orderly end of all of them at shutdown."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.abc

from .config import EnvironmentConfig, ProxyConfig
from .episode import Episode
from .providers.base import Provider

logger = logging.getLogger(__name__)
_ENDED_SESSIONS_KEPT = 10_000


class Registry:
    """Owns every live episode; episodes end here, never in a request handler's scope."""

    def __init__(
        self,
        config: ProxyConfig,
        environments: Sequence[EnvironmentConfig],
        provider: Provider,
        task_group: anyio.abc.TaskGroup,
    ) -> None:
        self.config = config
        self.environments = tuple(environments)
        self.provider = provider
        self._tg = task_group
        self.episodes: dict[str, Episode] = {}
        # Transport sessions whose episode ended while the client stayed connected: they answer 404.
        self.ended_sessions: OrderedDict[str, None] = OrderedDict()
        self.on_end: list[Callable[[Episode], Awaitable[None]]] = []
        self.closing = False

    def open(self, key: str, principal: str) -> Episode:
        """The live episode for `key`, created (nothing provisioned) on first use."""
        episode = self.episodes.get(key)
        if episode is None:
            episode = Episode(
                key,
                principal,
                self.environments,
                self.provider,
                self._tg,
                modality=self.config.modality,
                end_timeout=self.config.end_timeout,
            )
            self.episodes[key] = episode
            logger.info("episode %s opened", episode.id)
        return episode

    def schedule_end(self, key: str, reason: str) -> None:
        """End an episode in the background (safe from a 5 s teardown budget or a cancelled request)."""
        episode = self.episodes.pop(key, None)
        if episode is not None:
            self._tg.start_soon(self._end, episode, reason)

    async def end(self, key: str, reason: str) -> None:
        episode = self.episodes.pop(key, None)
        if episode is not None:
            await self._end(episode, reason)

    async def _end(self, episode: Episode, reason: str) -> None:
        for session_id in episode.session_ids:
            self.ended_sessions[session_id] = None
            while len(self.ended_sessions) > _ENDED_SESSIONS_KEPT:
                self.ended_sessions.popitem(last=False)
        await episode.end(reason)
        for hook in self.on_end:
            try:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.end_timeout):
                    await hook(episode)
            except Exception:
                logger.exception("end hook failed for episode %s", episode.id)

    async def reap_idle(self) -> None:
        """End episodes with no call in flight and no request for `idle_timeout` seconds."""
        idle = self.config.idle_timeout
        interval = max(0.05, min(idle / 4, 5.0))
        while True:
            await anyio.sleep(interval)
            now = anyio.current_time()
            for key, episode in list(self.episodes.items()):
                if episode.inflight == 0 and now - episode.last_active >= idle:
                    self.schedule_end(key, f"idle for {idle:g} s")

    async def shutdown(self) -> None:
        """End every episode concurrently; shielded and bounded."""
        self.closing = True
        episodes = list(self.episodes.values())
        self.episodes.clear()
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.end_timeout + 5):
            async with anyio.create_task_group() as tg:
                for episode in episodes:
                    tg.start_soon(self._end, episode, "proxy shutdown")
