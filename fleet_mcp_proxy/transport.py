"""The HTTP transport under every backend link: retry only what the backend never accepted.

A refused connection, a connection that broke while the request was being written (a server acts only on a
whole request), or a 502/503 from the proxy in front of an instance (a warming or briefly unreachable
instance) means the request never reached the MCP server, so sending it again is safe even for a
`tools/call`. A 504 is not among them: the gateway forwarded the request and gave up waiting for the answer.
A request that was sent and then lost is never repeated: its outcome is unknown.
"""

from __future__ import annotations

import logging

import httpx2
import stamina

logger = logging.getLogger(__name__)
_NOT_ACCEPTED = frozenset({502, 503})
_NEVER_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.WriteError)


class _NotAccepted(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")


class RetryUnacceptedTransport(httpx2.AsyncBaseTransport):
    """Wraps a transport; retries connect failures and gateway errors within a small budget.

    `timeout` bounds all retries of one request; the link keeps it well inside the call's own deadline.
    """

    def __init__(
        self, inner: httpx2.AsyncBaseTransport, *, attempts: int = 4, timeout: float = 15.0, owns_inner: bool = True
    ) -> None:
        self._inner = inner
        self._owns_inner = owns_inner  # a pool shared by every link is closed by its last user, not by each
        self._attempts = attempts
        self._timeout = timeout
        # What the SDK client settled with the server, for the fast lane's requests on the same session.
        self.session_id: str | None = None
        self.protocol_version: str | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        headers = request.headers
        if "mcp-session-id" in headers:
            self.session_id = headers["mcp-session-id"]
            self.protocol_version = headers.get("mcp-protocol-version")
        # The fast path: one attempt, no retry machinery, for the (nearly always) healthy case.
        try:
            first = await self._inner.handle_async_request(request)
        except _NEVER_SENT:
            if self._attempts < 2:
                raise
        else:
            if first.status_code not in _NOT_ACCEPTED or self._attempts < 2:
                return first
            await first.aclose()
        response: httpx2.Response | None = None
        try:
            async for attempt in stamina.retry_context(
                on=(*_NEVER_SENT, _NotAccepted),
                attempts=self._attempts - 1,  # the fast path above was the first
                timeout=self._timeout,
                wait_initial=0.2,
                wait_max=2.0,
            ):
                with attempt:
                    if response is not None:
                        await response.aclose()
                    response = await self._inner.handle_async_request(request)
                    if response.status_code in _NOT_ACCEPTED:
                        raise _NotAccepted(response.status_code)
        except _NotAccepted:
            pass  # the budget ran out on a gateway error: hand that last answer on, unread
        assert response is not None
        return response

    async def aclose(self) -> None:
        if self._owns_inner:
            await self._inner.aclose()
