"""A handshake-era session revived on the replica that adopted its episode (`front/revive.py`), against the SDK's
own session manager and a real server: a request that finds the session id known gets an answer, never a
transport that is not connected yet or a session whose handshake is not replayed yet (a rolling restart in CI
met the SDK's 500 "No read stream writer available" that way)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from backends.kitchen import build
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.types import Message, Scope

from fleet_mcp_proxy.front.revive import revive_session

pytestmark = pytest.mark.anyio
VERSION = "2025-11-25"
HANDSHAKE = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "agent", "version": "1"}}
SESSION = "a" * 32


def _scope(session_id: str | None = None) -> Scope:
    headers = [(b"host", b"127.0.0.1:8000")]
    if session_id is not None:
        headers += [(b"mcp-session-id", session_id.encode()), (b"mcp-protocol-version", VERSION.encode())]
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "headers": headers,
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 40000),
    }


async def _call(manager: StreamableHTTPSessionManager, session_id: str) -> tuple[int, dict[str, Any]]:
    """A tools/call of the session through the manager, as uvicorn would hand it over: (status, JSON-RPC answer)."""
    params = {"name": "echo", "arguments": {"text": "hi"}}
    message = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    body = json.dumps(message).encode()
    scope = _scope(session_id)
    scope["headers"] += [
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-length", str(len(body)).encode()),
    ]
    sent, status, chunks, done = False, 0, bytearray(), anyio.Event()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(event: Message) -> None:
        nonlocal status
        if event["type"] == "http.response.start":
            status = event["status"]
        elif event["type"] == "http.response.body":
            chunks.extend(event.get("body", b""))
            if not event.get("more_body", False):
                done.set()

    await manager.handle_request(scope, receive, send)
    text = chunks.decode()
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    return status, json.loads(data[-1] if data else text)


async def test_a_request_that_finds_the_revived_session_known_is_answered() -> None:
    manager = StreamableHTTPSessionManager(app=build("env"), security_settings=None)
    answers: list[tuple[int, dict[str, Any]]] = []
    async with manager.run():
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def racer() -> None:
                    # Every turn of the loop until the id is known, then at once: what a concurrent request
                    # that skips the revive (the id is known) does.
                    while SESSION not in manager._server_instances:
                        await anyio.lowlevel.checkpoint()
                    answers.append(await _call(manager, SESSION))

                tg.start_soon(racer)
                assert await revive_session(manager, SESSION, HANDSHAKE, _scope())
            answers.append(await _call(manager, SESSION))  # and the session goes on as usual
    assert [status for status, _ in answers] == [200, 200], answers
    assert all(answer["result"]["structuredContent"]["text"] == "hi" for _, answer in answers), answers


async def test_a_session_whose_handshake_is_refused_stays_unknown() -> None:
    manager = StreamableHTTPSessionManager(app=build("env"), security_settings=None)
    async with manager.run():
        with anyio.fail_after(30):
            refused = await revive_session(manager, SESSION, {"protocolVersion": 42}, _scope())  # invalid params
            status, answer = await _call(manager, SESSION)
    assert refused is False
    assert SESSION not in manager._server_instances
    assert status == 404 and answer["error"]["message"] == "Session not found", answer
