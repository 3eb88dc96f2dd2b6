"""Context tools the proxy answers itself (contract §3.2-3.4): read and search long tool outputs it truncated,
and search its own record of this episode's tool calls. The proxy never sees the chat, so nothing here
claims to know or change it. Every handler returns an MCP result dict; bad input gives `isError` with a
message for the agent, never an exception.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from fleet_mcp_proxy.synthetic.context_search import (
    PatternError,
    compile_pattern,
    regex_coverage_note,
    snippet,
)
from fleet_mcp_proxy.synthetic.context_store import (
    CHECK_TOOL,
    CONTEXT_TOOL_NAMES,
    HISTORY_TOOL,
    OUTPUT_URI_PREFIX,
    SEARCH_TOOL,
    VIEW_TOOL,
    CallEntry,
    CallLog,
    ContextSettings,
    OutputStore,
    StoredOutput,
    StoreStats,
    read_output_resource,
    truncate_result,
)
from fleet_mcp_proxy.synthetic.context_tools import (
    HISTORY_PER_PAGE,
    MATCHES_PER_PAGE,
    MAX_CONTEXT_CHARS,
    tool_definitions,
    validate_arguments,
)

__all__ = [
    "CONTEXT_TOOL_NAMES",
    "OUTPUT_URI_PREFIX",
    "CallEntry",
    "CallLog",
    "ContextExtra",
    "ContextSettings",
    "OutputStore",
    "StoreStats",
    "StoredOutput",
    "check_context",
    "handle",
    "manage_context",
    "read_output_resource",
    "search_history",
    "search_tool_output",
    "tool_definitions",
    "truncate_result",
    "view_tool_output",
]

RECENT_IDS_SHOWN = 5


@dataclass(frozen=True)
class ContextExtra:
    """What the caller knows beyond the store and log, for check_context."""

    submission_state: str = "not submitted"
    instance_time_left_s: float | None = None


def handle(
    name: str,
    arguments: dict[str, Any] | None,
    *,
    store: OutputStore,
    log: CallLog,
    settings: ContextSettings,
    extra: ContextExtra | None = None,
) -> dict[str, Any]:
    """Validate `arguments` against the tool's schema and run it."""
    schema = next((t["inputSchema"] for t in tool_definitions(settings) if t["name"] == name), None)
    if schema is None:
        return _error(f"Unknown tool {name!r}.")
    args = validate_arguments(name, schema, arguments)
    if isinstance(args, str):
        return _error(args)
    if name == VIEW_TOOL:
        return view_tool_output(store, settings, **args)
    if name == SEARCH_TOOL:
        return search_tool_output(store, settings, **args)
    if name == HISTORY_TOOL:
        return search_history(log, **args)
    if name == CHECK_TOOL:
        extra = extra or ContextExtra()
        return check_context(store, log, extra.submission_state, extra.instance_time_left_s)
    return manage_context()


