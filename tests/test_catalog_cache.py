"""The catalog cache: `tools/list` from disk before anything is provisioned, corrected when the live list differs."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import mcp_types as t
import pytest
from helpers import config_with, http_client, kitchen_cmd, kitchen_http, proxy_http, wait_until

pytestmark = pytest.mark.anyio


async def test_a_warm_cache_lists_tools_without_an_instance_and_a_dead_environment_fails_only_the_call(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "catalog"
    async with kitchen_http("a") as backend:
        async with (
            proxy_http(config_with(f"a={backend}", catalog_cache_dir=str(cache))) as proxy,
            http_client(proxy.url) as c,
        ):
            with anyio.fail_after(30):
                live = [tool.name for tool in (await c.list_tools()).tools]
        (entry,) = cache.glob("*.json")
        assert backend not in entry.read_text(encoding="utf-8"), "specs are hashed, never written down"
    # The backend is gone now: the list still comes from the cache; only a call needs the environment.
    async with proxy_http(config_with(f"a={backend}", catalog_cache_dir=str(cache))) as proxy:
        async with http_client(proxy.url) as c:
            with anyio.fail_after(60):
                assert [tool.name for tool in (await c.list_tools()).tools] == live
                result = await c.call_tool("echo", {"text": "x"})
        assert result.is_error
        assert "could not be started" in result.content[0].text  # type: ignore[union-attr]


async def test_a_stale_entry_is_replaced_and_clients_are_told_to_relist(tmp_path: Path) -> None:
    cache = tmp_path / "catalog"
    # provision_on_list: provisioning starts behind the cached answer (by default it waits for a tool call).
    config = config_with(f"a={kitchen_cmd('a')}", catalog_cache_dir=str(cache), provision_on_list=True)
    async with proxy_http(config) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(30):
            live = [tool.name for tool in (await c.list_tools()).tools]
    (entry,) = cache.glob("*.json")
    stale = json.loads(entry.read_text(encoding="utf-8"))
    stale["tools"] = [tool for tool in stale["tools"] if tool["name"] != "echo"]
    entry.write_text(json.dumps(stale), encoding="utf-8")

    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, t.ToolListChangedNotification):
            changed.set()

    async with proxy_http(config) as proxy, http_client(proxy.url, message_handler=on_message) as c:
        with anyio.fail_after(60):
            first = [tool.name for tool in (await c.list_tools()).tools]
            assert "echo" not in first  # served from the (stale) cache
            await changed.wait()  # provisioning found the live list differs
            assert [tool.name for tool in (await c.list_tools()).tools] == live
    await wait_until(lambda: "echo" in entry.read_text(encoding="utf-8"), 5, "the entry is rewritten")


async def test_with_the_cache_off_tools_list_provisions_first(tmp_path: Path) -> None:
    cache = tmp_path / "catalog"
    config = config_with(f"a={kitchen_cmd('a')}", catalog_cache=False, catalog_cache_dir=str(cache))
    async with proxy_http(config) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(30):
            assert "echo" in [tool.name for tool in (await c.list_tools()).tools]
    assert not cache.exists()
