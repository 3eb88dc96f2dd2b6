"""Judge verifiers get the conversation (B22), as Fleet's harness passes it (fleet-contract §3.1): end to end through
the proxy and the emulator's verifier executor, through a local verifier run, and handed over by a harness."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import anyio
import mcp_types as t
import pytest
from canaries import FLEET_KEY
from fleet_emulator import running_emulator
from fleet_emulator.judges import CONVERSATION_JUDGE, JPY_PROMPT, NO_CONVERSATION, TEXT_GRADE, judge_task
from helpers import http_client, proxy_http
from mcp import MCPError
from test_verify_remote import sdk

from fleet_mcp_proxy.chatlog import HANDOVER_META, ChatLog, result_text
from fleet_mcp_proxy.config import load_config
from fleet_mcp_proxy.forwarding import forward_params
from fleet_mcp_proxy.verify.conversation import takes_conversation
from fleet_mcp_proxy.verify.local import run_local
from fleet_mcp_proxy.verify.remote import run_remote
from fleet_mcp_proxy.verify.runner import run_verifier

pytestmark = pytest.mark.anyio
KEY = FLEET_KEY
REWARD, VERIFIER = "fleet://episode/current/reward", "fleet://episode/current/verifier"


async def read_json(client: Any, uri: str) -> dict[str, Any]:
    return dict(json.loads((await client.read_resource(uri)).contents[0].text))


def proxy_config(emu: Any, tmp_path: Path, tasks: list[dict[str, Any]]) -> Any:
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks))
    fleet = {"run_id": f"test-{uuid.uuid4().hex[:10]}", "api_key": KEY, "base_url": emu.base_url}
    overrides = {"fleet": fleet, "tasks_file": str(path), "store_path": str(tmp_path / "episodes.sqlite3")}
    return load_config(overrides=overrides, environ={})


async def graded(url: str, task: str, *, meta: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """One agent: search the tracker, submit "bob"; the reward and the verifier's stdout once graded."""
    updated = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, t.ResourceUpdatedNotification) and str(message.params.uri) == REWARD:
            updated.set()

    async with http_client(f"{url}?task={task}", message_handler=on_message) as client:
        await client.list_tools()
        await client.subscribe_resource(REWARD)
        found = await client.call_tool("search_issues", {"query": "JPY"})
        assert not found.is_error
        submitted = await client.call_tool("submit_final_answer", {"answer": "bob"}, meta=meta)  # type: ignore[arg-type]
        assert not submitted.is_error
        await updated.wait()
        return await read_json(client, REWARD), str((await read_json(client, VERIFIER))["stdout"])


@pytest.mark.timeout(180)
async def test_a_judge_grades_the_conversation_the_proxy_saw_and_other_verifiers_get_none(tmp_path: Path) -> None:
    tasks = [judge_task("judge", CONVERSATION_JUDGE), judge_task("plain", NO_CONVERSATION)]
    async with running_emulator(KEY) as emu, proxy_http(proxy_config(emu, tmp_path, tasks)) as proxy:
        with anyio.fail_after(120):
            reward, stdout = await graded(proxy.url, "judge")
            plain, _ = await graded(proxy.url, "plain")
    assert stdout.splitlines() == [
        "task asked: True",
        "tracker searched: True",
        "issue seen: True",
        "answer given last: True",
    ]
    assert (reward["reward"], reward["trigger"], reward["failure_reason"]) == (1.0, "submit", None), reward
    # Passing a conversation to `verify(env, final_answer=None)` would raise: it must get none.
    assert (plain["reward"], plain["failure_reason"]) == (1.0, None), plain


@pytest.mark.timeout(180)
async def test_a_harness_that_holds_the_chat_hands_it_over_on_a_tool_call(tmp_path: Path) -> None:
    chat = [
        {"role": "user", "content": JPY_PROMPT},
        {"role": "assistant", "content": "I remember this one without looking."},
        {"role": "assistant", "content": "bob"},
    ]
    tasks = [judge_task("judge", CONVERSATION_JUDGE)]
    async with running_emulator(KEY) as emu, proxy_http(proxy_config(emu, tmp_path, tasks)) as proxy:
        with anyio.fail_after(120):
            reward, stdout = await graded(proxy.url, "judge", meta={HANDOVER_META: chat})
            async with http_client(f"{proxy.url}?task=judge") as client:
                await client.list_tools()
                with pytest.raises(MCPError, match="must be a list"):
                    await client.call_tool("list_projects", {}, meta={HANDOVER_META: {"role": "user"}})  # type: ignore[arg-type]
    # The harness's chat replaced the proxy's view: no search in it, so the judge says so.
    assert "tracker searched: False" in stdout and "task asked: True" in stdout
    assert reward["reward"] == 0.5, reward


