"""One hop to the replica that owns an episode: a request that landed on a replica without it is streamed to the
owner (found in the shared store) and the owner's answer, SSE included, is streamed back as it is produced.

Only built when replicas share a PostgreSQL store; the embedded default never reaches this module.
"""

from __future__ import annotations

import logging
import time

import anyio
import httpx
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ..config import ClusterConfig
from ..ownership import Me, owner_alive
from ..store import EpisodeStore
from ..store.records import OwnerRecord, RouteTarget

logger = logging.getLogger(__name__)
HANDED_OVER_HEADER = "fleet-handed-over"  # on a 503 from a draining replica: serve the request where it is
FORWARDED_HEADER = "fleet-forwarded-by"  # set on the hop: a forwarded request is served where it lands, never again
LOOKUP_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
# Hop-by-hop headers (RFC 9110 7.6.1) and what httpx recomputes; everything else (auth, Host, Mcp-Session-Id,
# Mcp-Protocol-Version, Fleet-Episode, Last-Event-ID) goes through as the client sent it.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        FORWARDED_HEADER.encode(),
    }
)


class _ClientGone(Exception):
    """The agent disconnected while its request body was being read."""


class _TooLarge(Exception):
    """The request body is over the proxy's limit."""


class Forwarder:
    """Finds the live owner of a route in the store and relays a request to it."""

    def __init__(self, store: EpisodeStore, me: Me, settings: ClusterConfig, body_limit: int) -> None:
        self._store = store
        self._body_limit = body_limit
        self._me = me
        self._first_byte = settings.forward_first_byte_timeout
        timeout = httpx.Timeout(connect=settings.forward_connect_timeout, read=None, write=30.0, pool=30.0)
        # read=None: an SSE stream may rest between events for as long as a tool call runs; the first byte is
        # bounded below, and the owner bounds its own calls.
        self._client = httpx.AsyncClient(
            timeout=timeout, limits=httpx.Limits(max_connections=None), follow_redirects=False, trust_env=False
        )
        self.forwarded = 0  # requests relayed, an operator figure on /status

    @property
    def me(self) -> Me:
        return self._me

    async def lookup(self, route: str) -> RouteTarget | None:
        """The unfinished episode behind `route` and its holder; None: nothing known (or the store failed)."""
        try:
            with anyio.fail_after(LOOKUP_TIMEOUT):
                return await self._store.route_target(route)
        except Exception:  # a slow or broken store: the request is served here, as without a shared store
            logger.warning("could not look up the owner of a request in the episode store; serving it here")
            return None

    def live_owner(self, target: RouteTarget) -> OwnerRecord | None:
        """Another live replica holding the episode, with an address to forward to; None: not forwarded."""
        owner = target.owner
        if owner is None or owner.owner_id == self._me.owner_id or not owner.address:
            return None
        return owner if owner_alive(owner, at=time.time(), me=self._me) else None

    async def forward(
        self, owner: OwnerRecord, scope: Scope, receive: Receive, send: Send, unreachable: Response
    ) -> bytes | None:
        """Relay the request to `owner`; None once the agent was answered. The request's body when the owner
        answered that it handed the episode over meanwhile (a drain): the caller serves it here instead.

        The body is read whole first (one JSON-RPC message, bounded like the SDK bounds it), so that it can be
        served here after all; the answer streams back as the owner produces it.
        """
        assert owner.address is not None
        query = scope.get("query_string", b"").decode("latin-1")
        url = f"{owner.address}{scope['path']}" + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        headers.append((FORWARDED_HEADER.encode(), self._me.owner_id.encode()))
        has_body = any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        body = b""
        if has_body:
            try:
                body = await _read_body(receive, self._body_limit)
            except _ClientGone:
                return None
            except _TooLarge:
                await Response("Request body too large", 413)(scope, receive, send)
                return None
        request = self._client.build_request(scope["method"], url, headers=headers, content=body if has_body else None)
        try:
            with anyio.fail_after(self._first_byte):
                response = await self._client.send(request, stream=True)
        except Exception as exc:  # refused, timed out, or a malformed address in another replica's row
            logger.warning(
                "could not forward a request to replica %s (%s, host %s): %s",
                owner.owner_id,
                owner.address,
                owner.host,
                type(exc).__name__,
            )
            await unreachable(scope, receive, send)
            return None
        if response.status_code == 503 and HANDED_OVER_HEADER in response.headers:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                await response.aclose()
            return body
        self.forwarded += 1
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
                await _relay(response, send)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                await response.aclose()
        return None

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            await self._client.aclose()


async def _relay(response: httpx.Response, send: Send) -> None:
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    try:
        async for chunk in response.aiter_raw():  # as the owner produces it: progress and elicitation too
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.HTTPError as exc:  # the owner went away mid-answer: end what the agent has
        logger.warning("a forwarded answer broke off: %s", type(exc).__name__)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Stop relaying (and close the hop) when the agent goes away, e.g. from an open SSE stream."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body += message.get("body", b"")
        if len(body) > limit:
            raise _TooLarge
        if not message.get("more_body", False):
            return bytes(body)
