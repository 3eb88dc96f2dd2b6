"""What happens to every tool result on its way to the agent, whichever path forwarded it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio

from ..episode import Episode
from ..store import CallRecord
from ..synthetic.context import truncate_result
from ..toolerrors import tool_error_message


def finish_forwarded(
    episode: Episode,
    name: str,
    arguments: dict[str, Any] | None,
    result: dict[str, Any],
    started: datetime,
    clock: float,
) -> dict[str, Any]:
    """Large outputs are cut to a notice, errors noted for the verifier, and the call recorded.

    Errors are what Fleet's harness counts as one (`toolerrors`), judged on what the environment answered."""
    error = tool_error_message(result)
    if episode.context is not None and episode.outputs is not None and episode.call_log is not None:
        result = truncate_result(result, name, episode.outputs, episode.context)
        episode.call_log.record(name, arguments, result, is_error=error is not None)
    if error is not None:
        episode.outcome.record_tool_error(name, error)
    record_call(episode, name, arguments, result, started, clock, is_error=error is not None)
    return result


def record_call(
    episode: Episode,
    name: str,
    arguments: dict[str, Any] | None,
    result: Any,
    started: datetime,
    clock: float,
    *,
    is_error: bool | None = None,
) -> None:
    """Every tool call the agent made, synthetic ones included, goes into the episode record (and the chat a judge
    verifier reads, when it takes one)."""
    body = result if isinstance(result, dict) else {}
    if episode.chat is not None:
        episode.chat.record(name, arguments, body)
    call = CallRecord(
        tool=name,
        arguments=arguments or {},
        result_bytes=_size(body),
        is_error=is_error if is_error is not None else tool_error_message(body) is not None,
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
