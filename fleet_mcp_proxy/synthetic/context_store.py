"""Per-episode memory behind the context tools: stored long outputs, truncation, and the call log (contract §3.4).

Pure: no I/O. One `OutputStore` and one `CallLog` per episode, so ids from another episode are simply unknown.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from ..toolerrors import tool_error_message

VIEW_TOOL = "view_tool_output"
SEARCH_TOOL = "search_tool_output"
HISTORY_TOOL = "search_history"
CHECK_TOOL = "check_context"
MANAGE_TOOL = "manage_context"
CONTEXT_TOOL_NAMES = frozenset({VIEW_TOOL, SEARCH_TOOL, HISTORY_TOOL, CHECK_TOOL, MANAGE_TOOL})
OUTPUT_URI_PREFIX = "fleet://outputs/"


@dataclass(frozen=True)
class ContextSettings:
    budget_chars: int = 16_000
    max_outputs: int = 64
    max_bytes: int = 64 * 1024 * 1024
    page_size: int = 4_000
    max_page_size: int = 50_000
    # check_context and manage_context are off by default: the proxy cannot see or change the chat.
    tools: frozenset[str] = frozenset({VIEW_TOOL, SEARCH_TOOL, HISTORY_TOOL})

    def __post_init__(self) -> None:
        if min(self.budget_chars, self.max_outputs, self.max_bytes, self.page_size) < 1:
            raise ValueError("context settings: budget_chars, max_outputs, max_bytes and page_size must be >= 1")
        if self.page_size > self.max_page_size:
            raise ValueError(f"context settings: page_size {self.page_size} exceeds max_page_size {self.max_page_size}")
        if unknown := self.tools - CONTEXT_TOOL_NAMES:
            raise ValueError(f"context settings: unknown context tools {sorted(unknown)}")


@dataclass(frozen=True)
class StoredOutput:
    id: str
    tool: str
    text: str
    created_seq: int
    size_bytes: int = field(default=0, compare=False)


@dataclass(frozen=True)
class StoreStats:
    outputs: int
    bytes: int
    max_outputs: int
    max_bytes: int
    stored_total: int
    evicted_total: int


def utf8_size(text: str) -> int:
    # surrogatepass: JSON may legally carry lone surrogates ("\ud800"), which plain UTF-8 encoding rejects.
    return len(text.encode("utf-8", "surrogatepass"))


class OutputStore:
    """LRU of full tool outputs, bounded by count and by total UTF-8 bytes; `get` counts as use."""

    def __init__(self, max_outputs: int = 64, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_outputs = max_outputs
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, StoredOutput] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._seq = 0
        self._evicted = 0

    @classmethod
    def for_settings(cls, settings: ContextSettings) -> OutputStore:
        return cls(settings.max_outputs, settings.max_bytes)

    def put(self, tool: str, text: str) -> str:
        """Store `text` and return its new id; raises ValueError if it alone exceeds max_bytes."""
        size = utf8_size(text)
        if size > self.max_bytes:
            raise ValueError(f"output of {size} bytes exceeds the store limit of {self.max_bytes} bytes")
        self._seq += 1
        item = StoredOutput(f"out-{self._seq}", tool, text, self._seq, size)
        self._items[item.id] = item
        self._bytes += size
        while len(self._items) > self.max_outputs or self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.size_bytes
            self._evicted += 1
        return item.id

    def get(self, output_id: str) -> StoredOutput | None:
        item = self._items.get(output_id)
        if item is not None:
            self._items.move_to_end(output_id)
        return item

    def latest(self) -> StoredOutput | None:
        """The most recently stored output (not the most recently read); does not count as use."""
        return max(self._items.values(), key=lambda item: item.created_seq, default=None)

    def ids(self) -> list[str]:
        """Stored ids, newest first."""
        return [item.id for item in sorted(self._items.values(), key=lambda item: -item.created_seq)]

    def stats(self) -> StoreStats:
        return StoreStats(len(self._items), self._bytes, self.max_outputs, self.max_bytes, self._seq, self._evicted)


def result_texts(result: dict[str, Any]) -> list[str]:
    """The text of every text content item, in order; images, audio and resources are not text here."""
    content = result.get("content")
    if not isinstance(content, list):
        return []
    return [item["text"] for item in content if _is_text(item)]


def _is_text(item: object) -> bool:
    return isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str)


def truncate_result(result: dict[str, Any], tool: str, store: OutputStore, settings: ContextSettings) -> dict[str, Any]:
    """Cut text content to the budget and store the full text; returns `result` itself when it fits."""
    texts = result_texts(result)
    if sum(map(len, texts)) <= settings.budget_chars:
        return result
    full = "\n".join(texts)
    try:
        output_id: str | None = store.put(tool, full)
    except ValueError:
        output_id = None
    remaining, offset, cut_done = settings.budget_chars, 0, False
    content: list[Any] = []
    for item in result["content"]:
        if not _is_text(item):
            content.append(item)
        elif not cut_done and len(item["text"]) <= remaining:
            content.append(item)
            remaining -= len(item["text"])
            offset += len(item["text"]) + 1  # +1 for the "\n" joining items in the stored text
        elif not cut_done:
            notice = _notice(len(full), offset + remaining, output_id, settings)
            content.append({**item, "text": item["text"][:remaining] + notice})
            cut_done = True
        # Text items after the cut are dropped: their text is in the stored output.
    return {**result, "content": content}


def _notice(total: int, cut_at: int, output_id: str | None, settings: ContextSettings) -> str:
    head = f"\n\n[Output truncated: showing {settings.budget_chars:,} of {total:,} characters."
    if output_id is None:
        return (
            f"{head} The full output is larger than the proxy keeps ({settings.max_bytes:,} bytes); the rest is lost.]"
        )
    ways = []
    if VIEW_TOOL in settings.tools:
        page = cut_at // settings.page_size
        ways.append(
            f'continue reading with {VIEW_TOOL}(output_id="{output_id}", page={page}) '
            f"(pages of {settings.page_size:,} characters, numbered from 0)"
        )
    if SEARCH_TOOL in settings.tools:
        ways.append(f'search it with {SEARCH_TOOL}(output_id="{output_id}", pattern="...")')
    how = f" You can {' or '.join(ways)}." if ways else ""
    uri = OUTPUT_URI_PREFIX + output_id
    return f"{head} The full output is stored as {output_id}.{how} It is also the resource {uri}.]"


def read_output_resource(store: OutputStore, uri: str) -> dict[str, Any] | None:
    """resources/read result for fleet://outputs/{id}; None when the uri is not a stored output."""
    if not uri.startswith(OUTPUT_URI_PREFIX):
        return None
    item = store.get(uri.removeprefix(OUTPUT_URI_PREFIX))
    if item is None:
        return None
    return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": item.text}]}


