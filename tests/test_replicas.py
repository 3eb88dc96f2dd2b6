"""Two real proxy replicas (subprocesses) on one real PostgreSQL database: a request for an episode that another
live replica owns is forwarded to it over the address it registered, one hop, streaming both ways."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as t
import pytest
from helpers import kitchen_cmd, stop_process
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pg_cluster import PgCluster
from scaleout_helpers import Replica, serve

from fleet_mcp_proxy.front.hop import FORWARDED_HEADER
from fleet_mcp_proxy.ownership import host_name
from fleet_mcp_proxy.store import open_any_store
from fleet_mcp_proxy.store.records import OwnerRecord

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]
MODERN = "2026-07-28"
ANONYMOUS_KEY = "key:anonymous:"  # the route of a keyed episode when auth is off


@contextlib.asynccontextmanager
async def replica(store: str, **env: str) -> AsyncIterator[Replica]:
    """`serve --port 0 --store STORE` with one kitchen backend; stderr kept in `log`."""
    running = await serve("--store", store, "--env", f"k={kitchen_cmd('k')}", **env)
    try:
        yield running
    finally:
        stop_process(running.proc)


class Switch(httpx2.AsyncBaseTransport):
    """Sends the client's requests to whichever replica `port` names: the same session, another replica
    (what a lost stick-table entry does behind a load balancer)."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.port: int | None = None
        self.statuses: list[tuple[int | None, int]] = []
        self.session_id: str | None = None  # the Mcp-Session-Id the first replica issued

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.port is not None:
            request.url = request.url.copy_with(port=self.port)
        response = await self._inner.handle_async_request(request)
        self.statuses.append((request.url.port, response.status_code))
        self.session_id = self.session_id or response.headers.get("mcp-session-id")
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def client(
    url: str,
    mode: str = "legacy",
    switch: Switch | None = None,
    headers: dict[str, str] | None = None,
    **callbacks: Any,
) -> Client:
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=None), transport=switch, headers=headers)
    return Client(streamable_http_client(url, http_client=http), mode=mode, cache=None, **callbacks)  # type: ignore[arg-type]


def port_of(r: Replica) -> int:
    return int(r.base.rsplit(":", 1)[1])


async def backend_pid(c: Client) -> int:
    result = await c.call_tool("pid", {})
    assert not result.is_error, result
    assert result.structured_content is not None
    return int(result.structured_content["pid"])


async def wait_route(store_url: str, route: str) -> OwnerRecord:
    """The route is written through the owner's recorder queue, off the request path: wait for it (bounded)."""
    async with await open_any_store(store_url, create=False) as store:
        with anyio.fail_after(30):
            while (owner := await store.route_owner(route)) is None:
                await anyio.sleep(0.05)
    return owner


@pytest.fixture
def store_url(pg_cluster: PgCluster) -> str:
    return pg_cluster.new_database()


async def test_keyed_episode_on_a_is_answered_through_b_with_its_state(store_url: str) -> None:
    key = f"fwd-{uuid.uuid4().hex[:12]}"
    with anyio.fail_after(120):
        async with replica(store_url) as a, replica(store_url) as b:
            async with client(f"{a.url}?episode={key}", MODERN) as on_a:
                first = await backend_pid(on_a)
            owner = await wait_route(store_url, ANONYMOUS_KEY + key)
            assert owner.address == a.base  # A registered the address it listens on
            async with client(f"{b.url}?episode={key}", MODERN) as on_b:
                assert await backend_pid(on_b) == first  # A's backend: the episode's state, not a fresh one
                echoed = await on_b.call_tool("echo", {"text": "through b"})
                assert not echoed.is_error and echoed.structured_content == {"text": "through b", "backend": "k"}
            seen_b, seen_a = await b.status(), await a.status()
            assert seen_b["forwarded"] >= 2 and seen_b["totals"]["episodes"] == 0
            assert seen_a["forwarded"] == 0 and seen_a["totals"]["episodes"] == 1
            replicas = {r["address"]: r for r in seen_b["replicas"]}
            assert set(replicas) == {a.base, b.base}
            assert all(r["lease_left_s"] > 0 and r["host"] == host_name() for r in replicas.values())


