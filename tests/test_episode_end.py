"""Every episode ends exactly once, durably: kill -9 at each state of the end, a stdio client's 2 s + 2 s kill,
a shutdown shorter than grading, and an idle reap on Fleet all end with the grade an uninterrupted run gives,
recorded once, and no instance left (issue 12). Real processes: the proxy, the Fleet emulator, the SDK clients."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from canaries import FLEET_KEY
from episode_end_helpers import (
    TASK,
    TITLE,
    emulator_post,
    emulator_state,
    live_instances,
    records,
    wait_closed,
    write_config,
    write_task,
)
from helpers import ROOT, child_env, http_client, stdio_proxy_params
from mcp import Client
from test_fleet_crash import emulator_process, proxy_process

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


async def _create_issue(client: Client) -> None:
    created = await client.call_tool("create_issue", {"project": "WEB", "title": TITLE})
    assert not created.is_error, created


@contextlib.asynccontextmanager
async def _open(url: str) -> AsyncIterator[Client]:
    async with http_client(f"{url}?task={TASK}") as client:
        yield client


async def _until(predicate: Any, timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.1)  # another process's effect


async def test_kill_9_at_each_state_of_the_end_then_a_restart_gives_each_grade_once(tmp_path: Path) -> None:
    marker = write_task(tmp_path, slow=8.0)
    db = tmp_path / "episodes.sqlite3"
    async with emulator_process() as base_url:
        config = write_config(tmp_path, base_url, verify_timeout=90)
        async with proxy_process(config, tmp_path / "proxy.log") as (proc, url), anyio.create_task_group() as tg:
            held, killed = anyio.Event(), anyio.Event()

            async def until_killed(work: Any, *args: Any) -> None:
                try:
                    await work(*args)
                except Exception:  # its connection died with the proxy, as it should
                    if not killed.is_set():
                        raise

            async def in_a_tool_call() -> None:  # E1: the kill lands while its tool call is in flight
                async with _open(url) as client:
                    await _create_issue(client)
                    (instance,) = [
                        i["instance_id"] for i in await live_instances(base_url) if i["instance_id"] not in e4
                    ]
                    await emulator_post(base_url, f"instances/{instance}/misbehave?mode=hang")
                    held.set()
                    await client.call_tool("list_projects", {})  # never answered

            async def submitted(answer: str, create: bool, ready: anyio.Event) -> None:  # E2, E3
                async with _open(url) as client:
                    if create:
                        await _create_issue(client)
                    else:
                        await client.call_tool("list_projects", {})
                    await client.call_tool("submit_final_answer", {"answer": answer})
                    ready.set()
                    await anyio.sleep_forever()

            with anyio.fail_after(120):
                # E4: graded, then its release is slow: the kill lands between the grade and the release.
                async with _open(url) as client:
                    await _create_issue(client)
                    await client.call_tool("submit_final_answer", {"answer": "early"})
                    await emulator_post(base_url, "faults", {"delete_latency": 60.0, "delete_latency_count": 1})
                before = await _graded_one(db)
                e4 = {i["instance_id"] for i in await live_instances(base_url)}
                tg.start_soon(until_killed, in_a_tool_call)
                await held.wait()
                e2, e3 = anyio.Event(), anyio.Event()
                tg.start_soon(until_killed, submitted, "slow", True, e3)  # its verifier runs when the kill lands
                await e3.wait()
                await _until(lambda: anyio.Path(marker).exists())
                tg.start_soon(until_killed, submitted, "fast", False, e2)  # queued behind it: submitted, not yet graded
                await e2.wait()
                killed.set()
                proc.kill()
                await anyio.to_thread.run_sync(proc.wait, 30)
                tg.cancel_scope.cancel()
        states = sorted((e["state"], e["reward"] is not None) for e in (await records(db)).values())
        assert states == [("live", False)] * 3 + [("releasing", True)], states
        assert len(await live_instances(base_url)) == 4

        async with proxy_process(config, tmp_path / "proxy.log"):  # the next start finishes all four
            done = await wait_closed(db, 4, timeout=180)
        await _until(lambda: _none_live(base_url))
    by_answer = {e["submission"]["answer"]: e for e in done.values() if e["submission"]}
    graded_early = done[before["episode_id"]]
    assert graded_early["graded_at"] == before["graded_at"], "a stored grade is never replaced"
    assert graded_early["reward"]["reward"] == 1.0
    assert by_answer["slow"]["reward"]["reward"] == 1.0 and by_answer["slow"]["reward"]["trigger"] == "submit"
    assert by_answer["fast"]["reward"]["reward"] == 0.0 and by_answer["fast"]["reward"]["trigger"] == "submit"
    assert graded_early["reward"]["trigger"] == "submit"
    (in_call,) = [e for e in done.values() if e["end_reason"] == "proxy exited" and not e["submission"]]
    assert in_call["reward"]["reward"] == 1.0 and in_call["reward"]["trigger"] == "close"
    assert all(i["released_at"] for e in done.values() for i in e["instances"])


async def _graded_one(db: Path) -> dict[str, Any]:
    """The episode that was graded and is releasing (E4), once the proxy wrote that far."""
    found: dict[str, Any] = {}

    async def releasing() -> bool:
        for e in (await records(db)).values():
            if e["state"] == "releasing":
                found.update(e)
                return True
        return False

    await _until(releasing)
    return found


async def _none_live(base_url: str) -> bool:
    return not await live_instances(base_url)


@pytest.mark.parametrize("submit", [True, False])
async def test_a_stdio_client_killing_the_proxy_still_gets_the_grade_and_the_release(
    tmp_path: Path, submit: bool
) -> None:
    write_task(tmp_path, slow=10.0)
    db = tmp_path / "episodes.sqlite3"
    async with emulator_process() as base_url:
        config = write_config(tmp_path, base_url, verify_timeout=60)
        env = child_env(PYTHONPATH=str(ROOT), XDG_STATE_HOME=str(tmp_path), FLEET_API_KEY=FLEET_KEY)
        params = stdio_proxy_params([], "--config", str(config), "--task", TASK, env=env)
        with anyio.fail_after(60):
            # The SDK's stdio_client closes stdin, then sends SIGTERM 2 s later and SIGKILL 2 s after that.
            async with Client(params, mode="legacy") as client:
                await _create_issue(client)
                if submit:
                    await client.call_tool("submit_final_answer", {"answer": "slow"})
        done = await wait_closed(db, 1, timeout=120)  # the verifier alone takes 10 s: a finisher did it
        await _until(lambda: _none_live(base_url))
    (episode,) = done.values()
    assert episode["reward"]["reward"] == 1.0, episode["reward"]
    assert episode["reward"]["trigger"] == ("submit" if submit else "close")
    assert "finish: 1 episode(s) finished" in (tmp_path / "finisher.log").read_text(encoding="utf-8")


async def test_shutdown_slower_than_grading_is_bounded_and_the_next_start_grades(tmp_path: Path) -> None:
    write_task(tmp_path, slow=10.0)
    db = tmp_path / "episodes.sqlite3"
    grace = 4.0
    async with emulator_process() as base_url:
        config = write_config(tmp_path, base_url, verify_timeout=60, shutdown_grace=grace, finisher=False)
        async with proxy_process(config, tmp_path / "proxy.log") as (proc, url):
            with anyio.fail_after(60):
                async with http_client(f"{url}?task={TASK}&episode=slow", "2026-07-28") as client:
                    await _create_issue(client)
                    await client.call_tool("submit_final_answer", {"answer": "slow"})
            started = anyio.current_time()
            proc.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(proc.wait, 60)
            took = anyio.current_time() - started
        assert code in (0, -signal.SIGTERM)
        assert took <= grace + 2, f"shutdown took {took:.1f} s with shutdown_grace = {grace:g}"  # the subject
        (pending,) = (await records(db)).values()
        assert pending["state"] != "closed" and pending["reward"] is None
        assert len(await live_instances(base_url)) == 1, "the pending end keeps its instance to grade it"
        async with proxy_process(config, tmp_path / "proxy.log"):
            done = await wait_closed(db, 1, timeout=120)
        await _until(lambda: _none_live(base_url))
    (episode,) = done.values()
    assert episode["reward"]["reward"] == 1.0 and episode["reward"]["trigger"] == "submit"


async def test_an_idle_reap_on_fleet_grades_while_the_instance_lives(tmp_path: Path) -> None:
    # The defaults' shape, scaled down: idle_timeout equal to the instance TTL (900 s and 900 s by default).
    write_task(tmp_path, slow=0.0)
    db = tmp_path / "episodes.sqlite3"
    async with emulator_process() as base_url:
        config = write_config(tmp_path, base_url, idle_timeout=40, verify_timeout=10)
        config.write_text(config.read_text(encoding="utf-8") + "ttl_seconds = 40\n", encoding="utf-8")
        async with proxy_process(config, tmp_path / "proxy.log") as (_proc, url):
            with anyio.fail_after(60):
                async with http_client(f"{url}?task={TASK}&episode=idle", "2026-07-28") as client:
                    await _create_issue(client)  # then the agent goes quiet; closing a keyed client ends nothing
            done = await wait_closed(db, 1, timeout=60)
        await _until(lambda: _none_live(base_url))
        stopped = list((await emulator_state(base_url))["instances"])
    (episode,) = done.values()
    assert episode["reward"]["reward"] == 1.0, episode["reward"]  # not null instance_lost
    assert episode["end_reason"].startswith("instance expiring")
    assert [i["stop_reason"] for i in stopped] == ["deleted"], "released, not expired"


async def test_a_client_that_only_lists_tools_creates_no_instance(tmp_path: Path) -> None:
    async with emulator_process() as base_url:
        config = tmp_path / "proxy.toml"
        config.write_text(
            f'[proxy]\nstore_path = "{tmp_path / "e.sqlite3"}"\ncatalog_cache_dir = "{tmp_path / "catalog"}"\n'
            f'[fleet]\nbase_url = "{base_url}"\n[env.tracker]\nfleet = "tracker"\n',
            encoding="utf-8",
        )
        async with proxy_process(config, tmp_path / "proxy.log") as (_proc, url):
            with anyio.fail_after(120):
                async with http_client(url) as client:  # the first run learns the catalog (it must provision)
                    await client.call_tool("list_projects", {})
                await _until(lambda: _none_live(base_url))
                creates = (await emulator_state(base_url))["instances"]
                for _ in range(3):  # a desktop client at every launch: initialize and tools/list, nothing else
                    async with http_client(url) as client:
                        assert "list_projects" in [t.name for t in (await client.list_tools()).tools]
        assert (await emulator_state(base_url))["instances"] == creates, "listing tools created no instance"


async def test_a_store_shared_with_another_fleet_account_leaves_that_accounts_ends_to_it(tmp_path: Path) -> None:
    # Two deployments on one store file (the default path is per user, not per config): B's startup must not
    # grade or "release" A's pending end through B's Fleet, where A's instance does not exist.
    write_task(tmp_path, slow=10.0)
    db, log = tmp_path / "episodes.sqlite3", tmp_path / "proxy.log"
    async with emulator_process() as base_a, emulator_process() as base_b:
        config_a = write_config(tmp_path, base_a, "a.toml", verify_timeout=60, shutdown_grace=4.0, finisher=False)
        config_b = write_config(tmp_path, base_b, "b.toml", verify_timeout=60, shutdown_grace=4.0, finisher=False)
        async with proxy_process(config_a, log) as (proc, url):
            with anyio.fail_after(60):
                async with http_client(f"{url}?task={TASK}&episode=a", "2026-07-28") as client:
                    await _create_issue(client)
                    await client.call_tool("submit_final_answer", {"answer": "slow"})
            proc.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(proc.wait, 60)
        (held,) = await live_instances(base_a)
        async with proxy_process(config_b, log):
            # Its startup recovery has run once it says what it finished or left alone.
            await _until(lambda: _says(log, "hold instances of another Fleet account", "a previous process left"))
        (pending,) = (await records(db)).values()
        assert pending["state"] != "closed" and pending["reward"] is None
        assert [i["instance_id"] for i in await live_instances(base_a)] == [held["instance_id"]]
        counts = (await emulator_state(base_b))["request_counts"]
        assert not [key for key in counts if held["instance_id"] in key or "verif" in key], counts
        async with proxy_process(config_a, log):  # A's own next start finishes it
            done = await wait_closed(db, 1, timeout=120)
        await _until(lambda: _none_live(base_a))
    (episode,) = done.values()
    assert episode["reward"]["reward"] == 1.0 and episode["reward"]["trigger"] == "submit"


async def _says(log: Path, *texts: str) -> bool:
    written = await anyio.Path(log).read_text(encoding="utf-8")
    return any(text in written for text in texts)
