"""The tool-call fast lane: the same answers as the SDK path, and it really carries the plain calls.

Which path carried a call is read at the backend, never from the lane's own counter: the lane posts with its
own request ids (`fmp-N`), the SDK client with integers.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as t
import pytest
from edge_helpers import Recording, Seen, kitchen_app, serve
from helpers import KITCHEN, PY, config_with, http_client, proxy_http, wait_until
from mcp import MCPError

from fleet_mcp_proxy.config import load_config

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def recorded_kitchen(name: str, **options: Any) -> AsyncIterator[tuple[str, Seen]]:
    """The kitchen backend in this process, recording every JSON-RPC message that reaches it."""
    seen = Seen()
    async with serve(Recording(kitchen_app(name), seen), **options) as base:
        yield f"{base}/mcp", seen


def lane_calls(seen: Seen) -> list[tuple[Any, Any]]:
    """(client address, id) of the tool calls the lane posted to the backend."""
    return [(client, i) for client, method, i in seen.messages if method == "tools/call" and _lane_id(i)]


def sdk_calls(seen: Seen) -> int:
    """Tool calls that took the proxy's full path (its link's own request ids, "fmp-s-N")."""
    return sum(1 for _, method, i in seen.messages if method == "tools/call" and not _lane_id(i))


def _lane_id(request_id: Any) -> bool:
    return str(request_id).startswith("fmp-") and not str(request_id).startswith("fmp-s-")


async def _sample(context: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
    return t.CreateMessageResult(role="assistant", content=t.TextContent(type="text", text="hi"), model="m")


async def _elicit(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
    return t.ElicitResult(action="accept", content={"n": "ada"})


async def _session_transcript(url: str) -> dict[str, Any]:
    """Every kind of call a plain agent makes, as the client saw it."""
    logs: list[Any] = []

    async def on_log(params: t.LoggingMessageNotificationParams) -> None:
        logs.append((params.level, params.data, params.logger))

    seen: dict[str, Any] = {}
    client = http_client(url, sampling_callback=_sample, elicitation_callback=_elicit, logging_callback=on_log)
    async with client as c:
        with anyio.fail_after(60):
            await c.list_tools()
            echo = await c.call_tool("echo", {"text": "héllo"})
            seen["echo"] = (echo.structured_content, [b.model_dump() for b in echo.content])
            seen["media"] = [b.model_dump() for b in (await c.call_tool("media", {})).content]
            fail = await c.call_tool("fail", {})
            seen["fail"] = (fail.is_error, fail.content[0].model_dump())
            with pytest.raises(MCPError) as caught:
                await c.call_tool("protocol_error", {})
            seen["protocol_error"] = (caught.value.code, caught.value.message, caught.value.error.data)
            big = await c.call_tool("big", {"size": 3 * 1024 * 1024})
            seen["big"] = len(big.content[0].text)  # type: ignore[union-attr]
            seen["ask_llm"] = (await c.call_tool("ask_llm", {})).content[0].model_dump()
            seen["ask_user"] = (await c.call_tool("ask_user", {})).content[0].model_dump()
            steps: list[float] = []

            async def progress(value: float, total: float | None, message: str | None) -> None:
                steps.append(value)

            counted = await c.call_tool("count", {"n": 3}, progress_callback=progress)
            seen["count"] = (counted.content[0].model_dump(), steps)
            await c.call_tool("chatty", {})
            await wait_until(lambda: logs, 15, "the backend's log message")
            seen["logs"] = logs
    return seen


async def test_the_lane_answers_exactly_as_the_sdk_path_and_carries_the_plain_calls() -> None:
    transcripts: dict[bool, dict[str, Any]] = {}
    carried: dict[bool, tuple[int, int]] = {}
    for on in (True, False):
        async with (
            recorded_kitchen("a") as (backend, seen),
            proxy_http(config_with(f"a={backend}", fast_lane=on)) as proxy,
        ):
            transcripts[on] = await _session_transcript(proxy.url)
            carried[on] = (len(lane_calls(seen)), sdk_calls(seen))
    assert transcripts[True] == transcripts[False]
    assert transcripts[True]["big"] == 3 * 1024 * 1024
    assert transcripts[True]["ask_llm"]["text"] == "sampled: hi"
    assert transcripts[True]["count"][1] == [1.0, 2.0, 3.0]
    # Every call but the progress-token one rides the lane; with the lane off, the SDK path carries them all.
    assert carried[True] == (8, 1), carried
    assert carried[False] == (0, 9), carried


async def test_a_call_cancelled_by_the_client_is_cancelled_at_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = tmp_path / "events"
    monkeypatch.setenv("KITCHEN_EVENTS", str(events))  # the in-process kitchen backend's event file
    async with (
        recorded_kitchen("a") as (backend, seen),
        proxy_http(config_with(f"a={backend}")) as proxy,
        http_client(proxy.url) as c,
    ):
        with anyio.fail_after(30):
            await c.list_tools()
            with anyio.move_on_after(1):  # the client gives up: the SDK sends notifications/cancelled
                await c.call_tool("block", {})
            await wait_until(lambda: events.exists() and "block cancelled" in events.read_text(), 15, "cancel")
            assert (await c.call_tool("echo", {"text": "after"})).structured_content == {
                "text": "after",
                "backend": "a",
            }
        assert len(lane_calls(seen)) == 2 and sdk_calls(seen) == 0, seen.messages


async def test_a_hung_http_call_ends_at_its_timeout_on_the_lane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = tmp_path / "events"
    monkeypatch.setenv("KITCHEN_EVENTS", str(events))
    async with recorded_kitchen("a") as (backend, seen):
        toml = tmp_path / "proxy.toml"
        toml.write_text(f'[env.a]\nurl = "{backend}"\ncall_timeout = 1\n', encoding="utf-8")
        async with proxy_http(load_config(toml)) as proxy, http_client(proxy.url) as c:
            with anyio.fail_after(30):
                await c.list_tools()
                result = await c.call_tool("block", {})
            assert result.is_error
            assert "'block' did not finish within 1 s" in result.content[0].text  # type: ignore[union-attr]
            await wait_until(lambda: "block cancelled" in events.read_text(), 15, "the backend sees the cancel")
        assert len(lane_calls(seen)) == 1, seen.messages


@contextlib.contextmanager
def descriptors_past_1024() -> Iterator[None]:
    """Occupy every descriptor below 1100, so sockets opened from now on get numbers `select` cannot take."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard descriptor limit ({hard}) leaves no room past 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048) if hard == resource.RLIM_INFINITY else hard, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        probe = os.open(os.devnull, os.O_RDONLY)
        os.close(probe)
        assert probe > 1023, probe
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_the_lane_reuses_and_retires_pooled_connections_past_descriptor_1023() -> None:
    with descriptors_past_1024():
        # The backend drops a kept-alive connection after 1 s idle: the lane must notice before reusing it.
        async with (
            recorded_kitchen("a", timeout_keep_alive=1) as (backend, seen),
            proxy_http(config_with(f"a={backend}")) as proxy,
            http_client(proxy.url) as c,
        ):
            with anyio.fail_after(60):
                await c.list_tools()
                texts = [(await c.call_tool("echo", {"text": f"kept {n}"})).structured_content for n in range(3)]
                await anyio.sleep(2)  # time is the subject: the backend closes the idle connection
                texts.append((await c.call_tool("echo", {"text": "after close"})).structured_content)
    assert texts == [{"text": t, "backend": "a"} for t in ("kept 0", "kept 1", "kept 2", "after close")]
    carried = lane_calls(seen)
    assert len(carried) == 4, seen.messages
    clients = [client for client, _ in carried]
    assert clients[0] == clients[1] == clients[2], "the pooled connection was checked alive and reused"
    assert clients[3] != clients[2], "the connection the backend closed was retired, not reused"


async def test_stdio_backends_stay_on_the_sdk_path() -> None:
    async with proxy_http(config_with(f"a={PY} {KITCHEN} a")) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(30):
            echo = await c.call_tool("echo", {"text": "x"})
        assert echo.structured_content == {"text": "x", "backend": "a"}
        assert proxy.holder.lane.served == 0


async def test_status_counts_the_calls_the_lane_carried() -> None:
    async with (
        recorded_kitchen("a") as (backend, seen),
        proxy_http(config_with(f"a={backend}")) as proxy,
        http_client(proxy.url) as c,
        httpx.AsyncClient(timeout=10) as http,
    ):
        with anyio.fail_after(30):
            await c.list_tools()
            for text in ("one", "two", "three"):
                await c.call_tool("echo", {"text": text})
            await c.call_tool("count", {"n": 2}, progress_callback=_progress)  # a progress token: the SDK path
            status = (await http.get(proxy.url.removesuffix("/mcp") + "/status")).json()
    assert status["lane_served"] == len(lane_calls(seen)) == 3, seen.messages
    assert sdk_calls(seen) == 1, seen.messages


async def _progress(progress: float, total: float | None, message: str | None) -> None:
    return None
