"""What a request hears while it waits for its episode's environments: progress and log messages.

The first provisioning of an episode can take minutes on Fleet. The request that waits (tools/list,
tools/call, prompts, resources) gets a progress notification at once when it sent a token, then every
`progress_interval` seconds a log message ("provisioning tracker, 12 s") and, with a token, progress,
until the environments are ready. Both ride the request's own stream, in either protocol era (the SDK's
request-scoped session; at 2026-07-28 logs go only to requests that opted in to a log level).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server import ServerRequestContext

from ..progress import ProgressSender, carry, wants_progress

if TYPE_CHECKING:
    from ..episode import Episode

logger = logging.getLogger(__name__)
LOGGER_NAME = "fleet-mcp-proxy"
FIRST_REPORT = 1.0  # a start faster than this is not worth a log line

Ctx = ServerRequestContext[Any, Any]


async def wait_ready(ctx: Ctx, episode: Episode) -> None:
    """`episode.ready()`, reporting while provisioning runs.

    Raises:
        EpisodeEnded, ProvisionError: as `Episode.ready` does.
    """
    if episode.provisioned and episode.ended is None:
        return  # the common case, as `ready()` would find it: no task, no timer
    interval = episode.progress_interval
    if episode.ended is not None or interval <= 0:
        await episode.ready()
        return
    sender = ProgressSender(ctx) if wants_progress(ctx) else None
    report = _Report(ctx, episode, sender)
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(report.run, interval)
        try:
            await episode.ready()
        except Exception as exc:  # re-raised below as itself, not wrapped in a task-group error
            failure = exc
        tg.cancel_scope.cancel()
    if sender is not None:
        carry(sender)  # the tool call that follows continues these progress values
    if failure is None and report.logged:
        await report.send(f"{', '.join(report.waited_for)} ready after {report.elapsed():.1f} s")
    if failure is not None:
        raise failure


class _Report:
    def __init__(self, ctx: Ctx, episode: Episode, sender: ProgressSender | None) -> None:
        self._ctx = ctx
        self._episode = episode
        self._sender = sender
        self._started = anyio.current_time()
        self.waited_for = [alias for alias in episode.environments if alias not in episode.links]
        self.logged = False

    def elapsed(self) -> float:
        return anyio.current_time() - self._started

    async def run(self, interval: float) -> None:
        if self._sender is not None:
            await self._sender.own(f"provisioning {', '.join(self.waited_for)}")
        await anyio.sleep(min(interval, FIRST_REPORT))
        while True:
            pending = [alias for alias in self.waited_for if alias not in self._episode.links] or self.waited_for
            await self.send(f"provisioning {', '.join(pending)}, {self.elapsed():.0f} s")
            await anyio.sleep(interval)

    async def send(self, message: str) -> None:
        self.logged = True
        if self._sender is not None:
            await self._sender.own(message)
        try:
            await self._ctx.session.send_log_message(
                "info", message, logger=LOGGER_NAME, related_request_id=self._ctx.request_id
            )
        except Exception:  # best effort: the client may have gone
            logger.debug("provisioning log for request %s not delivered", self._ctx.request_id)
