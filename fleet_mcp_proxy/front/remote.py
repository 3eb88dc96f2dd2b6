"""A request whose episode this replica does not hold: forward it to the live owner, or adopt the episode when
its owner is gone (and revive the handshake-era session it belongs to), or leave it to be served here as new."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import anyio
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..adoption import Adopter, orphaned
from .auth import current_principal
from .drain import handed_over
from .hop import Forwarder
from .lane_messages import replay
from .revive import revive_session

logger = logging.getLogger(__name__)


@dataclass
class Remote:
    forwarder: Forwarder
    adopter: Adopter
    _reviving: dict[str, anyio.Event] = field(default_factory=dict)

    async def answer(
        self,
        manager: StreamableHTTPSessionManager,
        route: str,
        session_id: str | None,
        scope: Scope,
        receive: Receive,
        send: Send,
        unreachable: Response,
        *,
        forwarded: bool,
    ) -> Receive | None:
        """None when the request was answered elsewhere; otherwise the `receive` to serve it here with (adopted
        here, or nobody holds it)."""
        target = await self.forwarder.lookup(route)
        if target is None:
            return receive
        me = self.forwarder.me
        registry = self.adopter.registry
        principal = current_principal()
        if target.owner_id == me.owner_id:  # adopted here in the background: its session may need reviving
            episode = await self.adopter.settled(route)  # a request may arrive while its adoption runs
        else:
            owner = self.forwarder.live_owner(target)
            if owner is not None and not forwarded:
                body = await self.forwarder.forward(owner, scope, receive, send, unreachable)
                if body is None:
                    return None
                receive = replay(body, receive)  # the owner handed the episode over meanwhile: adopt it here
                target = await self.forwarder.lookup(route)
                if target is None:
                    return receive
            elif owner is not None or not orphaned(target, me, at=time.time()):
                return receive
            if registry.draining:  # a stopping replica adopts nothing: the balancer retries elsewhere
                await handed_over()(scope, receive, send)
                return None
            episode = await self.adopter.adopt(route, target, principal, session_id)
            if episode is None and not forwarded:  # another replica may have won the claim: it holds it now
                winner = await self.forwarder.lookup(route)
                owner = self.forwarder.live_owner(winner) if winner is not None else None
                if owner is not None:
                    body = await self.forwarder.forward(owner, scope, receive, send, unreachable)
                    if body is None:
                        return None
                    receive = replay(body, receive)
        if episode is None or session_id is None:
            return receive
        # The client's session id must be served here now, as the client opened it, before the SDK sees it; its
        # GET stream and its next POST often arrive together: one revives it, the other waits for that.
        if (reviving := self._reviving.get(session_id)) is not None:
            await reviving.wait()
            return receive
        if session_id in manager._server_instances:
            return receive
        self._reviving[session_id] = done = anyio.Event()
        try:
            shake = target if route == f"session:{session_id}" else await self.forwarder.lookup(f"session:{session_id}")
            handshake = shake.handshake if shake is not None and episode.principal == principal else None
            if handshake is not None and await revive_session(manager, session_id, handshake, scope):
                episode.session_ids.add(session_id)
        finally:
            del self._reviving[session_id]
            done.set()
        return receive
