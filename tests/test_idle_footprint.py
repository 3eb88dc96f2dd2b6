"""What an idle episode keeps open: connections to its environment, and its own copies of the catalogs.

Episodes of one HTTP environment share the proxy's connection pools (`connpool.py`): an idle episode holds its
link's GET stream and nothing else, where each link used to keep two more keep-alive connections of its own (its
SDK client's and its fast-lane pool's), doubling the sockets and buffers on both sides. Catalogs are shared
through `catalog_memo.py`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio
import pytest
from helpers import config_with, http_client, kitchen_http, proxy_http

from fleet_mcp_proxy import catalog_memo
from fleet_mcp_proxy.catalog import build_tool_catalog

EPISODES = 8


def _established_to(port: int) -> int:
    """Sockets of this process's host connected to `port` on loopback (ESTABLISHED), from /proc/net/tcp."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01":
                    count += 1
    return count


@pytest.mark.anyio
async def test_idle_episodes_of_one_environment_share_its_connections() -> None:
    async with kitchen_http("a") as backend, proxy_http(config_with(f"a={backend}")) as proxy:
        port = int(backend.split(":")[2].split("/")[0])
        before = _established_to(port)
        async with contextlib.AsyncExitStack() as held:
            for n in range(EPISODES):
                client = await held.enter_async_context(http_client(proxy.url))
                with anyio.fail_after(30):
                    await client.list_tools()
                    for text in (f"first {n}", f"lane {n}"):  # the first opens the link; the next takes the lane
                        result = await client.call_tool("echo", {"text": text})
                        assert not result.is_error
            links = _established_to(port) - before
            # One GET stream per episode, plus the few pooled connections all episodes share.
            assert EPISODES <= links <= EPISODES + 4, links


def test_equal_lists_and_catalogs_are_one_object() -> None:
    first = [{"name": "echo", "inputSchema": {"type": "object"}}]
    second = [{"inputSchema": {"type": "object"}, "name": "echo"}]  # same content, other key order
    assert catalog_memo.shared_list(first) is catalog_memo.shared_list(second) is first
    synthetic = [{"name": "submit_final_answer", "inputSchema": {"type": "object"}}]
    one = catalog_memo.tool_catalog({"a": first, "b": [{"name": "echo"}]}, synthetic)
    other = catalog_memo.tool_catalog({"b": [{"name": "echo"}], "a": second}, synthetic)
    assert one is other
    assert one == build_tool_catalog({"a": first, "b": [{"name": "echo"}]}, synthetic)  # the same renames
    assert catalog_memo.tool_catalog({"a": first}, synthetic) is not one


def test_a_changed_list_is_a_new_catalog_and_the_tables_stay_bounded() -> None:
    base = catalog_memo.tool_catalog({"a": [{"name": "x"}]})
    changed = catalog_memo.tool_catalog({"a": [{"name": "x", "description": "new"}]})
    assert changed is not base and changed.tools[0]["description"] == "new"
    for n in range(catalog_memo._MAX_CATALOGS + 10):
        catalog_memo.prompt_catalog({"a": [{"name": f"p{n}"}]})
    assert len(catalog_memo._CATALOGS) == catalog_memo._MAX_CATALOGS