@dataclass(frozen=True)
class CallEntry:
    seq: int
    tool: str
    arguments_json: str
    result_text_head: str
    is_error: bool


class CallLog:
    """This episode's tool calls as the proxy saw them; bounded, while the totals count every call."""

    def __init__(self, max_entries: int = 1_000, head_chars: int = 2_000) -> None:
        self.head_chars = head_chars
        self._entries: deque[CallEntry] = deque(maxlen=max_entries)
        self.calls = 0
        self.errors = 0
        self.chars_returned = 0

    def record(
        self, tool: str, arguments: dict[str, Any] | None, result: dict[str, Any], *, is_error: bool | None = None
    ) -> CallEntry:
        """Log one call with the result the agent received (after truncation); `is_error` as the harness judges
        it (`toolerrors`), worked out here when the caller has not."""
        texts = result_texts(result)
        arguments_json = json.dumps(arguments or {}, ensure_ascii=False, sort_keys=True, default=str)
        self.calls += 1
        is_error = tool_error_message(result) is not None if is_error is None else is_error
        self.errors += is_error
        self.chars_returned += sum(map(len, texts))
        # Both are capped so that a huge write or read cannot make the log large or its search slow.
        entry = CallEntry(
            self.calls, tool, arguments_json[: self.head_chars], "\n".join(texts)[: self.head_chars], is_error
        )
        self._entries.append(entry)
        return entry

    def entries(self) -> list[CallEntry]:
        """Kept entries, newest first."""
        return list(reversed(self._entries))
