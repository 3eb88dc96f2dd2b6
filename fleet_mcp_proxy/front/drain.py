"""A replica's drain on SIGTERM, when replicas share a store: readiness fails at once (the load balancer stops
sending new episodes), calls in flight finish, and each live episode, once idle, is handed over instead of
ended: its links close, its heartbeats stop and its row is released, so the next replica its agent reaches
(or a background scan) adopts it with its instances intact (`adoption.py`). Then the process exits as usual.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from types import FrameType
from typing import TYPE_CHECKING

import anyio
import uvicorn
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..ownership import owner_alive
from .hop import HANDED_OVER_HEADER

if TYPE_CHECKING:
    from ..episode import Episode
    from ..registry import Registry
    from .episodes import StateHolder

logger = logging.getLogger(__name__)
POLL_SECONDS = 0.05
HANDOVERS_AT_ONCE = 32
RELEASE_WAIT = 10.0  # the store write that frees a handed-over row (the recorder bounds it at 5 s)


async def drain(holder: StateHolder, *, delay: float, grace: float) -> None:
    """Fail readiness, wait `delay` for the balancer to notice, then hand over every live episode (within `grace`;
    what is still busy then is ended by the usual shutdown)."""
    state = holder.state
    if state is None or holder.remote is None or state.recorder.store is None:
        return
    registry = state.registry
    registry.draining = True
    logger.warning("draining: readiness fails; live episodes are handed over to the other replicas")
    await anyio.sleep(delay)
    if not await _others_serve(holder):
        logger.warning("no other replica serves this store: episodes are ended, not handed over")
        return
    handed = 0
    turns = anyio.CapacityLimiter(HANDOVERS_AT_ONCE)

    async def hand_over(key: str, episode: Episode, released: anyio.Event) -> None:
        nonlocal handed
        async with turns:
            await _hand_over(holder, key, episode, released)
        handed += 1

    # Side by side, not one after the other: each hand-over waits on the store and on its environments (each
    # bounded), and a hundred of them in a row would outlast the grace.
    async with anyio.create_task_group() as tg:
        with anyio.move_on_after(grace):
            while any(e.end_state == "live" for e in registry.episodes.values()):
                for key, episode in list(registry.episodes.items()):
                    idle = episode.inflight == 0 and not registry.requests.get(key)
                    if idle and episode.end_state == "live" and episode.ended is None:
                        tg.start_soon(hand_over, key, episode, _take(registry, key))
                await anyio.sleep(POLL_SECONDS)
    logger.warning("drained: %d episode(s) handed over, %d left to end", handed, len(registry.episodes))


async def _others_serve(holder: StateHolder) -> bool:
    """Whether another live replica with an address shares the store (the last one standing ends its episodes)."""
    assert holder.remote is not None
    adopter = holder.remote.adopter
    try:
        with anyio.fail_after(5):
            owners = await adopter.store.owners()
    except Exception:
        return False
    at = time.time()
    return any(o.address and o.owner_id != adopter.me.owner_id and owner_alive(o, at=at, me=adopter.me) for o in owners)


def _take(registry: Registry, key: str) -> anyio.Event:
    """The episode leaves this replica's registry at once, in the same step that found it idle: a request arriving
    from now on waits for its release (the event returned), then is answered "handed over", so whoever gets it
    next finds the row free to adopt."""
    del registry.episodes[key]
    released = registry.handed_over[key] = anyio.Event()
    return released


async def _hand_over(holder: StateHolder, key: str, episode: Episode, released: anyio.Event) -> None:
    state = holder.state
    assert state is not None and holder.remote is not None and state.recorder.store is not None
    registry = state.registry
    me = holder.remote.forwarder.me
    with anyio.CancelScope(shield=True):
        try:
            await state.recorder.commit("hand_over", episode.id, me.owner_id, timeout=5.0)
        finally:
            released.set()
        for link in list(episode.links.values()):
            await link.stop(state.config.end_timeout)
        for instance in episode.instances.values():
            state.pool.keeper.forget(instance)  # heartbeats stop here; the adopter's start at once
        for hook in registry.on_end:  # its sessions here close; its principal's places free up
            with anyio.move_on_after(state.config.end_timeout):
                await hook(episode)
    episode.end_state = "handed over"
    logger.info("episode %s handed over", episode.id)


async def answer_handed_over(released: anyio.Event, scope: Scope, receive: Receive, send: Send) -> None:
    with anyio.move_on_after(RELEASE_WAIT):
        await released.wait()
    await handed_over()(scope, receive, send)


def handed_over() -> Response:
    """A draining replica's answer for an episode it gave up: the balancer retries it on another replica, and a
    replica that forwarded it here serves it itself (`hop.py`)."""
    message = '{"jsonrpc": "2.0", "id": null, "error": {"code": -32603, "message": "This proxy replica is stopping."}}'
    return Response(message, 503, headers={HANDED_OVER_HEADER: "1"}, media_type="application/json")


class DrainingServer(uvicorn.Server):
    """uvicorn, but on SIGTERM a replica on a shared store drains before it stops listening: the requests that
    still reach it meanwhile (sticky ones, forwarded ones) are served, not refused. Other signals, and a second
    SIGTERM, stop it at once as usual."""

    def __init__(self, config: uvicorn.Config, holder: StateHolder, *, delay: float, grace: float) -> None:
        super().__init__(config)
        self._holder, self._delay, self._grace = holder, delay, grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()  # uvicorn runs on asyncio: the signal handler hands work to it
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._drain is not None or self._holder.remote is None or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # re-raised when serving ends, as uvicorn does
        self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await drain(self._holder, delay=self._delay, grace=self._grace)
        except Exception:
            logger.exception("the drain failed; stopping as usual")
        finally:
            self.should_exit = True
