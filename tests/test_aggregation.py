"""Several environments behind one endpoint: renames only on collision, routing back, the demo default."""

from __future__ import annotations

import uuid

import anyio
import mcp_types as t
import pytest
from helpers import config_with, http_client, kitchen_cmd, proxy_http

from fleet_mcp_proxy.config import load_config


async def _names(items: list[t.Tool] | list[t.Prompt]) -> list[str]:
    return [item.name for item in items]


@pytest.mark.anyio
async def test_two_environments_rename_only_colliding_names_and_route_back() -> None:
    config = config_with(f"a={kitchen_cmd('a')}", f"b={kitchen_cmd('b')}")
    async with proxy_http(config) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(60):
            tools = await _names((await c.list_tools()).tools)
            assert "only_a" in tools and "only_b" in tools
            assert {"a__echo", "b__echo"} <= set(tools) and "echo" not in tools
            a = await c.call_tool("a__echo", {"text": "1"})
            b = await c.call_tool("b__echo", {"text": "2"})
            assert a.structured_content == {"text": "1", "backend": "a"}
            assert b.structured_content == {"text": "2", "backend": "b"}

            prompts = await _names((await c.list_prompts()).prompts)
            assert {"a__greet", "b__greet", "a_prompt", "b_prompt"} <= set(prompts)
            got = await c.get_prompt("b__greet", {"who": "zoe"})
            assert got.messages[0].content.text == "b greets zoe"  # type: ignore[union-attr]
            done = await c.complete(
                t.PromptReference(type="ref/prompt", name="a__greet"), {"name": "who", "value": "b"}
            )
            assert done.completion.values == ["bob"]

            uris = {str(r.uri) for r in (await c.list_resources()).resources}
            assert {"mem://a/info", "mem://b/info", "a+mem://shared", "b+mem://shared"} <= uris
            assert "mem://shared" not in uris
            shared_b = await c.read_resource("b+mem://shared")
            assert shared_b.contents[0].text == "b:mem://shared"  # type: ignore[union-attr]
            assert str(shared_b.contents[0].uri) == "b+mem://shared"
            item = await c.read_resource("mem://a/items/42")
            assert item.contents[0].text == "a:mem://a/items/42"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_resource_updates_arrive_under_the_exposed_uri() -> None:
    updates: list[str] = []
    seen = anyio.Event()

    async def on_message(msg: object) -> None:
        if isinstance(msg, t.ResourceUpdatedNotification):
            updates.append(str(msg.params.uri))
            seen.set()

    config = config_with(f"a={kitchen_cmd('a')}", f"b={kitchen_cmd('b')}")
    async with proxy_http(config) as proxy, http_client(proxy.url, message_handler=on_message) as c:
        with anyio.fail_after(60):
            await c.subscribe_resource("b+mem://shared")
            await c.call_tool("b__touch", {"uri": "mem://shared"})
            await seen.wait()
    assert updates == ["b+mem://shared"]


@pytest.mark.anyio
async def test_modality_tool_use_hides_computer_and_computer_use_shows_only_it(tmp_path: object) -> None:
    for modality, expected in (("tool_use", False), ("computer_use", True)):
        config = load_config(overrides={"modality": modality}, env_args=(f"a={kitchen_cmd('a')}",))
        async with proxy_http(config) as proxy, http_client(proxy.url) as c:
            with anyio.fail_after(60):
                names = await _names((await c.list_tools()).tools)
        # The kitchen has no `computer` tool: tool_use keeps everything, computer_use shows nothing.
        assert (names == []) is expected
        assert ("echo" in names) is not expected


@pytest.mark.anyio
async def test_concurrent_first_requests_share_one_provisioning() -> None:
    async with proxy_http(config_with(f"a={kitchen_cmd('a')}")) as proxy:
        url = f"{proxy.url}?episode=flight-{uuid.uuid4().hex}"
        pids: list[int] = []

        async def first_call() -> None:
            async with http_client(url, "2026-07-28") as c:
                result = await c.call_tool("pid", {})
                assert result.structured_content is not None
                pids.append(result.structured_content["pid"])

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(first_call)
        assert len(pids) == 5 and len(set(pids)) == 1, pids
        assert len(proxy.state.registry.episodes) == 1


@pytest.mark.anyio
async def test_default_episode_lets_keyless_2026_clients_share_one_episode_per_principal() -> None:
    config = load_config(overrides={"default_episode": True}, env_args=(f"a={kitchen_cmd('a')}",))
    async with proxy_http(config) as proxy:
        pids = []
        for _ in range(2):
            async with http_client(proxy.url, "2026-07-28") as c:
                with anyio.fail_after(60):
                    result = await c.call_tool("pid", {})
            assert result.structured_content is not None
            pids.append(result.structured_content["pid"])
        assert pids[0] == pids[1]
        assert list(proxy.state.registry.episodes) == ["default:anonymous"]


@pytest.mark.anyio
async def test_default_run_serves_the_demo_tracker_with_a_database_per_episode() -> None:
    async with proxy_http(load_config()) as proxy:
        async with http_client(proxy.url) as one, http_client(proxy.url) as two:
            with anyio.fail_after(90):
                tools = await _names((await one.list_tools()).tools)
                assert len(tools) >= 8 and "create_issue" in tools
                made = await one.call_tool(
                    "create_issue", {"project": "WEB", "title": "only in one", "reporter": "alice"}
                )
                assert not made.is_error, made
                found_one = await one.call_tool("search_issues", {"query": "only in one"})
                found_two = await two.call_tool("search_issues", {"query": "only in one"})
        assert found_one.structured_content and found_one.structured_content["total"] == 1
        assert found_two.structured_content and found_two.structured_content["total"] == 0
