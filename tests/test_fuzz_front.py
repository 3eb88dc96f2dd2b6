"""Bad input at the front (hypothesis): malformed JSON-RPC, wrong types, unknown methods, huge strings, deep
nesting and invalid tool arguments, POSTed raw to `/mcp` on an established session, with no session, and as a
keyed 2026-07-28 request. Every answer is a protocol error (a JSON-RPC error, or a 4xx) or a proper result,
never a 5xx or a dropped connection, and an episode opened before the barrage keeps working after it.

The proxy runs once for the module, in its own thread and event loop, so that hypothesis can drive plain
synchronous examples against it over loopback.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from edge_helpers import jsonrpc_messages
from helpers import config_with, kitchen_cmd, proxy_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LEGACY = "2025-11-25"
MODERN = "2026-07-28"
# Tools that would block, crash the backend or need a client feature: not fuzz material.
_UNSAFE_TOOLS = {"block", "crash", "ask_llm", "ask_user", "roots", "big", "a__block", "a__crash", "a__big"}
KNOWN_METHODS = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/subscribe",
    "resources/templates/list",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "server/discover",
]
FIGURES: dict[str, int] = {"examples": 0, "4xx": 0, "jsonrpc_errors": 0, "results": 0, "accepted": 0}


class Front:
    """The proxy's URL plus an established legacy session and a live episode."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(timeout=httpx.Timeout(30.0))
        self.session = self.open_session()
        self.bystander = self.open_session()
        assert "fine" in self.echo(self.bystander, "fine")

    def open_session(self) -> str:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "0"}},
        }
        reply = self.http.post(self.url, json=init, headers={**ACCEPT, "MCP-Protocol-Version": LEGACY})
        assert reply.status_code == 200, reply.text
        session = reply.headers["mcp-session-id"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert self.post(note, self.legacy_headers(session)).status_code == 202
        return session

    def legacy_headers(self, session: str) -> dict[str, str]:
        return {**ACCEPT, "MCP-Protocol-Version": LEGACY, "Mcp-Session-Id": session}

    def post(self, body: Any, headers: dict[str, str]) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post(self.url, content=content, headers=headers)

    def echo(self, session: str, text: str) -> str:
        call = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": text}},
        }
        reply = self.post(call, self.legacy_headers(session))
        assert reply.status_code == 200, reply.text
        return reply.text


@pytest.fixture(scope="module")
def front() -> Iterator[Front]:
    started = threading.Event()
    stop = threading.Event()
    holder: dict[str, str] = {}

    async def serve() -> None:
        async with proxy_http(config_with(f"a={kitchen_cmd('a')}")) as proxy:
            holder["url"] = proxy.url
            started.set()
            await anyio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=anyio.run, args=(serve,), daemon=True)
    thread.start()
    assert started.wait(60), "the proxy did not start"
    f = Front(holder["url"])
    try:
        yield f
        # After the whole barrage: the episode opened before it still works, and the proxy is healthy.
        assert "still here" in f.echo(f.bystander, "still here")
        assert f.http.get(f.url.replace("/mcp", "/healthz")).json()["status"] == "ok"
        print(
            f"FUZZ: {FIGURES['examples']} malformed requests -> {FIGURES['4xx']} HTTP 4xx, "
            f"{FIGURES['jsonrpc_errors']} JSON-RPC errors, {FIGURES['results']} proper results, "
            f"{FIGURES['accepted']} accepted notifications; 0 5xx, 0 dropped connections; bystander episode fine"
        )
    finally:
        f.http.close()
        stop.set()
        thread.join(30)


def check(reply: httpx.Response) -> None:
    """A protocol error or a proper answer; never a server error, and a 200 always carries its JSON-RPC answer."""
    FIGURES["examples"] += 1
    assert reply.status_code < 500, (reply.status_code, reply.text[:300])
    if 400 <= reply.status_code < 500:
        FIGURES["4xx"] += 1
        return
    if reply.status_code == 202:  # a notification or a response: accepted, nothing to answer
        assert not reply.content, reply.text[:300]
        FIGURES["accepted"] += 1
        return
    assert reply.status_code == 200, reply.status_code
    messages = jsonrpc_messages(reply.headers.get("content-type", ""), reply.text)
    assert messages, ("a 200 without a JSON-RPC message", reply.headers.get("content-type"), reply.text[:300])
    final = messages[-1]
    assert isinstance(final, dict) and final.get("jsonrpc") == "2.0", final
    assert ("error" in final) != ("result" in final) and "id" in final, final
    if "error" in final:
        assert isinstance(final["error"].get("code"), int) and isinstance(final["error"].get("message"), str)
        assert "Traceback" not in final["error"]["message"]
        FIGURES["jsonrpc_errors"] += 1
    else:
        FIGURES["results"] += 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
huge = st.integers(100_000, 600_000).map(lambda n: "x" * n)
ids = (
    st.none() | st.integers() | st.text(max_size=20) | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=2)
)
tool_names = (st.sampled_from(["echo", "add", "fail", "no_such_tool", "", "a__echo"]) | st.text(max_size=30)).filter(
    lambda name: name not in _UNSAFE_TOOLS
)
tool_calls = st.fixed_dictionaries(
    {
        "jsonrpc": st.just("2.0"),
        "id": st.integers(1, 10**6),
        "method": st.just("tools/call"),
        "params": st.fixed_dictionaries(
            {"name": tool_names, "arguments": json_values | st.dictionaries(st.text(max_size=8), json_values)}
        ),
    }
)
jsonrpc_shaped = st.fixed_dictionaries(
    {"method": st.sampled_from(KNOWN_METHODS) | st.text(max_size=40) | huge},
    optional={"jsonrpc": st.sampled_from(["2.0", "1.0", ""]) | json_values, "id": ids, "params": json_values},
)
deep = st.integers(200, 100_000).map(lambda depth: ("[" * depth + "]" * depth).encode())
deep_object = st.integers(200, 5_000).map(
    lambda depth: (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + '{"a":' * depth + "1" + "}" * depth + "}"
    ).encode()
)
garbage = st.binary(max_size=2_000) | st.text(max_size=200).map(str.encode)
bodies = (
    jsonrpc_shaped
    | tool_calls
    | deep
    | deep_object
    | garbage
    | json_values
    | st.lists(jsonrpc_shaped, min_size=1, max_size=3)
)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    derandomize=True,
)


@FUZZ
@given(body=bodies)
def test_bad_input_on_an_established_session_gets_a_protocol_error(front: Front, body: Any) -> None:
    check(front.post(body, front.legacy_headers(front.session)))


@FUZZ
@given(body=bodies, session=st.sampled_from([None, "", "not-a-session", "0" * 32]))
def test_bad_input_without_a_session_gets_a_protocol_error(front: Front, body: Any, session: str | None) -> None:
    headers = {**ACCEPT, "MCP-Protocol-Version": LEGACY}
    if session is not None:
        headers["Mcp-Session-Id"] = session
    check(front.post(body, headers))


@FUZZ
@given(body=bodies, episode=st.sampled_from(["fuzz", None]))
def test_bad_input_to_a_keyed_2026_episode_gets_a_protocol_error(front: Front, body: Any, episode: str | None) -> None:
    headers = {**ACCEPT, "MCP-Protocol-Version": MODERN}
    if episode is not None:
        headers["Fleet-Episode"] = episode
    check(front.post(body, headers))
