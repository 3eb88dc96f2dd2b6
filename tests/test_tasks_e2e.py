"""Tasks end to end through the proxy: bind a demo task, solve it (or not) with a real MCP client, and read
the reward the proxy computed from its `fleet://` resources and its durable episode record."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as t
import pytest
from helpers import http_client, proxy_http
from mcp import Client
from test_tasks import DEMO, SOLUTIONS, nothing

from fleet_mcp_proxy.config import load_config
from fleet_mcp_proxy.tasks import wants_submit_tool

REWARD = "fleet://episode/current/reward"


class Watch:
    """Counts `resources/updated` for the reward, per client."""

    def __init__(self) -> None:
        self.updated = anyio.Event()
        self.count = 0

    async def __call__(self, message: object) -> None:
        if isinstance(message, t.ResourceUpdatedNotification) and str(message.params.uri) == REWARD:
            self.count += 1
            self.updated.set()


async def read_json(client: Client, uri: str) -> dict[str, Any]:
    result = await client.read_resource(uri)
    return dict(json.loads(result.contents[0].text))  # type: ignore[union-attr]


@asynccontextmanager
async def task_client(url: str, key: str, watch: Watch) -> AsyncIterator[Client]:
    async with http_client(f"{url}?task={key}", message_handler=watch) as client:
        await client.list_tools()  # results are validated against the listed output schemas
        await client.subscribe_resource(REWARD)
        yield client


async def recorded_reward(proxy: Any, episode_id: str) -> dict[str, Any]:
    store = proxy.state.recorder.store

    async def ready() -> dict[str, Any] | None:
        record = await store.get(episode_id)
        return record.reward if record is not None and record.state == "closed" else None

    with anyio.fail_after(60):
        while (reward := await ready()) is None:
            await anyio.sleep(0.05)  # the record is written by the proxy's background writer
    return reward


def _config(tmp_path: Path) -> Any:
    return load_config(overrides={"store_path": str(tmp_path / "episodes.sqlite3")})


@pytest.mark.anyio
@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario", ["correct", "wrong"])
@pytest.mark.parametrize("key", sorted(DEMO))
async def test_demo_task_is_scored_through_the_proxy(tmp_path: Path, key: str, scenario: str) -> None:
    task = DEMO[key]
    solve = SOLUTIONS[key][0] if scenario == "correct" else nothing
    expected = 1.0 if scenario == "correct" else 0.0
    watch = Watch()
    async with proxy_http(_config(tmp_path)) as proxy:
        with anyio.fail_after(120):
            async with task_client(proxy.url, key, watch) as client:
                (episode,) = proxy.state.registry.episodes.values()
                assert (await read_json(client, REWARD))["status"] == "pending"
                answer = await solve(client)
                if wants_submit_tool(task):
                    await client.call_tool("submit_final_answer", {"answer": answer or "no idea"})
                    await watch.updated.wait()
                    reward = await read_json(client, REWARD)
                    assert reward["trigger"] == "submit"
                    again = await client.call_tool("submit_final_answer", {"answer": "x"})
                    assert again.is_error
                    after = await client.call_tool("list_projects", {})
                    assert after.is_error and "finished" in after.content[0].text  # type: ignore[union-attr]
            if not wants_submit_tool(task):  # database tasks are graded when the episode ends
                reward = await recorded_reward(proxy, episode.id)
                assert reward["trigger"] == "close"
    assert reward["reward"] == expected, reward
    assert reward["status"] == "final" and reward["failure_reason"] is None


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_an_episode_abandoned_before_submitting_is_verified_at_close(tmp_path: Path) -> None:
    key = "tracker-count-open-bugs"
    async with proxy_http(_config(tmp_path)) as proxy:
        with anyio.fail_after(120):
            async with task_client(proxy.url, key, Watch()) as client:
                (episode,) = proxy.state.registry.episodes.values()
                await client.call_tool("list_issues", {"label": "bug"})
            reward = await recorded_reward(proxy, episode.id)
    assert reward["trigger"] == "close" and reward["reward"] == 0.0 and reward["status"] == "final"


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_two_episodes_cannot_read_or_hear_each_others_reward(tmp_path: Path) -> None:
    key = "tracker-jpy-reporter"
    watch_a, watch_b = Watch(), Watch()
    async with proxy_http(_config(tmp_path)) as proxy:
        with anyio.fail_after(120):
            async with task_client(proxy.url, key, watch_a) as a, task_client(proxy.url, key, watch_b) as b:
                await a.call_tool("submit_final_answer", {"answer": await SOLUTIONS[key][0](a)})
                await watch_a.updated.wait()
                assert (await read_json(a, REWARD))["reward"] == 1.0
                assert (await read_json(b, REWARD))["status"] == "pending"
                assert (await read_json(b, "fleet://episode/current/submission"))["answer"] is None
                await b.call_tool("submit_final_answer", {"answer": "carol"})
                await watch_b.updated.wait()
                assert (await read_json(b, REWARD))["reward"] == 0.0
                assert (await read_json(a, REWARD))["reward"] == 1.0
    assert watch_a.count == 1 and watch_b.count == 1


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_a_2026_client_hears_its_reward_on_a_listen_stream(tmp_path: Path) -> None:
    key = "tracker-jpy-reporter"
    async with proxy_http(_config(tmp_path)) as proxy:
        url = f"{proxy.url}?task={key}&episode=listen-1"
        with anyio.fail_after(120):
            async with http_client(url, "2026-07-28") as client:
                await client.list_tools()
                async with client.listen(resource_subscriptions=[REWARD]) as events:
                    answer = await SOLUTIONS[key][0](client)
                    await client.call_tool("submit_final_answer", {"answer": answer or ""})
                    async for event in events:
                        if getattr(event, "uri", None) == REWARD:
                            break
                assert (await read_json(client, REWARD))["reward"] == 1.0


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_records_survive_a_restart_and_export_round_trips(tmp_path: Path) -> None:
    config = _config(tmp_path)
    key = "tracker-close-duplicate"
    async with proxy_http(config) as proxy:
        with anyio.fail_after(120):
            async with task_client(proxy.url, key, Watch()) as client:
                (episode,) = proxy.state.registry.episodes.values()
                await SOLUTIONS[key][0](client)
            await recorded_reward(proxy, episode.id)
    async with proxy_http(config) as restarted, httpx2.AsyncClient() as http:
        base = restarted.url.removesuffix("/mcp")
        record = (await http.get(f"{base}/episodes/{episode.id}")).json()
        assert (await http.get(f"{base}/episodes/0000000000000000")).status_code == 404
    assert record["task_key"] == key and record["reward"]["reward"] == 1.0
    assert [c["tool"] for c in record["calls"]] == ["close_issue"]
    exported = subprocess.run(
        [sys.executable, "-m", "fleet_mcp_proxy", "episodes", "export", "--db", str(tmp_path / "episodes.sqlite3")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line for line in lines if line["episode_id"] == episode.id] == [record]


def test_a_bad_task_file_stops_startup_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"key": "a", "prompt": "p", "env_key": "tracker"}\n{"key": "a"\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "fleet_mcp_proxy", "serve", "--tasks", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and str(bad) in result.stderr and "line 2" in result.stderr
    assert "Traceback" not in result.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "fleet_mcp_proxy", "serve", "--stdio", "--task", "no-such-task"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "no-such-task" in unknown.stderr


async def _stored(db: Path, task_key: str) -> dict[str, Any]:
    """The one recorded episode of `task_key` in `db`, once its end is complete (bounded)."""
    from fleet_mcp_proxy.store import open_store

    with anyio.fail_after(60):
        while True:
            if await anyio.Path(db).exists():
                async with await open_store(db) as store:
                    for summary in await store.list(task_key=task_key):
                        record = await store.get(summary.episode_id)
                        if record is not None and record.state == "closed":
                            return record.to_json()
            await anyio.sleep(0.1)  # another process writes it


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_stdio_eof_verifies_the_bound_task_and_the_prompt_is_the_instructions(tmp_path: Path) -> None:
    from helpers import ROOT, stdio_proxy_params

    key = "tracker-close-duplicate"
    env = {"PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(tmp_path)}
    with anyio.fail_after(120):
        async with Client(stdio_proxy_params([], "--task", key, env=env), mode="legacy") as client:
            assert client.session.instructions == DEMO[key].prompt
            prompt = await client.get_prompt("fleet_task")
            assert prompt.messages[0].content.text == DEMO[key].prompt  # type: ignore[union-attr]
            await client.list_tools()
            await SOLUTIONS[key][0](client)
        record = await _stored(tmp_path / "fleet-mcp-proxy" / "episodes.sqlite3", key)
    assert record["reward"]["reward"] == 1.0 and record["reward"]["trigger"] == "close"
    assert record["end_reason"] == "proxy shutdown"


@pytest.mark.anyio
@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["shutdown", "idle"])
async def test_shutdown_and_idle_timeout_verify_the_bound_task(tmp_path: Path, how: str) -> None:
    key = "tracker-comment-certificate"
    db = tmp_path / "episodes.sqlite3"
    overrides: dict[str, Any] = {"store_path": str(db)}
    if how == "idle":
        overrides["idle_timeout"] = 1.0  # time is the subject: the episode must end on its own
    async with proxy_http(load_config(overrides=overrides)) as proxy:
        with anyio.fail_after(120):
            url = f"{proxy.url}?task={key}&episode=verify-{how}"
            async with http_client(url, "2026-07-28") as client:  # keyed: closing the client ends nothing
                await client.list_tools()
                await SOLUTIONS[key][0](client)
            if how == "idle":
                record = await _stored(db, key)
    if how == "shutdown":
        record = await _stored(db, key)
    assert record["reward"]["reward"] == 1.0 and record["reward"]["trigger"] == "close"
    assert record["end_reason"] == ("proxy shutdown" if how == "shutdown" else "idle for 1 s")