def _result(text: str, *, is_error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def _error(text: str) -> dict[str, Any]:
    return _result(text, is_error=True)


def _pages(count: int) -> str:
    return "1 page (0)" if count == 1 else f"{count:,} pages (0-{count - 1:,})"


def _lookup(store: OutputStore, output_id: str | None) -> StoredOutput | dict[str, Any]:
    """The output, refreshed as recently used, or an error result. An evicted id, an unknown one and one from
    another episode get the same answer, so nothing leaks across episodes."""
    if not output_id:
        latest = store.latest()
        if latest is None:
            return _error(
                "No tool output is stored in this episode: the proxy stores an output only when it "
                "truncates a long result."
            )
        output_id = latest.id
    item = store.get(output_id)
    if item is not None:
        return item
    ids = store.ids()[:RECENT_IDS_SHOWN]
    available = f"Available, newest first: {', '.join(ids)}." if ids else "No outputs are stored in this episode."
    return _error(f"Output {output_id!r} is not available: it is unknown or was evicted to bound memory. {available}")


def view_tool_output(
    store: OutputStore,
    settings: ContextSettings,
    *,
    output_id: str | None = None,
    page: int = 0,
    page_size: int | None = None,
) -> dict[str, Any]:
    size = settings.page_size if page_size is None else page_size
    if not 1 <= size <= settings.max_page_size:
        return _error(f"page_size must be from 1 to {settings.max_page_size:,}; got {size}.")
    if page < 0:
        return _error(f"page must be 0 or more (pages are numbered from 0); got {page}.")
    item = _lookup(store, output_id)
    if isinstance(item, dict):
        return item
    count = max(1, math.ceil(len(item.text) / size))
    if page >= count:
        return _error(f"page {page} does not exist: {item.id} has {_pages(count)} of {size:,} characters.")
    start, end = page * size, min(page * size + size, len(item.text))
    shown = f"characters {start:,}-{end - 1:,}" if end > start else "no characters"
    more = (
        f'More follows: {VIEW_TOOL}(output_id="{item.id}", page={page + 1}).'
        if page + 1 < count
        else "This is the last page."
    )
    header = (
        f"{item.id} (output of {item.tool}, {len(item.text):,} characters): page {page} of {_pages(count)}, "
        f"{shown}. {more} The page text follows as the next content item, unchanged."
    )
    # The page is its own content item so that concatenating pages gives back the output exactly.
    return {
        "content": [{"type": "text", "text": header}, {"type": "text", "text": item.text[start:end]}],
        "isError": False,
    }


def search_tool_output(
    store: OutputStore,
    settings: ContextSettings,
    *,
    pattern: str,
    output_id: str | None = None,
    regex: bool = False,
    page: int = 0,
    context_chars: int = 80,
) -> dict[str, Any]:
    if not pattern:
        return _error("pattern must not be empty.")
    if page < 0 or not 0 <= context_chars <= MAX_CONTEXT_CHARS:
        return _error(f"page must be 0 or more and context_chars from 0 to {MAX_CONTEXT_CHARS:,}.")
    item = _lookup(store, output_id)
    if isinstance(item, dict):
        return item
    try:
        searcher = compile_pattern(pattern, regex)
    except PatternError as exc:
        return _error(str(exc))
    spans, capped = searcher.spans(item.text)
    where = f"{item.id} ({len(item.text):,} characters)"
    note = regex_coverage_note(item.text, regex)
    if not spans:
        return _result(f"No matches for {_quoted(pattern)} in {where}.{note}")
    count = math.ceil(len(spans) / MATCHES_PER_PAGE)
    total = f"At least {len(spans):,} matches (counting stopped there)" if capped else f"{len(spans):,} matches"
    if page >= count:
        return _error(f"page {page} does not exist: {total.lower()} make {_pages(count)}.")
    first = page * MATCHES_PER_PAGE
    lines = [
        f"{total} for {_quoted(pattern)} in {where}; page {page} of {_pages(count)}, "
        f"matches {first + 1:,}-{min(first + MATCHES_PER_PAGE, len(spans)):,}:"
    ]
    for number, (start, end) in enumerate(spans[first : first + MATCHES_PER_PAGE], first + 1):
        view_page = start // settings.page_size
        lines.append(
            f"{number}. offset {start:,} (view page {view_page}): {snippet(item.text, start, end, context_chars)}"
        )
    if page + 1 < count:
        lines.append(f"More: {SEARCH_TOOL}(..., page={page + 1}).")
    return _result("\n".join(lines) + note)


def search_history(log: CallLog, *, pattern: str, regex: bool = False, page: int = 0) -> dict[str, Any]:
    if not pattern:
        return _error("pattern must not be empty.")
    if page < 0:
        return _error(f"page must be 0 or more (pages are numbered from 0); got {page}.")
    try:
        searcher = compile_pattern(pattern, regex)
    except PatternError as exc:
        return _error(str(exc))
    entries = log.entries()
    hits: list[tuple[CallEntry, str, int, int]] = []
    for entry in entries:
        haystack = f"{entry.tool}\n{entry.arguments_json}\n{entry.result_text_head}"
        spans, _ = searcher.spans(haystack, limit=1)
        if spans:
            hits.append((entry, haystack, *spans[0]))
    scope = f"{len(entries):,} recorded tool calls of this episode"
    if log.calls > len(entries):
        scope += f" (the {log.calls - len(entries):,} oldest calls are no longer kept)"
    if not hits:
        return _result(f"No tool call matches {_quoted(pattern)}; searched {scope}.")
    count = math.ceil(len(hits) / HISTORY_PER_PAGE)
    if page >= count:
        return _error(f"page {page} does not exist: {len(hits):,} matching calls make {_pages(count)}.")
    lines = [
        f"{len(hits):,} calls match {_quoted(pattern)}, newest first; page {page} of {_pages(count)}. Searched {scope}."
    ]
    for entry, haystack, start, end in hits[page * HISTORY_PER_PAGE : (page + 1) * HISTORY_PER_PAGE]:
        status = " (error)" if entry.is_error else ""
        lines.append(f"#{entry.seq} {entry.tool}{status}: {snippet(haystack, start, end, 80)}")
    return _result("\n".join(lines))


def check_context(
    store: OutputStore, log: CallLog, submission_state: str = "not submitted", instance_time_left_s: float | None = None
) -> dict[str, Any]:
    stats = store.stats()
    body = {
        "tool_calls": log.calls,
        "tool_errors": log.errors,
        "characters_returned": log.chars_returned,
        "outputs_stored": stats.outputs,
        "outputs_stored_bytes": stats.bytes,
        "outputs_truncated_total": stats.stored_total,
        "submission": submission_state,
        "instance_time_left_s": instance_time_left_s,
        "note": "Counts come from the proxy's view of tool calls; it cannot see the conversation or count tokens.",
    }
    return {"content": [{"type": "text", "text": json.dumps(body)}], "structuredContent": body, "isError": False}


def manage_context() -> dict[str, Any]:
    return _result(
        "Nothing was changed: your client manages the context window, and fleet-mcp-proxy cannot drop "
        "conversation turns."
    )


def _quoted(pattern: str) -> str:
    return json.dumps(pattern, ensure_ascii=False)
