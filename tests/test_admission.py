"""One admission step for every request (issue 13): ids the SDK would refuse never reach the call limit, Host and
Origin are checked on every route and method, and another principal's session is not found, on the lane too."""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import httpx2
import pytest
from canaries import CLIENT_TOKEN
from edge_helpers import RawSession, jsonrpc_messages
from helpers import config_with, http_client, kitchen_http, proxy_http, wait_until

from fleet_mcp_proxy.front.admission import is_request_id, parse_message, tool_call_params_ok

BOB_TOKEN = "bob-token-0123456789abcdef"
# Ids JSON-RPC (and the SDK) refuse as request ids: with them, the message is no request at all.
ODD_IDS: list[Any] = [[0], {}, 1.5, True, False, None, [], {"a": 1}, [[1]], -0.0]


async def _odd_id_answers(url: str, limit: int) -> list[tuple[int, list[Any]]]:
    """The answers to tool calls with odd ids, then proof that no call slot leaked."""
    async with httpx2.AsyncClient(timeout=30) as http:
        raw = await RawSession(http, url).open()
        with anyio.fail_after(60):
            assert "first" in str(await raw.call("echo", {"text": "first"}))  # provisions: the lane takes the rest
            assert "second" in str(await raw.call("echo", {"text": "second"}))
            answers = []
            for odd in ODD_IDS * limit:
                call = {"jsonrpc": "2.0", "id": odd, "method": "tools/call", "params": {"name": "echo"}}
                reply = await raw.post({**call, "params": {"name": "echo", "arguments": {"text": "odd"}}})
                assert reply.status_code < 500, (odd, reply.status_code, reply.text)
                answers.append((reply.status_code, jsonrpc_messages(reply.headers["content-type"], reply.text)))
            for n in range(limit + 1):  # more calls than the limit: each one must still find a free slot
                assert "max_calls_per_principal" not in str(await raw.call("echo", {"text": f"after {n}"}))
    return answers


@pytest.mark.anyio
async def test_a_non_scalar_id_never_leaks_a_call_slot_and_is_answered_as_the_sdk_path_does() -> None:
    limit = 2
    async with kitchen_http("a") as backend:
        answers: dict[bool, list[tuple[int, list[Any]]]] = {}
        for lane in (True, False):
            config = config_with(f"a={backend}", fast_lane=lane, max_calls_per_principal=limit)
            async with proxy_http(config) as proxy:
                answers[lane] = await _odd_id_answers(proxy.url, limit)
                assert proxy.state.limits.calls == {}, "every slot came back"
    assert answers[True] == answers[False]


# -- Host and Origin on every route --------------------------------------------------------------------------------
METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]
GUARDED = ["/mcp", "/mcp?episode=mine", "/status", "/dashboard", "/episodes/abc", "/no/such/route"]


@pytest.mark.anyio
async def test_every_route_and_method_but_the_probes_refuses_a_foreign_host_or_origin() -> None:
    async with kitchen_http("a") as backend, proxy_http(config_with(f"a={backend}")) as proxy:
        base = proxy.url.removesuffix("/mcp")
        async with http_client(f"{proxy.url}?episode=mine", "2026-07-28") as c:
            with anyio.fail_after(60):
                assert not (await c.call_tool("echo", {"text": "x"})).is_error
        assert "key:anonymous:mine" in proxy.state.registry.episodes
        refused: dict[tuple[str, str, str], int] = {}
        async with httpx2.AsyncClient(timeout=10) as http:
            with anyio.fail_after(60):
                for method in METHODS:
                    for path in GUARDED:
                        for name, value in (("Host", "evil.example"), ("Origin", "http://evil.example")):
                            reply = await http.request(method, base + path, headers={name: value}, content=b"{}")
                            refused[(method, path, name)] = reply.status_code
                probes = [
                    (await http.get(base + p, headers={"Host": "10.1.2.3:8000"})).status_code
                    for p in ("/healthz", "/readyz")
                ]
            wrong = {k: v for k, v in refused.items() if v != (421 if k[2] == "Host" else 403)}
            assert not wrong, wrong
            assert probes == [200, 200], "orchestrators call the probes by pod address"
            assert "key:anonymous:mine" in proxy.state.registry.episodes, "a refused DELETE ended nothing"
            with anyio.fail_after(30):
                ended = await http.delete(f"{proxy.url}?episode=mine")
                assert ended.status_code == 204
                await wait_until(lambda: "key:anonymous:mine" not in proxy.state.registry.episodes, 30, "ended")


# -- sessions are bound to their principal -------------------------------------------------------------------------
@pytest.mark.anyio
async def test_another_principals_session_id_is_not_found_for_a_tool_call_the_lane_would_carry() -> None:
    tokens = {"alice": CLIENT_TOKEN, "bob": BOB_TOKEN}
    async with kitchen_http("a") as backend, proxy_http(config_with(f"a={backend}", auth={"tokens": tokens})) as proxy:
        async with httpx2.AsyncClient(timeout=30) as http:
            alice = RawSession(http, proxy.url)
            alice.headers["Authorization"] = f"Bearer {CLIENT_TOKEN}"
            with anyio.fail_after(60):
                await alice.open()
                assert "mine" in str(await alice.call("echo", {"text": "mine"}))  # provisioned: lane-eligible
                call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call"}
                call["params"] = {"name": "echo", "arguments": {"text": "stolen"}}
                stolen = await alice.post(call, Authorization=f"Bearer {BOB_TOKEN}")
                unknown = await alice.post(
                    call, Authorization=f"Bearer {BOB_TOKEN}", **{"Mcp-Session-Id": uuid.uuid4().hex}
                )
        assert stolen.status_code == unknown.status_code == 404
        assert stolen.content == unknown.content
        assert "stolen" not in stolen.text


# -- the pure rules -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("odd", ODD_IDS)
def test_only_messages_the_sdk_accepts_as_requests_reach_the_lane_as_requests(odd: Any) -> None:
    call = {"jsonrpc": "2.0", "id": odd, "method": "tools/call", "params": {"name": "echo"}}
    parsed = parse_message(json.dumps(call).encode())
    assert parsed is None or not is_request_id(parsed.get("id")), "the SDK takes it as a notification at most"
    assert parse_message(json.dumps({**call, "id": 7}).encode()) is not None
    assert parse_message(b"[" * 100_000 + b"]" * 100_000) is None
    assert parse_message(json.dumps([call]).encode()) is None  # batches are the SDK path's to refuse


def test_tool_call_params_are_held_to_the_sdk_handlers_model() -> None:
    assert tool_call_params_ok({"name": "echo", "arguments": {"text": "x"}, "_meta": {"progressToken": 1}})
    for bad in ({"name": "echo", "arguments": [1]}, {"name": 5}, {}, {"name": "echo", "_meta": 3}):
        assert not tool_call_params_ok(bad), bad
