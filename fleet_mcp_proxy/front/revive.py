"""A handshake-era session revived on the replica that adopted its episode: the same `Mcp-Session-Id`, served
by a new transport whose server session is brought to where the client left it by replaying the `initialize`
the client once sent (recorded with its route), so the client's next request simply goes on.

This reaches into the SDK's session manager (`_server_instances`, `_session_owners`, `_task_group`,
`_lifespan_state`, `_discard_session`): private in mcp 2.3.0, which the project pins; the replica tests fail
loudly if they move.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.runner import serve_loop
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.types import Message, Scope

from ..fastlane.sse import SseDecoder

logger = logging.getLogger(__name__)
REPLAY_TIMEOUT = 10.0
_SSE = b"text/event-stream"
_DROPPED = frozenset({b"content-length", b"content-type", b"accept", b"mcp-session-id", b"mcp-protocol-version"})


async def revive_session(
    manager: StreamableHTTPSessionManager, session_id: str, handshake: dict[str, Any], scope: Scope
) -> bool:
    """Serve `session_id` here from now on; True once its replayed handshake was accepted."""
    if session_id in manager._server_instances:
        return True
    transport = StreamableHTTPServerTransport(
        mcp_session_id=session_id,
        is_json_response_enabled=manager.json_response,
        event_store=manager.event_store,
        security_settings=manager.security_settings,
        retry_interval=manager.retry_interval,
        idle_timeout=manager.session_idle_timeout,
    )

    async def run_server(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with transport.connect() as (read_stream, write_stream):
            task_status.started()
            try:
                idle_scope = transport.idle_scope if transport.idle_scope is not None else anyio.CancelScope()
                with idle_scope:
                    await serve_loop(
                        manager.app,
                        read_stream,
                        write_stream,
                        lifespan_state=manager._lifespan_state,
                        session_id=session_id,
                    )
            except Exception:
                logger.exception("revived session %s crashed", session_id[:64])
            finally:
                await manager._discard_session(session_id, transport)

    assert manager._task_group is not None
    try:
        await manager._task_group.start(run_server)
        version = str(handshake.get("protocolVersion", ""))
        with anyio.fail_after(REPLAY_TIMEOUT):
            opened = await _post(
                transport,
                scope,
                {"jsonrpc": "2.0", "id": "fmp-revive", "method": "initialize", "params": handshake},
                session_id=None,
                version=None,
            )
            ready = opened and await _post(
                transport, scope, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session_id, version
            )
    except Exception:
        logger.exception("could not revive session %s", session_id[:64])
        ready = False
    if not ready or transport.is_terminated:
        await manager._discard_session(session_id, transport)
        return False
    # Known to the SDK only now, with its handshake replayed: a request that finds the id registered goes
    # straight to the transport, and one arriving meanwhile waited for this revive (`remote.py`), instead of
    # reaching a transport not yet connected (the SDK answers that with a 500).
    user = scope.get("user")
    if isinstance(user, AuthenticatedUser):  # the SDK serves a session only to the credential that opened it
        manager._session_owners[session_id] = authorization_context(user)
    manager._server_instances[session_id] = transport
    return True


async def _post(
    transport: StreamableHTTPServerTransport,
    scope: Scope,
    message: dict[str, Any],
    session_id: str | None,
    version: str | None,
) -> bool:
    """One JSON-RPC message through the transport as if the client had sent it; True on a 2xx answer that, for a
    request, carries its result (the SDK answers a handshake it refuses with 200 and a JSON-RPC error)."""
    body = json.dumps(message).encode()
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _DROPPED]
    headers += [
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-length", str(len(body)).encode()),
    ]
    if session_id is not None:
        headers.append((b"mcp-session-id", session_id.encode()))
    if version:
        headers.append((b"mcp-protocol-version", version.encode()))
    replay: Scope = {**scope, "method": "POST", "headers": headers, "query_string": scope.get("query_string", b"")}
    sent = False
    status = 0
    event_stream = False
    answer = bytearray()
    finished = anyio.Event()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # the answer is being streamed: the "client" stays until it is done
        return {"type": "http.disconnect"}

    async def send(event: Message) -> None:
        nonlocal status, event_stream
        if event["type"] == "http.response.start":
            status = int(event["status"])
            event_stream = any(k.lower() == b"content-type" and v.startswith(_SSE) for k, v in event["headers"])
        elif event["type"] == "http.response.body":
            answer.extend(event.get("body", b""))
            if not event.get("more_body", False):
                finished.set()

    await transport.handle_request(replay, receive, send)
    if not 200 <= status < 300:
        return False
    if "id" not in message:
        return True
    for data in SseDecoder().feed(bytes(answer)) if event_stream else [bytes(answer)]:
        try:
            reply = json.loads(data)
        except ValueError:
            continue
        if isinstance(reply, dict) and reply.get("id") == message["id"]:
            return "result" in reply
    return False
