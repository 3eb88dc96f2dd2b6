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
            retry = self.emu.state.traffic.begin(Request(scope).headers.get("x-request-id"))
            try:
                await self._serve_v1(scope, receive, send, method, path)
            finally:
                self.emu.state.traffic.end(retry)
            return
        if path.startswith("/") and (mode := self.emu.misbehaving.get(path.split("/")[1])) is not None:
            await _misbehave(mode, receive, send)
            return
        await self._serve(scope, receive, send)

    async def _serve_v1(self, scope: Scope, receive: Receive, send: Send, method: str, path: str) -> None:
        refusal = await self._gate(scope, method, path)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
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


async def _misbehave(mode: str, receive: Receive, send: Send) -> None:
    """An instance's whole root gone wrong: `hang` never answers; `garbage` answers 200 with broken JSON-RPC."""
    if mode == "hang":
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    body = b'{"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "te'
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


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