def test_the_signature_rule_is_the_harness_regex() -> None:
    assert takes_conversation(CONVERSATION_JUDGE)
    assert takes_conversation("def verify(env, *, conversation: str | None = None):")
    assert not takes_conversation(NO_CONVERSATION)
    assert not takes_conversation("def grade(env, conversation=None):")  # only `verify` is looked at
    assert not takes_conversation(None)


@pytest.fixture
def dbs(tmp_path: Path) -> tuple[Path, Path]:
    paths = []
    for name in ("seed", "current"):
        path = tmp_path / f"{name}.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.close()
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.parametrize("header", ["", "from __future__ import annotations\n"])
async def test_a_local_run_passes_the_conversation_as_a_remote_one_does(dbs: tuple[Path, Path], header: str) -> None:
    conversation = json.dumps(
        [
            {"role": "user", "content": JPY_PROMPT},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "search_issues"}}]},
            {"role": "assistant", "content": "bob"},
        ]
    )
    code = header + CONVERSATION_JUDGE
    with anyio.fail_after(60):
        run = await run_local(code, *dbs, final_answer="bob", timeout=30, conversation=conversation)
        bare = await run_local(code, *dbs, final_answer="bob", timeout=30)
    assert run.success, run.error
    assert run.result == 0.5 and "task asked: True" in run.stdout and "answer given last: True" in run.stdout
    assert (bare.success, bare.result, bare.stdout) == (True, 0.0, "no conversation\n")


@pytest.mark.timeout(60)
async def test_a_judge_returning_its_grade_as_text_scores_it_through_the_platform() -> None:
    with anyio.fail_after(30):
        async with running_emulator(KEY) as emu, sdk(emu) as fleet:
            env = await fleet.make("tracker")

            async def execute() -> Any:
                return await run_remote(
                    fleet,
                    env.instance_id,
                    task_key="text-grade",
                    prompt=JPY_PROMPT,
                    env_key="tracker",
                    code=TEXT_GRADE,
                    final_answer=None,
                    timeout=15,
                )

            reward, _ = await run_verifier(execute, trigger="close", backoff=(0.0,))
    assert (reward.reward, reward.status, reward.failure_reason) == (0.5, "final", None)


def test_a_handed_over_chat_never_reaches_an_environment() -> None:
    raw = {"name": "echo", "arguments": {}, "_meta": {HANDOVER_META: [{"role": "user"}], "trace/id": "t-1"}}
    assert forward_params(raw)["_meta"] == {"trace/id": "t-1"}


def test_the_proxys_chat_is_openai_messages_bounded_and_without_media_bytes() -> None:
    log = ChatLog("Do it.", max_exchanges=2)
    log.record("shot", {}, {"content": [{"type": "image", "data": "A" * 10_000, "mimeType": "image/png"}]})
    log.record("read", {"page": 1}, {"content": [{"type": "text", "text": "x" * 20_000}], "isError": True})
    log.record("get", {"id": 3}, {"content": [], "structuredContent": {"id": 3}})
    chat = json.loads(log.encoded("done"))
    assert chat[0] == {"role": "user", "content": "Do it."}
    assert chat[1] == {"role": "system", "content": "[1 earlier tool calls omitted by fleet-mcp-proxy]"}
    call = chat[2]["tool_calls"][0]
    assert call == {"id": "call_2", "type": "function", "function": {"name": "read", "arguments": '{"page": 1}'}}
    assert chat[2]["content"] == 'read({"page": 1})' and chat[3]["tool_call_id"] == "call_2"
    assert len(chat[3]["content"]) < 8_100 and chat[5]["content"] == '{"id": 3}'
    assert chat[-1] == {"role": "assistant", "content": "done"} and len(chat) == 7
    audio = {"type": "audio", "data": "AAAA", "mimeType": "audio/wav"}
    assert result_text({"content": [audio]}) == "[audio: audio/wav]"
    log.hand_over([{"role": "user", "content": "theirs"}])
    assert json.loads(log.encoded("done")) == [{"role": "user", "content": "theirs"}]
