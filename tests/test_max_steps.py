"""`max_steps` (per proxy, overridable per task): the call after the limit is refused, the episode is graded with
trigger "max_steps" and ended with that reason, as Fleet's harness ends a rollout (one step = one tool call)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import anyio
import mcp_types as t
import pytest
from canaries import FLEET_KEY
from fleet_emulator import running_emulator
from fleet_emulator.judges import NO_CONVERSATION, judge_task
from helpers import http_client, kitchen_cmd, proxy_http

from fleet_mcp_proxy.config import load_config
from fleet_mcp_proxy.store import open_store
from fleet_mcp_proxy.tasks import Task, TaskEntryError

pytestmark = pytest.mark.anyio
KEY = FLEET_KEY
REWARD = "fleet://episode/current/reward"


def text(result: Any) -> str:
    return str(result.content[0].text)


@pytest.mark.timeout(180)
async def test_a_task_at_its_step_limit_is_graded_with_trigger_max_steps_and_refuses_the_next_call(
    tmp_path: Path,
) -> None:
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{**judge_task("limited", NO_CONVERSATION), "max_steps": 2}]))
    run_id = f"test-{uuid.uuid4().hex[:10]}"
    overrides = {
        "fleet": {"run_id": run_id, "api_key": KEY, "base_url": "", "retry_backoff": 0.05},
        "tasks_file": str(tasks),
        "store_path": str(tmp_path / "episodes.sqlite3"),
        "max_steps": 50,  # the proxy's default; the task's own limit wins
    }
    updated = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, t.ResourceUpdatedNotification) and str(message.params.uri) == REWARD:
            updated.set()

    async with running_emulator(KEY) as emu:
        overrides["fleet"]["base_url"] = emu.base_url  # type: ignore[index]
        async with proxy_http(load_config(overrides=overrides, environ={})) as proxy:
            with anyio.fail_after(120):
                async with http_client(f"{proxy.url}?task=limited", message_handler=on_message) as client:
                    await client.list_tools()
                    await client.subscribe_resource(REWARD)
                    (episode,) = proxy.state.registry.episodes.values()
                    assert not (await client.call_tool("search_issues", {"query": "JPY"})).is_error
                    assert not updated.is_set()
                    last = await client.call_tool("list_projects", {})  # step 2 of 2 runs
                    assert not last.is_error
                    await updated.wait()
                    refused = await client.call_tool("list_projects", {})
                    assert refused.is_error and "step limit: 2 tool calls (max_steps)" in text(refused)
                    assert (await client.call_tool("submit_final_answer", {"answer": "bob"})).is_error
                    reward = json.loads((await client.read_resource(REWARD)).contents[0].text)  # type: ignore[union-attr]
                    while episode.ended is None or emu.state.select(run_id=run_id)[0].live:
                        await anyio.sleep(0.02)  # the end runs in the background after the grade
                    assert episode.ended == "max_steps"
                while proxy.state.registry.episodes:  # the session's close ends it once more (idempotent)
                    await anyio.sleep(0.02)
    # The proxy has shut down: its writer drained every record into the store.
    async with await open_store(tmp_path / "episodes.sqlite3") as store:
        record = await store.get(episode.id)
    assert record is not None
    # Graded, not abandoned: no answer was submitted, so this verifier gives 0, and says it was max_steps.
    assert (reward["trigger"], reward["status"], reward["reward"]) == ("max_steps", "final", 0.0), reward
    assert record.end_reason == "max_steps"  # not overwritten when the session closed later


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fast_lane", [True, False])
async def test_the_proxy_wide_limit_counts_every_tool_call_on_both_paths(fast_lane: bool) -> None:
    config = load_config(
        overrides={"max_steps": 3, "fast_lane": fast_lane, "record_episodes": False},
        env_args=(f"a={kitchen_cmd('a')}",),
    )
    async with proxy_http(config) as proxy, http_client(proxy.url) as client:
        with anyio.fail_after(60):
            await client.list_tools()
            (episode,) = proxy.state.registry.episodes.values()
            assert not (await client.call_tool("echo", {"text": "1"})).is_error
            assert (await client.call_tool("fail", {})).is_error  # a failed call is a step too
            assert not (await client.call_tool("echo", {"text": "3"})).is_error
            refused = await client.call_tool("echo", {"text": "4"})
            assert refused.is_error and "max_steps" in text(refused)
            while episode.ended is None:
                await anyio.sleep(0.02)
            assert episode.ended == "max_steps" and episode.steps.taken == 3
            # No task, no verifier: graded as unknown, with the trigger that asked.
            reward = json.loads((await client.read_resource(REWARD)).contents[0].text)  # type: ignore[union-attr]
            assert (reward["trigger"], reward["reward"], reward["failure_reason"]) == ("max_steps", None, "no_verifier")


def test_a_task_states_its_own_limit_or_is_refused_naming_the_key() -> None:
    base = {"key": "k", "prompt": "p", "env_key": "tracker"}
    assert Task.from_export({**base, "max_steps": 30}).max_steps == 30
    assert Task.from_export(base).max_steps is None
    for bad in (0, "30", True, 2.5):
        with pytest.raises(TaskEntryError, match="max_steps"):
            Task.from_export({**base, "max_steps": bad})
