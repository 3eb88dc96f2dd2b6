"""Whether a tool result is a failure, decided as Fleet's harness decides it (fleet-contract §2.7, §2.8). Pure.

The harness first reduces a result to an observation (§2.7): an `isError` result becomes `{"error": first text}`;
a result with one text item and no image becomes that text parsed as JSON; one with no content becomes its
`structuredContent`. A dict observation is a failure when its `error` is truthy, its `status` is "failed", or its
own `isError` is truthy. So `{"error": null}` is no failure (A10), and neither is any result that is not one dict.

The proxy forwards results verbatim; this only feeds what it derives from them: the episode's tool errors, the call
record, the context tools' error counts and telemetry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_FALLBACK = "Tool execution failed"
_MEDIA = frozenset({"image", "audio"})  # OE renders anything with data + mimeType as an image


def tool_error_message(result: Mapping[str, Any]) -> str | None:
    """The failure the harness would record for this `CallToolResult` (wire form), or None when it succeeded."""
    if result.get("isError"):
        return _first_text(result) or _FALLBACK
    observation = _observation(result)
    if not isinstance(observation, dict):
        return None
    if observation.get("error"):
        return _as_text(observation["error"])
    if observation.get("status") == "failed":
        return _as_text(observation.get("message") or observation.get("error") or "status=failed")
    if observation.get("isError"):
        return _as_text(observation.get("message") or observation.get("error") or "isError=true")
    return None


def is_tool_error(result: Any) -> bool:
    return isinstance(result, Mapping) and tool_error_message(result) is not None


def _observation(result: Mapping[str, Any]) -> Any:
    items = [item for item in result.get("content") or [] if isinstance(item, Mapping)]
    texts = [item["text"] for item in items if item.get("type") == "text" and isinstance(item.get("text"), str)]
    if any(item.get("type") in _MEDIA for item in items) or len(texts) > 1:
        return None  # a list of blocks: never a failure
    if len(texts) == 1:
        text = texts[0]
        if not text.lstrip().startswith("{"):
            return None  # only a JSON object can carry an error; skip parsing everything else
        try:
            return json.loads(text)
        except ValueError:
            return None
    return result.get("structuredContent")


def _first_text(result: Mapping[str, Any]) -> str | None:
    for item in result.get("content") or []:
        if isinstance(item, Mapping) and isinstance(item.get("text"), str):
            return str(item["text"])
    return None


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
