"""Plumbing for the edge and security tests: small real servers on loopback that record what reaches them."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import uvicorn
from fleet_emulator.server import bind_loopback
from helpers import KITCHEN
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass
class Seen:
    """Every HTTP request one server received: path and headers (names lowercased)."""

    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    # (client address, JSON-RPC method, JSON-RPC id) of every POSTed single message
    messages: list[tuple[tuple[str, int] | None, Any, Any]] = field(default_factory=list)

    def header_values(self) -> list[str]:
        return [value for _, headers in self.requests for value in headers.values()]


class Recording:
    """An ASGI layer that records each request's path and headers, then passes it on."""

    def __init__(self, app: ASGIApp, seen: Seen) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.seen.requests.append((scope["path"], headers))
            if scope["method"] == "POST":
                receive = self._reading(scope, receive)
        await self.app(scope, receive, send)

    def _reading(self, scope: Scope, receive: Receive) -> Receive:
        body = bytearray()

        async def reading() -> Message:
            message = await receive()
            body.extend(message.get("body", b""))
            if message["type"] == "http.request" and not message.get("more_body"):
                with contextlib.suppress(ValueError):
                    parsed = json.loads(body)
                    if isinstance(parsed, dict):
                        client = tuple(scope["client"]) if scope.get("client") else None
                        self.seen.messages.append((client, parsed.get("method"), parsed.get("id")))  # type: ignore[arg-type]
            return message

        return reading


def kitchen_app(name: str) -> ASGIApp:
    """The kitchen test backend's streamable-HTTP app, built in this process."""
    spec = importlib.util.spec_from_file_location("kitchen_backend", KITCHEN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app: ASGIApp = module.build(name).streamable_http_app(host="127.0.0.1")
    return app


def redirect_to(target: str) -> ASGIApp:
    """Answers every request with 307 to `target` (method and body would be kept by a client that followed)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await RedirectResponse(target, status_code=307)(scope, receive, send)

    return app


def ok_app() -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await Response("{}", media_type="application/json")(scope, receive, send)

    return app


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, **options: Any) -> AsyncIterator[str]:
    """`app` under uvicorn on a free loopback port, in this event loop; yields `http://127.0.0.1:PORT`."""
    sock = bind_loopback()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **{"lifespan": "auto", **options}))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                yield f"http://127.0.0.1:{sock.getsockname()[1]}"
            finally:
                server.should_exit = True
    finally:
        sock.close()


def jsonrpc_messages(content_type: str, text: str) -> list[Any]:
    """The JSON-RPC messages of one HTTP answer: a JSON body, or the data lines of an SSE stream."""
    if content_type.startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]
    if content_type.startswith("application/json") and text:
        return [json.loads(text)]
    return []


class RawSession:
    """A handshake-era session driven with raw POSTs, for input no SDK client would send."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self.http, self.url = http, url
        self.headers = {**MCP_HEADERS, "MCP-Protocol-Version": "2025-11-25"}

    async def open(self) -> RawSession:
        reply = await self.http.post(self.url, json=INITIALIZE, headers=self.headers)
        assert reply.status_code == 200, reply.text
        self.headers["Mcp-Session-Id"] = reply.headers["mcp-session-id"]
        initialized = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert initialized.status_code == 202, initialized.text
        return self

    async def post(self, message: Any, **headers: str) -> httpx2.Response:
        content = message if isinstance(message, bytes) else json.dumps(message).encode()
        return await self.http.post(self.url, content=content, headers={**self.headers, **headers})

    async def call(self, name: str, arguments: dict[str, Any], request_id: Any = 1) -> list[Any]:
        params = {"name": name, "arguments": arguments}
        reply = await self.post({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
        assert reply.status_code == 200, (reply.status_code, reply.text)
        return jsonrpc_messages(reply.headers.get("content-type", ""), reply.text)
