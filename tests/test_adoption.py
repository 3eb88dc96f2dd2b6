"""A replica dies or is redeployed mid-episode and the agent does not notice (issue 15): real proxy replicas on one
real PostgreSQL store, the Fleet emulator, the SDK's own clients. The next call after a `kill -9` of the owner
succeeds on another replica against the same Fleet instance, with the state the earlier calls made; two replicas
racing to adopt one episode leave exactly one holder; a replica told to stop (SIGTERM) hands its live episodes
over without one failed call; every episode is graded once and no instance is left."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from episode_end_helpers import TASK, TITLE, live_instances, write_config, write_task
from helpers import kitchen_cmd
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pg_cluster import PgCluster
from scaleout_helpers import Replica, adoptable, end_keyed, replica, until_closed
from test_fleet_crash import emulator_process
from test_replicas import Switch, backend_pid

from fleet_mcp_proxy.store.records import RouteTarget

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]
MODERN = "2026-07-28"


@pytest.fixture
def store_url(pg_cluster: PgCluster) -> str:
    return pg_cluster.new_database()


def agent(url: str, switch: Switch, mode: str = "legacy") -> Client:
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(60.0, read=None), transport=switch)
    return Client(streamable_http_client(url, http_client=http), mode=mode, cache=None)  # type: ignore[arg-type]


def _config(tmp_path: Path, base_url: str, drain_delay: float = 0.2, **proxy: Any) -> Path:
    """The drain's delay is short where no load balancer must notice it first."""
    write_task(tmp_path, slow=0.0)
    path = write_config(tmp_path, base_url, verify_timeout=60, finisher=False, **proxy)
    with path.open("a", encoding="utf-8") as config:
        config.write(f"[cluster]\ndrain_delay = {drain_delay}\n")
    return path


async def _sees_the_issue(client: Client) -> None:
    found = await client.call_tool("search_issues", {"query": TITLE})
    assert not found.is_error, found
    assert TITLE in str(found.structured_content or found.content), found


async def _create_issue(client: Client) -> None:
    created = await client.call_tool("create_issue", {"project": "WEB", "title": TITLE})
    assert not created.is_error, created


@contextlib.asynccontextmanager
async def episode_with_an_issue(
    url: str, store_url: str, era: str, key: str
) -> AsyncIterator[tuple[Client, Switch, RouteTarget]]:
    """An agent (handshake-era session, or 2026-07-28 with `key`) that created the issue on the replica behind
    `url`, once the store holds what adopting its episode needs."""
    keyed = era == "key"
    switch = Switch()
    async with agent(
        f"{url}?task={TASK}" + (f"&episode={key}" if keyed else ""), switch, MODERN if keyed else "legacy"
    ) as client:
        await _create_issue(client)
        route = f"key:anonymous:{key}" if keyed else f"session:{switch.session_id}"
        yield client, switch, await adoptable(store_url, route)


@pytest.mark.parametrize("era", ["session", "key"])
async def test_kill_9_of_the_owner_mid_task_the_next_call_succeeds_on_another_replica(
    tmp_path: Path, store_url: str, era: str
) -> None:
    async with emulator_process() as base_url:
        config = _config(tmp_path, base_url)
        async with replica(config, store_url) as a, replica(config, store_url) as b:
            with anyio.fail_after(120):
                async with episode_with_an_issue(a.url, store_url, era, "k-kill") as (client, switch, target):
                    (instance,) = await live_instances(base_url)
                    a.proc.kill()  # mid-task: the agent goes on as if nothing happened
                    await anyio.to_thread.run_sync(a.proc.wait)
                    switch.port = b.port
                    await _sees_the_issue(client)  # the same instance, with the state the first call made
                    submitted = await client.call_tool("submit_final_answer", {"answer": "done"})
                    assert not submitted.is_error, submitted
                    assert [i["instance_id"] for i in await live_instances(base_url)] == [instance["instance_id"]]
                if era == "key":  # a keyed episode outlives its sessions: end it explicitly
                    assert await end_keyed(b.url, "k-kill") == 204
                record = await until_closed(store_url, target.episode_id)
            assert b.says(f"adopted episode {target.episode_id}") == 1
            assert all(status < 400 for port, status in switch.statuses if port == b.port), switch.statuses
        assert record["reward"]["reward"] == 1.0 and record["reward"]["trigger"] == "submit"
        assert [i["instance_id"] for i in record["instances"]] == [instance["instance_id"]]
        assert await live_instances(base_url) == []


