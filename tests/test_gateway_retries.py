"""Tool calls through a gateway in front of a real backend: repeated only when the backend never got them.

The gateway is a tiny loopback HTTP server forwarding to a kitchen backend; it counts the `tools/call`
requests it forwarded, which is what the backend saw. Both the fast lane and the SDK path are exercised.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from fleet_emulator.server import bind_loopback
from helpers import config_with, http_client, kitchen_http, proxy_http
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from fleet_mcp_proxy.config import EnvironmentConfig

pytestmark = pytest.mark.anyio


class Gateway:
    """Forwards everything to `backend`; the first `tools/call` gets `first` instead of a plain forward.

    `first`: "503" answers 503 without forwarding; "504" forwards, then answers 504 (the gateway gave up
    waiting); "cut" forwards, then starts a stream and breaks the connection before the answer.
    """

    def __init__(self, backend: str, first: str) -> None:
        self.backend = backend
        self.first = first
        self.forwarded_calls = 0
        self._tool_calls = 0
        self._http = httpx2.AsyncClient(timeout=30.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        call = _is_tool_call(body)
        if call:
            self._tool_calls += 1
        special = call and self._tool_calls == 1
        if special and self.first == "503":
            await Response("Service Unavailable", status_code=503)(scope, receive, send)
            return
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        upstream = await self._http.request(request.method, self.backend, headers=headers, content=body)
        if call:
            self.forwarded_calls += 1
        if special and self.first == "504":
            await Response("Gateway Timeout", status_code=504)(scope, receive, send)
            return
        if special and self.first == "cut":

            async def broken() -> AsyncIterator[bytes]:
                yield b": keep-alive\n\n"
                raise RuntimeError("the gateway lost the backend mid-answer")

            await StreamingResponse(broken(), media_type="text/event-stream")(scope, receive, send)
            return
        passed = {k: v for k, v in upstream.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        await Response(upstream.content, status_code=upstream.status_code, headers=passed)(scope, receive, send)


def _is_tool_call(body: bytes) -> bool:
    try:
        message = json.loads(body)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("method") == "tools/call"


@contextlib.asynccontextmanager
async def gateway(backend: str, first: str) -> AsyncIterator[tuple[str, Gateway]]:
    app = Gateway(backend, first)
    sock = bind_loopback()
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="critical"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp", app
            finally:
                server.should_exit = True
        await app._http.aclose()
    finally:
        sock.close()


async def _call(url: str, fast_lane: bool) -> Any:
    config = config_with(f"a={url}", fast_lane=fast_lane)
    async with proxy_http(config) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(60):
            await c.list_tools()
            return await c.call_tool("echo", {"text": "once"})


@pytest.mark.parametrize("fast_lane", [True, False])
async def test_a_503_from_the_gateway_is_retried_and_the_backend_sees_one_call(fast_lane: bool) -> None:
    async with kitchen_http("a") as backend, gateway(backend, "503") as (url, gw):
        result = await _call(url, fast_lane)
    assert not result.is_error, result
    assert "once" in str(result.content)
    assert gw.forwarded_calls == 1


@pytest.mark.parametrize("first", ["504", "cut"])
@pytest.mark.parametrize("fast_lane", [True, False])
async def test_a_call_that_reached_the_backend_is_never_repeated(first: str, fast_lane: bool) -> None:
    """A 504 (the gateway gave up waiting) or a broken answer: the backend had the call; its outcome is unknown."""
    async with kitchen_http("a") as backend, gateway(backend, first) as (url, gw):
        result = await _call(url, fast_lane)
    assert result.is_error, result
    assert "unknown" in str(result.content)
    assert gw.forwarded_calls == 1


def test_the_default_call_timeout_fits_fleets_120_s_step_budget() -> None:
    assert EnvironmentConfig(name="a", url="http://127.0.0.1:1/mcp").call_timeout <= 110
