"""The outermost ASGI layer: request counting, lazy expiry, the control-plane gate and cut connections.

The gate runs on `/v1/...` only: fault latency, then the API key (401), then the 429 and 5xx faults.
A handler that wants the connection dropped without an answer calls `drop(request)`; this layer then
swallows the response and aborts the socket, so the client sees a transport error (no status line).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .emulator import Emulator

DROP_KEY = "fleet_emulator.drop"


class _Drop:
    requested = False


def drop(request: Request) -> None:
    """Cut this request's connection instead of answering it."""
    request.scope[DROP_KEY].requested = True


def bearer_ok(emu: Emulator, authorization: str | None) -> bool:
    return authorization == f"Bearer {emu.api_key}"


def unauthorized() -> Response:
    return JSONResponse({"detail": "Invalid API key"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


class Front:
    def __init__(self, emu: Emulator, app: ASGIApp) -> None:
        self.emu = emu
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if not path.startswith("/_emulator/"):
            self.emu.state.request_counts[f"{method} {path}"] += 1
        self.emu.sweep()  # expiry is evaluated on every request, whatever the sweeper is doing
        if path.startswith("/v1/"):
            refusal = await self._gate(scope, method, path)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        cut = _Drop()
        scope[DROP_KEY] = cut

        async def guarded_send(message: Message) -> None:
            if not cut.requested:
                await send(message)

        await self.app(scope, receive, guarded_send)
        if cut.requested:
            await _abort(receive, send)

    async def _gate(self, scope: Scope, method: str, path: str) -> Response | None:
        faults = self.emu.faults
        eligible = faults.applies_to(method, path)
        if eligible and (delay := faults.delay()) > 0:
            await anyio.sleep(delay)
        if not bearer_ok(self.emu, Request(scope).headers.get("authorization")):
            return unauthorized()
        if eligible and faults.roll(faults.rate_429):
            headers = {} if faults.retry_after is None else {"Retry-After": str(faults.retry_after)}
            return JSONResponse({"detail": "Rate limit exceeded"}, status_code=429, headers=headers)
        if eligible and faults.roll(faults.rate_5xx):
            detail = {"error": "service_unavailable", "message": "Service temporarily unavailable"}
            return JSONResponse({"detail": detail}, status_code=faults.status_5xx)
        return None


async def _abort(receive: Receive, send: Send) -> None:
    """Close the socket with no response. Under uvicorn, `send` is bound to the cycle holding the transport."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        # Not uvicorn: start a response and never finish it; the server then closes the connection.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
        return
    transport.abort()
    # Wait for the server to notice, so it does not answer 500 for a response that was never started.
    with anyio.move_on_after(2):
        while (await receive())["type"] != "http.disconnect":
            pass
