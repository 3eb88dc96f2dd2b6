"""Definitions of the context tools in MCP wire form, and validation of their arguments against them."""

from __future__ import annotations

from typing import Any

from fleet_mcp_proxy.synthetic.context_search import REGEX_MAX_CHARS
from fleet_mcp_proxy.synthetic.context_store import (
    CHECK_TOOL,
    HISTORY_TOOL,
    MANAGE_TOOL,
    SEARCH_TOOL,
    VIEW_TOOL,
    ContextSettings,
)

MATCHES_PER_PAGE = 20
HISTORY_PER_PAGE = 10
MAX_CONTEXT_CHARS = 1_000

_OUTPUT_ID = {
    "type": "string",
    "description": 'Output id from a truncation notice, e.g. "out-3". Defaults to the most recent stored output.',
}
_PATTERN = {"type": "string", "minLength": 1, "description": "Text to find. Case-insensitive."}
_REGEX = {"type": "boolean", "default": False, "description": "Treat pattern as a Python regular expression."}
_PAGE = {"type": "integer", "minimum": 0, "default": 0, "description": "Page of results, numbered from 0."}


def _tool(name: str, description: str, properties: dict[str, Any], *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": name == MANAGE_TOOL}
    if required:
        schema["required"] = list(required)
    return {"name": name, "description": description, "inputSchema": schema}


def tool_definitions(settings: ContextSettings) -> list[dict[str, Any]]:
    """The enabled context tools in MCP wire form, in a fixed order."""
    page_size = {
        "type": "integer",
        "minimum": 1,
        "maximum": settings.max_page_size,
        "default": settings.page_size,
        "description": f"Characters per page, 1 to {settings.max_page_size:,} (default {settings.page_size:,}).",
    }
    context = {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_CONTEXT_CHARS,
        "default": 80,
        "description": "Characters of surrounding text shown on each side of a match.",
    }
    tools = [
        _tool(
            VIEW_TOOL,
            (
                "Read a tool output that the proxy shortened because it was too long. The output is split into "
                "pages of page_size characters, numbered from 0; the truncation notice names the output id and the "
                "page to continue from. Without output_id, reads the most recent stored output."
            ),
            {"output_id": _OUTPUT_ID, "page": _PAGE, "page_size": page_size},
        ),
        _tool(
            SEARCH_TOOL,
            (
                "Search a tool output that the proxy shortened because it was too long. Matching ignores case; "
                "pattern is plain text, or an RE2 regular expression with regex=true (no backreferences or lookaround; "
                "matched line by line "
                f"within the first {REGEX_MAX_CHARS:,} characters; very long matches may be cut short). Lists each "
                f"match with its character offset, the {VIEW_TOOL} page that holds it and the surrounding text, "
                f"{MATCHES_PER_PAGE} matches per page (pages numbered from 0). Without output_id, searches the "
                "most recent stored output."
            ),
            {"output_id": _OUTPUT_ID, "pattern": _PATTERN, "regex": _REGEX, "page": _PAGE, "context_chars": context},
            required=("pattern",),
        ),
        _tool(
            HISTORY_TOOL,
            (
                "Search the proxy's record of the tool calls made in this episode: each call's tool name, its "
                "arguments as JSON and the start of its result text. This is not the conversation: messages are "
                "not searchable here. Matching ignores case; pattern is plain text, or a Python regular expression "
                "with regex=true. "
                f"Lists matching calls newest first, {HISTORY_PER_PAGE} per page (pages numbered from 0)."
            ),
            {"pattern": _PATTERN, "regex": _REGEX, "page": _PAGE},
            required=("pattern",),
        ),
        _tool(
            CHECK_TOOL,
            (
                "Report what the proxy knows about this episode: tool calls made, calls that returned errors, "
                "characters of tool output returned, shortened outputs stored, whether an answer was submitted and "
                "the environment's time left. The proxy does not see the conversation, so it reports no token counts."
            ),
            {},
        ),
        _tool(
            MANAGE_TOOL,
            (
                "Compatibility stub: your client manages the context window. The proxy cannot drop conversation "
                "turns, so this tool changes nothing."
            ),
            {},
        ),
    ]
    return [tool for tool in tools if tool["name"] in settings.tools]


_TYPES: dict[str, type] = {"string": str, "integer": int, "boolean": bool}
_JSON_NAMES: dict[type, str] = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def validate_arguments(name: str, schema: dict[str, Any], arguments: object) -> dict[str, Any] | str:
    """Type-checked arguments (null counts as absent, so defaults apply), or a message for the agent."""
    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, dict):
        return f"{name} takes a JSON object of arguments, not {_json_name(arguments)}."
    properties: dict[str, Any] = schema["properties"]
    problems = []
    unknown = [key for key in arguments if key not in properties]
    if unknown and not schema["additionalProperties"]:
        accepted = ", ".join(properties) or "none"
        problems.append(f"unknown argument(s) {', '.join(map(repr, unknown))} (accepted: {accepted})")
    clean: dict[str, Any] = {}
    for key, spec in properties.items():
        value = arguments.get(key)
        if value is None:
            if key in schema.get("required", ()):
                problems.append(f"{key} is required")
            continue
        if spec["type"] == "integer" and isinstance(value, float) and value.is_integer():
            value = int(value)  # some clients send 2.0 for 2
        expected = _TYPES[spec["type"]]
        if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
            clean[key] = value
        else:
            problems.append(f"{key} must be {spec['type']}, not {_json_name(value)}")
    return clean if not problems else f"Invalid arguments for {name}: {'; '.join(problems)}."


def _json_name(value: object) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)
