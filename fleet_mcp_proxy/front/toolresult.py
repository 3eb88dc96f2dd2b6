"""What happens to every tool result on its way to the agent, whichever path forwarded it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio

from ..episode import Episode
from ..store import CallRecord
from ..synthetic.context import truncate_result


def finish_forwarded(
    episode: Episode,
    name: str,
    arguments: dict[str, Any] | None,
    result: dict[str, Any],
    started: datetime,
    clock: float,
) -> dict[str, Any]:
    """Large outputs are cut to a notice, errors noted for the verifier, and the call recorded."""
    if episode.context is not None and episode.outputs is not None and episode.call_log is not None:
        result = truncate_result(result, name, episode.outputs, episode.context)
        episode.call_log.record(name, arguments, result)
    if result.get("isError") is True:
        episode.outcome.record_tool_error(name, first_text(result))
    record_call(episode, name, arguments, result, started, clock)
    return result


def record_call(
    episode: Episode, name: str, arguments: dict[str, Any] | None, result: Any, started: datetime, clock: float
) -> None:
    """Every tool call the agent made, synthetic ones included, goes into the episode record."""
    body = result if isinstance(result, dict) else {}
    call = CallRecord(
        tool=name,
        arguments=arguments or {},
        result_bytes=_size(body),
        is_error=body.get("isError") is True,
        started_at=started,
        duration_ms=round((anyio.current_time() - clock) * 1000, 3),
    )
    episode.recorder.emit("add_call", episode.id, call)


def _size(result: dict[str, Any]) -> int:
    """Characters of text and base64 data: cheap, and no re-serialization of what passes through."""
    total = 0
    for item in result.get("content") or []:
        if isinstance(item, dict):
            total += len(item.get("text") or "") + len(item.get("data") or "")
    return total


def first_text(result: dict[str, Any]) -> str:
    for item in result.get("content") or []:
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            return str(item["text"])
    return "Tool execution failed"
