"""What both lanes (HTTP `lane.py`, stdio `stdio_lane.py`) write and count the same way."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Message, Receive

from .. import telemetry


def dumps(message: Any) -> bytes:
    """Compact JSON, non-ASCII kept as is: what the SDK writes for the same message."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def failed(kind: str) -> None:
    if telemetry.ON:
        telemetry.note_call_failure(kind)


def cancelled(request_id: str, reason: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": request_id, "reason": reason},
    }


def replay(body: bytes, receive: Receive) -> Receive:
    """The request as the SDK would have read it: the body the lane consumed, then the rest of the stream."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
