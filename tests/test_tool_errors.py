"""Tool errors are what Fleet's harness counts as one (fleet-contract §2.7, §2.8): `isError`, or a result that reads
as one JSON object whose `error` is truthy, whose `status` is "failed" or whose own `isError` is truthy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import http_client, kitchen_cmd, proxy_http

from fleet_mcp_proxy.config import load_config
from fleet_mcp_proxy.toolerrors import tool_error_message


def text(*texts: str, **extra: Any) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": t} for t in texts], **extra}


def body(value: Any) -> dict[str, Any]:
    return text(json.dumps(value))


IMAGE = {"type": "image", "data": "aGk=", "mimeType": "image/png"}

CASES: list[tuple[dict[str, Any], str | None]] = [
    (text("no such issue", isError=True), "no such issue"),
    ({"content": [], "isError": True}, "Tool execution failed"),
    ({"content": [IMAGE, {"type": "text", "text": "after"}], "isError": True}, "after"),
    (body({"error": "quota exceeded"}), "quota exceeded"),
    (body({"error": {"code": 7}}), '{"code": 7}'),
    (body({"status": "failed", "message": "disk full"}), "disk full"),
    (body({"status": "failed", "error": "e"}), "e"),
    (body({"status": "failed"}), "status=failed"),
    (body({"isError": True, "message": "m"}), "m"),
    (body({"isError": True}), "isError=true"),
    ({"content": [], "structuredContent": {"status": "failed"}}, "status=failed"),
    # Not failures:
    (body({"error": None}), None),  # A10: a null error is no error
    (body({"error": ""}), None),
    (body({"status": "ok", "error": False}), None),
    (body({"status": "FAILED"}), None),  # exact value only
    (body([{"error": "in a list"}]), None),  # only a dict observation counts
    (body("error"), None),
    (text("Error: the harness this proxy follows does not read prefixes"), None),
    (text('{"error": "x"', ""), None),  # two texts: a list, never parsed
    (text('{"error": "not json'), None),
    ({"content": [IMAGE, {"type": "text", "text": '{"error": "x"}'}]}, None),  # any image: a list of blocks
    ({"content": [{"type": "text", "text": "{}"}], "structuredContent": {"error": "x"}}, None),  # content wins
    ({"content": []}, None),
    (text("fine", isError=False), None),
]


@pytest.mark.parametrize(("result", "message"), CASES)
def test_a_result_is_a_tool_error_exactly_when_the_harness_says_so(result: dict[str, Any], message: str | None) -> None:
    assert tool_error_message(result) == message


# -- through the proxy: a real client, a real backend, both forwarding paths ----------------------------------------

ERRORS_URI = "fleet://episode/current/tool_errors"


async def _json(client: Any, uri: str) -> Any:
    return json.loads((await client.read_resource(uri)).contents[0].text)


@pytest.mark.anyio
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fast_lane", [True, False])
async def test_json_failures_are_tool_errors_for_feedback_the_record_and_check_context(
    tmp_path: Path, fast_lane: bool
) -> None:
    config = load_config(
        overrides={
            "fast_lane": fast_lane,
            "store_path": str(tmp_path / "episodes.sqlite3"),
            "context": {"enabled": "always", "tools": ["check_context"]},
        },
        env_args=(f"a={kitchen_cmd('a')}",),
    )
    said = ['{"error": "quota exceeded"}', '{"status": "failed", "message": "disk full"}', '{"error": null}', "fine"]
    async with proxy_http(config) as proxy, http_client(proxy.url) as client:
        with anyio.fail_after(60):
            await client.list_tools()
            (episode,) = proxy.state.registry.episodes.values()
            for text in said:
                result = await client.call_tool("echo", {"text": text})
                assert not result.is_error and result.content[0].text == text  # type: ignore[union-attr]
            failed = await client.call_tool("fail", {})
            assert failed.is_error
            assert await _json(client, ERRORS_URI) == {
                "errors": ["echo(): quota exceeded", "echo(): disk full", "fail(): it went wrong"]
            }
            check = await client.call_tool("check_context", {})
            assert json.loads(check.content[0].text)["tool_errors"] == 3  # type: ignore[union-attr]
            store = proxy.state.recorder.store
            assert store is not None
            while len(calls := (await store.get(episode.id)).calls) < 6:  # type: ignore[union-attr]
                await anyio.sleep(0.02)  # the record is written by the proxy's background writer
    assert [call.is_error for call in calls] == [True, True, False, False, True, False]
