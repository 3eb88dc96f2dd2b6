"""Differential fuzzing of the fast lane (issue 13): the same JSON-RPC traffic through two proxies in front of one
backend, one with the lane on and one with it off, must get equivalent answers; after every run the call-limit
counters, the event loop's tasks and the process's file descriptors are back at their baseline.

Hypothesis writes the traffic: valid and invalid ids, methods and params, batches, huge and truncated bodies,
and cancels interleaved with calls in flight. Everything runs in one event loop behind a blocking portal, so
hypothesis drives plain synchronous examples; the example budget is fixed and derandomized for CI.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest
from edge_helpers import INITIALIZE, MCP_HEADERS, Recording, Seen, jsonrpc_messages, kitchen_app, serve
from helpers import RunningProxy, config_with, proxy_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

LEGACY = "2025-11-25"
SETTLE = 15.0  # seconds for counters, tasks and descriptors to come back after a run (they take milliseconds)


@dataclass
class Side:
    """One proxy and a provisioned handshake-era session on it."""

    proxy: RunningProxy
    headers: dict[str, str]


@dataclass(repr=False)  # hypothesis prints the fixture with each failing example: keep it short
class Rig:
    portal: anyio.from_thread.BlockingPortal
    http: httpx.Client
    sides: dict[bool, Side]  # fast lane on / off
    seen: Seen

    def post(self, lane: bool, body: bytes) -> httpx.Response:
        return self.http.post(self.sides[lane].proxy.url, content=body, headers=self.sides[lane].headers)

    def calls_in_flight(self) -> list[dict[str, int]]:
        return [dict(side.proxy.state.limits.calls) for side in self.sides.values()]

    def tasks(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks())

        return self.portal.call(count)


def _open_session(http: httpx.Client, url: str) -> dict[str, str]:
    headers = {**MCP_HEADERS, "MCP-Protocol-Version": LEGACY}
    reply = http.post(url, json=INITIALIZE, headers=headers)
    assert reply.status_code == 200, reply.text
    headers["Mcp-Session-Id"] = reply.headers["mcp-session-id"]
    assert (
        http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers).status_code
        == 202
    )
    call = {"jsonrpc": "2.0", "id": 0, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "up"}}}
    assert http.post(url, json=call, headers=headers).status_code == 200  # provisions: the lane can take over
    return headers


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    seen = Seen()
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        httpx.Client(timeout=httpx.Timeout(60.0)) as http,
        portal.wrap_async_context_manager(serve(Recording(kitchen_app("a"), seen))) as backend,
        portal.wrap_async_context_manager(proxy_http(config_with(f"a={backend}/mcp", fast_lane=True))) as on,
        portal.wrap_async_context_manager(proxy_http(config_with(f"a={backend}/mcp", fast_lane=False))) as off,
    ):
        sides = {lane: Side(proxy, _open_session(http, proxy.url)) for lane, proxy in ((True, on), (False, off))}
        rig = Rig(portal, http, sides, seen)
        _run(rig, [Cancel(True, 9), Send(b"{}")])  # warm both paths' connection pools before the baseline
        yield rig
        carried = sum(1 for _, m, i in seen.messages if m == "tools/call" and str(i).startswith("fmp-"))
        print(f"\nDIFFERENTIAL: the lane carried {carried} of the fuzzed tool calls to the backend")
        assert carried > 0, "the lane carried none of the fuzzed calls: the comparison proved nothing"


# -- the traffic ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    body: bytes


@dataclass(frozen=True)
class Cancel:
    """A blocking call, then a cancel for it (or for `other`, then for it)."""

    known: bool
    request_id: Any


json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
ids = st.integers(-(2**63), 2**63) | st.text(max_size=8) | json_values
tool_names = st.sampled_from(
    ["echo", "add", "fail", "protocol_error", "media", "count", "nope", "", "submit_final_answer"]
)
arguments = st.fixed_dictionaries(
    {}, optional={"text": json_values, "a": json_values, "b": json_values, "n": st.integers(0, 2)}
)
call_params = st.fixed_dictionaries(
    {"name": tool_names | json_values},
    optional={
        "arguments": arguments | json_values,
        "_meta": st.none() | st.fixed_dictionaries({"progressToken": st.integers(0, 9)}) | json_values,
    },
)
messages = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | json_values},
    optional={
        "id": ids,
        "method": st.sampled_from(["tools/call", "notifications/cancelled", "tools/list", "ping", "nope/nope"])
        | json_values,
        "params": call_params | st.fixed_dictionaries({"requestId": ids}) | json_values,
        "result": json_values,
    },
)
calls = st.builds(lambda i, p: {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": p}, ids, call_params)


def _encode(message: Any) -> bytes:
    return json.dumps(message).encode()


bodies = st.one_of(
    calls.map(_encode),
    messages.map(_encode),
    st.lists(calls | messages, min_size=1, max_size=3).map(_encode),  # batches
    calls.map(_encode).flatmap(lambda b: st.integers(1, max(1, len(b) - 1)).map(lambda n: b[:n])),  # truncated
    st.integers(900_000, 1_200_000).map(  # around max_request_body (1 MiB)
        lambda n: _encode(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "x" * n}},
            }
        )
    ),
    st.binary(max_size=64),
)
steps = st.lists(
    st.one_of(
        bodies.map(Send),
        st.builds(Cancel, st.booleans(), st.integers(1000, 2000) | st.text(min_size=1, max_size=6)),
    ),
    min_size=1,
    max_size=4,
)


# -- running and comparing ------------------------------------------------------------------------------------------
def _answer(reply: httpx.Response) -> tuple[int, Any]:
    """What a client can rely on: the status, and the JSON-RPC answers (not the framing: JSON or SSE)."""
    if reply.status_code >= 400:
        return reply.status_code, reply.text
    found = jsonrpc_messages(reply.headers.get("content-type", ""), reply.text)
    return reply.status_code, [m for m in found if isinstance(m, dict) and ("result" in m or "error" in m)]


def _cancelled(rig: Rig, lane: bool, step: Cancel) -> list[tuple[int, Any]]:
    """A `block` call in flight, cancelled by the client; every answer on the way."""
    request_id = step.request_id
    call = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": "block", "arguments": {}}}
    replies: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: replies.append(rig.post(lane, _encode(call))))
    worker.start()
    side = rig.sides[lane]
    with anyio.from_thread.start_blocking_portal() as clock:  # a bounded wait for the call to be in flight
        clock.call(_until, lambda: side.proxy.state.limits.calls.get("anonymous") == 1)
    answers = []
    target = request_id if step.known else f"other-{request_id}"
    for cancel_id in dict.fromkeys([target, request_id]):
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": cancel_id}}
        answers.append(_answer(rig.post(lane, _encode(note))))
    worker.join(SETTLE)
    assert not worker.is_alive(), "a cancelled call never ended"
    answers.append(_answer(replies[0]))
    return answers


async def _until(predicate: Any) -> None:
    with anyio.fail_after(SETTLE):
        while not predicate():
            await anyio.sleep(0.01)


def _run(rig: Rig, run: list[Send | Cancel]) -> dict[bool, list[Any]]:
    answers: dict[bool, list[Any]] = {True: [], False: []}
    for step in run:
        for lane in (True, False):
            if isinstance(step, Send):
                answers[lane].append(_answer(rig.post(lane, step.body)))
            else:
                answers[lane].append(_cancelled(rig, lane, step))
    return answers


BASELINE: dict[str, int] = {}


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(run=steps)
def test_the_lane_and_the_sdk_path_answer_alike_and_leave_nothing_behind(rig: Rig, run: list[Send | Cancel]) -> None:
    if not BASELINE:
        BASELINE.update(tasks=rig.tasks(), fds=_descriptors())
    answers = _run(rig, run)
    assert answers[True] == answers[False]

    def settled() -> bool:
        return rig.calls_in_flight() == [{}, {}] and _descriptors() <= BASELINE["fds"]

    rig.portal.call(_until, settled)
    rig.portal.call(_until, lambda: len(asyncio.all_tasks()) <= BASELINE["tasks"])
