"""What both lanes (HTTP `lane.py`, stdio `stdio_lane.py`) write and count the same way."""

from __future__ import annotations

import json
from typing import Any

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