async def test_two_replicas_racing_to_adopt_one_episode_leave_exactly_one_holder(
    tmp_path: Path, store_url: str
) -> None:
    async with emulator_process() as base_url:
        config = _config(tmp_path, base_url)
        async with replica(config, store_url) as a, replica(config, store_url) as b, replica(config, store_url) as c:
            with anyio.fail_after(120):
                async with agent(f"{a.url}?task={TASK}&episode=k-race", Switch(), MODERN) as first:
                    await _create_issue(first)
                target = await adoptable(store_url, "key:anonymous:k-race")
                a.proc.kill()
                await anyio.to_thread.run_sync(a.proc.wait)

                async def call(r: Replica) -> None:
                    async with agent(f"{r.url}?task={TASK}&episode=k-race", Switch(), MODERN) as client:
                        await _sees_the_issue(client)

                async with anyio.create_task_group() as tg:  # both land at once on replicas without the episode
                    tg.start_soon(call, b)
                    tg.start_soon(call, c)
                adopted = [r.says(f"adopted episode {target.episode_id}") for r in (b, c)]
                assert sorted(adopted) == [0, 1], adopted
                assert len(await live_instances(base_url)) == 1  # nobody provisioned a fresh one for the key
                loser = b if adopted[0] == 0 else c  # through the loser: forwarded to the holder
                assert await end_keyed(loser.url, "k-race") == 204
                record = await until_closed(store_url, target.episode_id, timeout=60)
        assert record["reward"]["reward"] == 1.0
        assert await live_instances(base_url) == []


@pytest.mark.parametrize("era", ["session", "key"])
async def test_a_replica_told_to_stop_hands_its_episodes_over_without_a_failed_call(
    tmp_path: Path, store_url: str, era: str
) -> None:
    """The agent talks to B; its episode is held by A (B forwards). A gets SIGTERM while the calls go on."""
    async with emulator_process() as base_url:
        config = _config(tmp_path, base_url)
        async with replica(config, store_url) as a, replica(config, store_url) as b:
            calls = 0
            with anyio.fail_after(180):
                async with episode_with_an_issue(a.url, store_url, era, "k-drain") as (client, switch, target):
                    switch.port = b.port  # from now on every request goes through B, which forwards to A
                    await _sees_the_issue(client)
                    a.proc.send_signal(signal.SIGTERM)
                    while a.proc.poll() is None or calls < 5:
                        await _sees_the_issue(client)  # raises on any failed call
                        calls += 1
                    assert a.proc.returncode in (0, -signal.SIGTERM)
                    submitted = await client.call_tool("submit_final_answer", {"answer": "done"})
                    assert not submitted.is_error, submitted
                if era == "key":
                    assert await end_keyed(b.url, "k-drain") == 204
                record = await until_closed(store_url, target.episode_id)
            assert any("handed over" in line for line in a.log), a.log[-20:]
            assert b.says(f"adopted episode {target.episode_id}") == 1
        assert record["reward"]["reward"] == 1.0 and record["reward"]["trigger"] == "submit"
        assert len(record["instances"]) == 1
        assert await live_instances(base_url) == []


async def test_an_episode_whose_environment_died_with_its_replica_is_finished_not_adopted(
    tmp_path: Path, store_url: str
) -> None:
    """A local command environment dies with the replica that spawned it: another replica's background scan
    finishes that episode (its row closes) instead of pretending to adopt it; its key then starts afresh."""
    config = tmp_path / "local.toml"
    config.write_text("[proxy]\nfinisher = false\n", encoding="utf-8")
    kitchen = ("--env", f"k={kitchen_cmd('k')}")
    async with replica(config, store_url, *kitchen) as a, replica(config, store_url, *kitchen) as b:
        with anyio.fail_after(120):
            async with agent(f"{a.url}?episode=k-local", Switch(), MODERN) as client:
                first = await backend_pid(client)
            target = await adoptable(store_url, "key:anonymous:k-local")
            a.proc.kill()
            await anyio.to_thread.run_sync(a.proc.wait)
            record = await until_closed(store_url, target.episode_id, timeout=90)  # nobody asked for it
            assert b.says(f"finished episode {target.episode_id}, which could not be adopted") == 1
            async with agent(f"{b.url}?episode=k-local", Switch(), MODERN) as client:
                assert await backend_pid(client) != first  # a fresh episode, its own backend
        assert b.says(f"adopted episode {target.episode_id}") == 0
    assert record["end_reason"] == "proxy exited"
