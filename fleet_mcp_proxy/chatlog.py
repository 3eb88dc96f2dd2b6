"""The conversation a judge verifier grades (fleet-contract §3.1, B22): the episode as chat messages. Pure.

Fleet's harness passes a verifier whose `verify` signature takes `conversation` the rollout's chat history,
`json.dumps(messages, default=str)`. The proxy never sees the model's own turns, so by default it builds the chat from
what it did see, in the OpenAI chat-message form harnesses keep:

* the task prompt as the `user` turn;
* per tool call, an `assistant` turn carrying `tool_calls` (id, name, JSON arguments) and a `tool` turn with the
  result's text (images and audio as a short placeholder, never their bytes);
* the submitted answer as the last `assistant` turn.

An assistant turn's `content` also names the call in one line, because consumers that keep only `role` and `content`
(Fleet's judge API does) would otherwise see empty turns.

A harness that holds the real chat hands it over instead: a list of messages under `_meta["fleet-mcp-proxy/
conversation"]` of any `tools/call` (the latest one wins, e.g. on `submit_final_answer`). It replaces the proxy's
view whole, and is passed as given.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .verify.conversation import takes_conversation

if TYPE_CHECKING:
    from .tasks import Task

HANDOVER_META = "fleet-mcp-proxy/conversation"
MAX_EXCHANGES = 500  # the oldest calls are dropped past this, with a note saying how many
MAX_RESULT_CHARS = 8_000  # per tool turn: judges read what was done, not every byte of every page
MAX_HANDOVER_MESSAGES = 10_000


@dataclass(frozen=True)
class _Exchange:
    call_id: str
    name: str
    arguments: str
    result: str


class ChatLog:
    """One episode's tool calls as chat messages, or the chat its harness handed over."""

    def __init__(self, prompt: str, *, max_exchanges: int = MAX_EXCHANGES) -> None:
        self.prompt = prompt
        self._exchanges: deque[_Exchange] = deque(maxlen=max_exchanges)
        self._seen = 0
        self.handed_over: list[dict[str, Any]] | None = None

    def record(self, tool: str, arguments: Mapping[str, Any] | None, result: Mapping[str, Any]) -> None:
        """One tool call, with the result the agent received."""
        self._seen += 1
        encoded = json.dumps(dict(arguments or {}), ensure_ascii=False, sort_keys=True, default=str)
        self._exchanges.append(_Exchange(f"call_{self._seen}", tool, encoded, result_text(result)))

    def hand_over(self, messages: list[dict[str, Any]]) -> None:
        self.handed_over = messages

    def messages(self, final_answer: str | None) -> list[dict[str, Any]]:
        if self.handed_over is not None:
            return self.handed_over
        chat: list[dict[str, Any]] = [{"role": "user", "content": self.prompt}]
        dropped = self._seen - len(self._exchanges)
        if dropped:
            chat.append({"role": "system", "content": f"[{dropped} earlier tool calls omitted by fleet-mcp-proxy]"})
        for ex in self._exchanges:
            call = {"id": ex.call_id, "type": "function", "function": {"name": ex.name, "arguments": ex.arguments}}
            chat.append({"role": "assistant", "content": f"{ex.name}({ex.arguments})", "tool_calls": [call]})
            chat.append({"role": "tool", "tool_call_id": ex.call_id, "name": ex.name, "content": ex.result})
        if final_answer is not None:
            chat.append({"role": "assistant", "content": final_answer})
        return chat

    def encoded(self, final_answer: str | None) -> str:
        """What the verifier's `conversation` argument receives, encoded as Fleet's harness encodes it."""
        return json.dumps(self.messages(final_answer), default=str)


def for_task(task: Task | None) -> ChatLog | None:
    """A log for an episode whose verifier takes a conversation; None for every other (nobody would read it)."""
    return ChatLog(task.prompt) if task is not None and takes_conversation(task.verifier_code) else None


def result_text(result: Mapping[str, Any]) -> str:
    """A tool result as the text of one chat turn."""
    parts: list[str] = []
    for item in result.get("content") or []:
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type")
        if kind == "text" and isinstance(item.get("text"), str):
            parts.append(item["text"])
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {item.get('mimeType') or 'unknown type'}]")
        elif kind == "resource" and isinstance(item.get("resource"), Mapping):
            resource = item["resource"]
            text = resource.get("text")
            parts.append(text if isinstance(text, str) else f"[resource: {resource.get('uri')}]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {item.get('uri')}]")
    if not parts and result.get("structuredContent") is not None:
        parts.append(json.dumps(result["structuredContent"], ensure_ascii=False, default=str))
    text = "\n".join(parts)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[... {len(text) - MAX_RESULT_CHARS} more characters]"
    return text


def parse_handover(meta: Any) -> list[dict[str, Any]] | None:
    """The chat a harness handed over in a request's `_meta`, or None when it sent none.

    Raises:
        ValueError: the value is not a list of message objects with a string `role` (the text says what to send).
    """
    if not isinstance(meta, Mapping) or HANDOVER_META not in meta:
        return None
    messages = meta[HANDOVER_META]
    if isinstance(messages, str):  # already encoded, as the harness would pass it to a verifier
        try:
            messages = json.loads(messages)
        except ValueError:
            raise ValueError(f"_meta['{HANDOVER_META}'] is a string that is not JSON") from None
    if not isinstance(messages, list) or len(messages) > MAX_HANDOVER_MESSAGES:
        raise ValueError(
            f"_meta['{HANDOVER_META}'] must be a list of at most {MAX_HANDOVER_MESSAGES} chat messages "
            '(objects such as {"role": "user", "content": "..."})'
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"_meta['{HANDOVER_META}'][{index}] must be an object with a string 'role'")
    return messages