async def test_session_issued_by_a_is_served_through_b_with_progress_and_elicitation(store_url: str) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    asked: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async def elicit(ctx: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
        asked.append(params.message)
        return t.ElicitResult(action="accept", content={"n": "bob"})

    switch = Switch()
    with anyio.fail_after(120):
        async with replica(store_url) as a, replica(store_url) as b:
            async with client(a.url, "legacy", switch, elicitation_callback=elicit) as c:
                first = await backend_pid(c)
                assert switch.session_id is not None
                owner = await wait_route(store_url, f"session:{switch.session_id}")
                assert owner.address == a.base
                switch.port = port_of(b)  # from now on every request of this session lands on B
                assert await backend_pid(c) == first
                counted = await c.call_tool("count", {"n": 4}, progress_callback=on_progress)
                assert not counted.is_error and progress == [(i, 4.0, f"step {i}") for i in range(1, 5)]
                # The elicitation request must reach the agent while the call is still open on A: only a hop
                # that streams the answer as it is produced gets here (a buffered one would wait forever).
                answered = await c.call_tool("ask_user", {})
                assert not answered.is_error and asked == ["Your name?"]
                assert "accept" in str(answered.content[0]) and "bob" in str(answered.content[0])
                seen_b, seen_a = await b.status(), await a.status()
                assert seen_b["forwarded"] >= 3 and seen_b["totals"]["episodes"] == 0
                assert seen_a["totals"]["episodes"] == 1  # the session's episode lives on A only
            assert {port for port, _ in switch.statuses[-4:]} == {port_of(b)}
            assert all(status < 400 for _, status in switch.statuses)


async def test_a_forwarded_request_is_never_forwarded_again(store_url: str) -> None:
    """A store row that sends B's requests back to B: the hop's marker stops the second forward (no loop)."""
    key = f"loop-{uuid.uuid4().hex[:12]}"
    with anyio.fail_after(120):
        async with replica(store_url) as a, replica(store_url) as b:
            async with await open_any_store(store_url) as store:
                ghost = OwnerRecord(
                    owner_id="ghost",
                    host=host_name(),
                    pid=a.proc.pid,  # alive, and not B's: B takes the ghost for another live replica
                    started_at=datetime.now(UTC),
                    lease_until=time.time() + 120,
                    address=b.base,  # ... that lives at B's own address
                )
                await store.register_owner(ghost)
                await store.open_episode("ghostep", "anonymous", None, datetime.now(UTC), owner="ghost")
                await store.add_route(ANONYMOUS_KEY + key, "ghostep")
            async with client(f"{b.url}?episode={key}", MODERN) as on_b:
                await backend_pid(on_b)  # answered: by B itself, after exactly one hop to itself
            seen = await b.status()
            assert seen["forwarded"] == 1 and seen["totals"]["episodes"] == 1
            # A client cannot make a replica skip forwarding into a loop either: the marker only stops forwarding.
            async with httpx2.AsyncClient(timeout=10) as http:
                response = await http.get(f"{b.base}/status", headers={FORWARDED_HEADER: "x"})
            assert response.status_code == 200


async def test_no_forwarding_on_the_sqlite_default(tmp_path: Path) -> None:
    switch = Switch()
    with anyio.fail_after(120):
        async with replica(str(tmp_path / "a.sqlite3")) as a, replica(str(tmp_path / "b.sqlite3")) as b:
            async with client(a.url, "legacy", switch) as c:
                await backend_pid(c)
                switch.port = port_of(b)
                with pytest.raises(Exception):  # noqa: B017  the SDK surfaces the 404 as its own error
                    await backend_pid(c)
                switch.port = port_of(a)
            assert (port_of(b), 404) in switch.statuses  # "Session not found", as on any unknown session
            seen = await b.status()
            assert seen["forwarded"] == 0 and seen["replicas"][0]["address"] is None
            assert not any("forward" in line for line in b.log)


async def test_an_unreachable_owner_gives_the_agent_a_plain_error_and_the_operator_its_name(store_url: str) -> None:
    key = f"gone-{uuid.uuid4().hex[:12]}"
    with anyio.fail_after(120):
        async with replica(store_url) as b:
            async with await open_any_store(store_url) as store:
                with socket_closed_port() as dead:
                    await store.register_owner(
                        OwnerRecord(
                            owner_id="away",
                            host="elsewhere",  # another host: alive by its lease alone
                            pid=1,
                            started_at=datetime.now(UTC),
                            lease_until=time.time() + 120,
                            address=f"http://127.0.0.1:{dead}",
                        )
                    )
                    await store.open_episode("awayep", "anonymous", None, datetime.now(UTC), owner="away")
                    await store.add_route(ANONYMOUS_KEY + key, "awayep")
                    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
                    headers = {"Accept": "application/json, text/event-stream", "Mcp-Protocol-Version": MODERN}
                    async with httpx2.AsyncClient(timeout=30) as http:
                        response = await http.post(f"{b.url}?episode={key}", json=body, headers=headers)
            assert response.status_code == 503
            error = json.loads(response.text)["error"]
            assert "cannot be reached" in error["message"] and "Error" not in error["message"]
            with anyio.fail_after(10):
                while not any("away" in line and f"127.0.0.1:{dead}" in line for line in b.log):
                    await anyio.sleep(0.05)


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, never listening: connections are refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_auth_is_applied_before_the_hop_and_again_by_the_owner(store_url: str) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    bearer = {"Authorization": f"Bearer {token}"}
    key = f"auth-{uuid.uuid4().hex[:12]}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    plain = {"Accept": "application/json, text/event-stream", "Mcp-Protocol-Version": MODERN}
    with anyio.fail_after(120):
        async with (
            replica(store_url, FLEET_MCP_PROXY_TOKEN=token) as a,
            replica(store_url, FLEET_MCP_PROXY_TOKEN=token) as b,
        ):
            async with client(f"{a.url}?episode={key}", MODERN, headers=bearer) as on_a:
                first = await backend_pid(on_a)
            await wait_route(store_url, f"key:default:{key}")  # keyed in the token's principal
            async with client(f"{b.url}?episode={key}", MODERN, headers=bearer) as on_b:
                assert await backend_pid(on_b) == first
            async with httpx2.AsyncClient(timeout=30) as http:
                refused_by_b = await http.post(f"{b.url}?episode={key}", json=body, headers=plain)
                # The hop's marker does not stand in for a token: the owner checks auth as for any request.
                marked = {**plain, FORWARDED_HEADER: "someone"}
                refused_by_a = await http.post(f"{a.url}?episode={key}", json=body, headers=marked)
            assert refused_by_b.status_code == refused_by_a.status_code == 401
            assert (await b.status(bearer))["forwarded"] >= 1
            assert not any(token in line for line in a.log + b.log)
