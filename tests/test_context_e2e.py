"""Large outputs and the context tools, through the proxy with a real MCP client."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from helpers import config_with, http_client, kitchen_cmd, proxy_http

from fleet_mcp_proxy.config import load_config


def _text(result: Any) -> str:
    return "".join(item.text for item in result.content if getattr(item, "type", "") == "text")


def _context_config(**context: Any) -> Any:
    return load_config(overrides={"context": {"enabled": "always", **context}}, env_args=(f"a={kitchen_cmd('a')}",))


def _keyed(url: str) -> str:
    return f"{url}?episode=ctx-{uuid.uuid4().hex}"


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_a_10_mib_output_is_cut_to_the_budget_and_readable_in_full() -> None:
    size = 10 * 1024 * 1024
    async with proxy_http(_context_config()) as proxy, http_client(_keyed(proxy.url), "2026-07-28") as c:
        with anyio.fail_after(120):
            names = {tool.name for tool in (await c.list_tools()).tools}
            assert {"view_tool_output", "search_tool_output", "search_history"} <= names
            assert "check_context" not in names and "manage_context" not in names
            cut = await c.call_tool("big", {"size": size})
            text = _text(cut)
            assert text.startswith("x" * 16_000) and "out-1" in text and len(text) < 17_000
            full = await c.read_resource("fleet://outputs/out-1")
            assert full.contents[0].text == "x" * size  # type: ignore[union-attr]
            last = await c.call_tool("view_tool_output", {"output_id": "out-1", "page": 209, "page_size": 50_000})
            assert not last.is_error, _text(last)
            past = await c.call_tool("view_tool_output", {"page": 10_000, "page_size": 50_000})
            assert past.is_error and "does not exist" in _text(past)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_search_history_bad_regex_images_and_small_outputs() -> None:
    needle = "héllo ✓ 日本 " * 2_000 + "NEEDLE-42"
    async with proxy_http(_context_config()) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(60):
            await c.list_tools()
            small = await c.call_tool("echo", {"text": "short"})
            assert _text(small) == "short", "outputs within the budget pass unchanged"
            media = await c.call_tool("media", {})
            assert [item.type for item in media.content] == ["text", "image", "audio", "resource", "resource_link"]
            await c.call_tool("echo", {"text": needle})
            found = await c.call_tool("search_tool_output", {"pattern": "needle-42"})
            assert not found.is_error and "NEEDLE-42" in _text(found)
            bad = await c.call_tool("search_tool_output", {"pattern": "([", "regex": True})
            assert bad.is_error and "regex" in _text(bad).lower()
            history = await c.call_tool("search_history", {"pattern": "media"})
            assert not history.is_error and "media" in _text(history)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_output_ids_of_another_episode_are_unknown() -> None:
    async with (
        proxy_http(_context_config(budget_chars=100)) as proxy,
        http_client(proxy.url) as one,
        http_client(proxy.url) as two,
    ):
        with anyio.fail_after(60):
            await one.list_tools()
            await two.list_tools()
            await one.call_tool("echo", {"text": "secret " * 100})
            mine = await one.call_tool("view_tool_output", {"output_id": "out-1"})
            assert not mine.is_error and "secret" in _text(mine)
            theirs = await two.call_tool("view_tool_output", {"output_id": "out-1"})
            assert theirs.is_error and "secret" not in _text(theirs)
            never = await two.call_tool("view_tool_output", {"output_id": "out-999"})
            assert _text(theirs).replace("out-1", "ID") == _text(never).replace("out-999", "ID")


@pytest.mark.anyio
async def test_a_plain_episode_has_no_context_tools_and_no_truncation() -> None:
    async with proxy_http(config_with(f"a={kitchen_cmd('a')}")) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(60):
            names = {tool.name for tool in (await c.list_tools()).tools}
            assert not names & {"view_tool_output", "search_tool_output", "search_history"}
            big = await c.call_tool("big", {"size": 100_000})
            assert _text(big) == "x" * 100_000


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_concurrent_large_outputs_fill_the_store_and_evict_the_oldest() -> None:
    async with proxy_http(_context_config(budget_chars=1_000, max_outputs=5)) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(60):
            await c.list_tools()
            notices: list[str] = []

            async def one(size: int) -> None:
                notices.append(_text(await c.call_tool("big", {"size": size})))

            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(one, 5_000 + n)
            ids = sorted({word.strip('".,()') for text in notices for word in text.split() if word.startswith("out-")})
            assert len(notices) == 20 and len(ids) == 20, "every truncated output got its own id"
            kept = [i for i in ids if not (await c.call_tool("view_tool_output", {"output_id": i})).is_error]
            assert len(kept) == 5, kept
            assert sorted(kept, key=lambda i: int(i.split("-")[1])) == [f"out-{n}" for n in range(16, 21)]


@pytest.mark.anyio
@pytest.mark.timeout(300)  # the old `re` engine held the event loop for about 80 s here; the bound below is 10 s
async def test_a_backtracking_regex_neither_stalls_its_episode_nor_any_other() -> None:
    async with (
        proxy_http(_context_config(budget_chars=100)) as proxy,
        http_client(proxy.url) as agent,
        http_client(proxy.url) as other,
    ):
        with anyio.fail_after(60):
            await agent.list_tools()
            await other.list_tools()
            await agent.call_tool("echo", {"text": "a" * 500})  # one 500-character line, stored as out-1
        results: dict[str, Any] = {}

        async def search() -> None:
            results["search"] = await agent.call_tool("search_tool_output", {"pattern": r"\w*\w*\w*z", "regex": True})

        async def serve_other() -> None:
            results["other"] = await other.call_tool("echo", {"text": "still served"})

        # RE2 answers in milliseconds; Python's re backtracked for about 80 s with the whole proxy stalled.
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(search)
                tg.start_soon(serve_other)
        assert not results["search"].is_error and _text(results["search"]).startswith("No matches for")
        assert _text(results["other"]) == "still served"
