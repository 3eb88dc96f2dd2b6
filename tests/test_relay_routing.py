"""Backend requests and logs reach the call that caused them, not whichever call came last (issue 13 item 5)."""

from __future__ import annotations

import contextvars
import re
from typing import Any

import anyio
import mcp_types as t
import pytest
from helpers import config_with, http_client, kitchen_http, proxy_http

pytestmark = pytest.mark.anyio

# The test client's HTTP transport hands a request that arrives on a call's response stream to the elicitation
# callback in that call's context: so this says which of the agent's calls the proxy relayed it on.
_CALL: contextvars.ContextVar[str] = contextvars.ContextVar("call", default="none")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fast_lane", [False, True], ids=["sdk-path", "fast-lane"])
async def test_two_concurrent_elicitations_each_reach_their_own_call(fast_lane: bool) -> None:
    asked: list[tuple[str, str]] = []  # (label in the backend's message, call whose stream carried it)

    async def elicit(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
        match = re.search(r"\((\w+)\)", params.message)
        asked.append((match.group(1) if match else "?", _CALL.get()))
        return t.ElicitResult(action="accept", content={"n": _CALL.get()})

    async with (
        kitchen_http("a") as backend,
        proxy_http(config_with(f"a={backend}", fast_lane=fast_lane)) as proxy,
        http_client(proxy.url, elicitation_callback=elicit) as c,
    ):
        answers: dict[str, str] = {}

        async def call(label: str) -> None:
            _CALL.set(label)
            result = await c.call_tool("ask_user", {"label": label, "pair": True})
            answers[label] = result.content[0].text  # type: ignore[union-attr]

        with anyio.fail_after(60):
            await c.list_tools()
            async with anyio.create_task_group() as tg:  # the backend elicits only once both calls are in
                tg.start_soon(call, "first")
                tg.start_soon(call, "second")
    assert sorted(asked) == [("first", "first"), ("second", "second")], asked
    assert answers == {
        "first": "elicited: accept {'n': 'first'}",
        "second": "elicited: accept {'n': 'second'}",
    }
