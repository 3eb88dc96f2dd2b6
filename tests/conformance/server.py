"""Conforming MCP backend for the official server conformance suite (npm @modelcontextprotocol/conformance).

It implements every tool, resource, prompt and utility the suite's server scenarios call, on the lowlevel
mcp 2.3.0 `Server`, so the suite passes when pointed at it directly, and the proxy can be tested by putting
it in front of this fixture.

    python tests/conformance/server.py                       # stdio (default)
    python tests/conformance/server.py --http --port 8123    # streamable HTTP at http://127.0.0.1:8123/mcp
    python tests/conformance/server.py --http                # free port; the URL is printed on stdout

Over HTTP it binds 127.0.0.1 only, has DNS-rebinding protection on (the `dns-rebinding-protection`
scenario), and keeps an in-memory event store so SSE streams are resumable (SEP-1699).

The suite speaks the 2025-11-25 handshake era, so server->client requests (sampling, elicitation) go over
the request's back-channel. For 2026-07-28 clients the same tools answer with an `InputRequiredResult` and
finish on the retry that carries `input_responses`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import socket
import warnings
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio
import uvicorn
from mcp import MCPDeprecationWarning, MCPError, types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.shared.message import ServerMessageMetadata
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

# Logging and sampling are deprecated as of 2026-07-28 (SEP-2577) but are exactly what the 2025-11-25
# scenarios exercise.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

SERVER_NAME: Final = "fleet-conformance-fixture"
SERVER_VERSION: Final = "1.0.0"
LOGGER_NAME: Final = "conformance-fixture"
RESOURCE_NOT_FOUND: Final = -32002  # spec-defined code for resources/read of an unknown URI

# 1x1 red PNG and a minimal WAV (the same bytes the suite's TypeScript reference server uses).
PNG_B64: Final = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_B64: Final = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

LOG_LEVELS: Final[tuple[types.LoggingLevel, ...]] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)

Ctx = ServerRequestContext[Any]
CallParams = types.CallToolRequestParams
Handler = Callable[[Ctx, CallParams], Awaitable[types.CallToolResult | types.InputRequiredResult]]
ResultT = TypeVar("ResultT", bound=BaseModel)


# ----------------------------------------------------------------------------------------------------
# helpers


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _result(*content: types.ContentBlock, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=list(content), is_error=is_error)


def _object_schema(**properties: dict[str, Any]) -> dict[str, Any]:
    """An object inputSchema in which every given property is required."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if properties:
        schema["required"] = list(properties)
    return schema


def _connection_state(ctx: Ctx) -> dict[str, Any]:
    """Per-client scratch space (one `Connection` per legacy session; one per request at 2026-07-28).

    mcp 2.3.0 exposes the `Connection` to lowlevel handlers only through the private `session._connection`.
    """
    state: dict[str, Any] = ctx.session._connection.state
    return state


def _is_modern(ctx: Ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


async def _log(ctx: Ctx, level: types.LoggingLevel, message: str) -> None:
    """Send a `notifications/message` on this request's stream, honouring `logging/setLevel`."""
    threshold = _connection_state(ctx).get("log_level", "debug")
    if LOG_LEVELS.index(level) < LOG_LEVELS.index(threshold):
        return
    await ctx.session.send_log_message(level, message, logger=LOGGER_NAME, related_request_id=ctx.request_id)


async def _ask_client(
    ctx: Ctx,
    params: types.CallToolRequestParams,
    key: str,
    request: types.CreateMessageRequest | types.ElicitRequest,
    result_type: type[ResultT],
) -> ResultT | types.InputRequiredResult:
    """Send a server->client request, era-appropriately.

    Handshake era: a real request on the tools/call's back-channel (the POST's SSE stream over HTTP).
    2026-07-28: there is no back-channel; return `InputRequiredResult` and pick the answer up from the retry.
    """
    if not _is_modern(ctx):
        return await ctx.session.send_request(
            request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
        )
    answer = (params.input_responses or {}).get(key)
    if isinstance(answer, result_type):
        return answer
    return types.InputRequiredResult(input_requests={key: request})


# ----------------------------------------------------------------------------------------------------
# tools


async def test_simple_text(ctx: Ctx, p: CallParams) -> types.CallToolResult:
    return _result(_text("This is a simple text response for testing."))


async def test_image_content(ctx: Ctx, p: CallParams) -> types.CallToolResult:
    return _result(types.ImageContent(type="image", data=PNG_B64, mime_type="image/png"))


async def test_audio_content(ctx: Ctx, p: CallParams) -> types.CallToolResult:
    return _result(types.AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav"))


def _embedded(uri: str, mime_type: str, text: str) -> types.EmbeddedResource:
    return types.EmbeddedResource(
        type="resource", resource=types.TextResourceContents(uri=uri, mime_type=mime_type, text=text)
    )


async def test_embedded_resource(ctx: Ctx, p: CallParams) -> types.CallToolResult:
    return _result(_embedded("test://embedded-resource", "text/plain", "This is an embedded resource content."))


async def test_multiple_content_types(ctx: Ctx, p: CallParams) -> types.CallToolResult:
    return _result(
        _text("Multiple content types test:"),
        types.ImageContent(type="image", data=PNG_B64, mime_type="image/png"),
        _embedded("test://mixed-content-resource", "application/json", json.dumps({"test": "data", "value": 123})),
    )


async def test_tool_with_logging(ctx: Ctx, p: CallParams) -> types.CallToolResult:
    await _log(ctx, "info", "Tool execution started")
    await anyio.sleep(0.05)
    await _log(ctx, "info", "Tool processing data")
    await anyio.sleep(0.05)
    await _log(ctx, "info", "Tool execution completed")
    return _result(_text("Tool with logging executed successfully"))


async def test_tool_with_progress(ctx: Ctx, p: CallParams) -> types.CallToolResult:
    # report_progress is a no-op unless the caller sent _meta.progressToken.
    for step in (0, 50, 100):
        if step:
            await anyio.sleep(0.05)
        await ctx.session.report_progress(step, 100, f"Completed step {step} of 100")
    token = (ctx.meta or {}).get("progress_token")
    return _result(_text(f"Progress reported (token={token!r})"))


async def test_error_handling(ctx: Ctx, p: CallParams) -> types.CallToolResult:
    return _result(_text("This tool intentionally returns an error for testing"), is_error=True)


async def test_reconnection(ctx: Ctx, p: CallParams) -> types.CallToolResult:
    """SEP-1699: close the POST's SSE stream mid-call.

    The client resumes with a GET carrying Last-Event-ID and gets the result replayed from the event store.
    The SDK offers `close_sse_stream` only when an event store is configured and the request's
    MCP-Protocol-Version is >= 2025-11-25; otherwise the result goes out on the original stream.
    """
    await _log(ctx, "info", "Before disconnect")
    if ctx.close_sse_stream is not None:
        await ctx.close_sse_stream()
        await anyio.sleep(0.2)  # the result must be produced after the stream closed, to exercise the replay
    await _log(ctx, "info", "After reconnect")
    return _result(_text("Reconnection test completed successfully."))


async def test_sampling(ctx: Ctx, p: CallParams) -> types.CallToolResult | types.InputRequiredResult:
    prompt = (p.arguments or {}).get("prompt")
    if not isinstance(prompt, str):
        return _result(_text("Missing required string argument 'prompt'"), is_error=True)
    request = types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(
            messages=[types.SamplingMessage(role="user", content=_text(prompt))], max_tokens=100
        )
    )
    answer = await _ask_client(ctx, p, "sampling", request, types.CreateMessageResult)
    if isinstance(answer, types.InputRequiredResult):
        return answer
    reply = answer.content.text if isinstance(answer.content, types.TextContent) else f"<{answer.content.type}>"
    return _result(_text(f"LLM response: {reply}"))


async def _elicit(
    ctx: Ctx, p: CallParams, message: str, schema: dict[str, Any], label: str
) -> types.CallToolResult | types.InputRequiredResult:
    request = types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))
    answer = await _ask_client(ctx, p, "elicitation", request, types.ElicitResult)
    if isinstance(answer, types.InputRequiredResult):
        return answer
    return _result(_text(f"{label}: action={answer.action}, content={json.dumps(answer.content or {})}"))


async def test_elicitation(ctx: Ctx, p: CallParams) -> types.CallToolResult | types.InputRequiredResult:
    message = (p.arguments or {}).get("message")
    if not isinstance(message, str):
        return _result(_text("Missing required string argument 'message'"), is_error=True)
    schema = _object_schema(
        username={"type": "string", "description": "User's response"},
        email={"type": "string", "description": "User's email address"},
    )
    return await _elicit(ctx, p, message, schema, "User response")


SEP1034_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
}


async def test_elicitation_sep1034_defaults(
    ctx: Ctx, p: CallParams
) -> types.CallToolResult | types.InputRequiredResult:
    return await _elicit(
        ctx,
        p,
        "Please review and update the form fields with defaults",
        SEP1034_SCHEMA,
        "Elicitation completed",
    )


SEP1330_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Select one option",
            "enum": ["option1", "option2", "option3"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Select one option with titles",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "description": "Select one option (legacy enumNames)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Select multiple options",
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Select multiple options with titles",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
    "required": [],
}


async def test_elicitation_sep1330_enums(ctx: Ctx, p: CallParams) -> types.CallToolResult | types.InputRequiredResult:
    return await _elicit(ctx, p, "Please select options from the enum fields", SEP1330_SCHEMA, "Elicitation completed")


JSON_SCHEMA_2020_12: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


async def json_schema_2020_12_tool(ctx: Ctx, p: CallParams) -> types.CallToolResult:
    return _result(_text(f"JSON Schema 2020-12 tool called with: {json.dumps(p.arguments or {})}"))


NO_ARGS: Final[dict[str, Any]] = {"type": "object", "properties": {}}

# name -> (description, inputSchema, handler); tools/list is served in this order.
TOOLS: Final[dict[str, tuple[str, dict[str, Any], Handler]]] = {
    "test_simple_text": ("Tests simple text content response", NO_ARGS, test_simple_text),
    "test_image_content": ("Tests image content response", NO_ARGS, test_image_content),
    "test_audio_content": ("Tests audio content response", NO_ARGS, test_audio_content),
    "test_embedded_resource": ("Tests embedded resource content response", NO_ARGS, test_embedded_resource),
    "test_multiple_content_types": (
        "Tests response with multiple content types (text, image, resource)",
        NO_ARGS,
        test_multiple_content_types,
    ),
    "test_tool_with_logging": (
        "Tests tool that emits log messages during execution",
        NO_ARGS,
        test_tool_with_logging,
    ),
    "test_tool_with_progress": (
        "Tests tool that reports progress notifications",
        NO_ARGS,
        test_tool_with_progress,
    ),
    "test_error_handling": ("Tests error response handling", NO_ARGS, test_error_handling),
    "test_reconnection": (
        "Tests SSE stream disconnection and client reconnection (SEP-1699)",
        NO_ARGS,
        test_reconnection,
    ),
    "test_sampling": (
        "Tests server-initiated sampling (LLM completion request)",
        _object_schema(prompt={"type": "string", "description": "The prompt to send to the LLM"}),
        test_sampling,
    ),
    "test_elicitation": (
        "Tests server-initiated elicitation (user input request)",
        _object_schema(message={"type": "string", "description": "The message to show the user"}),
        test_elicitation,
    ),
    "test_elicitation_sep1034_defaults": (
        "Tests elicitation with default values per SEP-1034",
        NO_ARGS,
        test_elicitation_sep1034_defaults,
    ),
    "test_elicitation_sep1330_enums": (
        "Tests elicitation with enum schema improvements per SEP-1330",
        NO_ARGS,
        test_elicitation_sep1330_enums,
    ),
    "json_schema_2020_12_tool": (
        "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
        JSON_SCHEMA_2020_12,
        json_schema_2020_12_tool,
    ),
}


async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(
        tools=[
            types.Tool(name=name, description=description, input_schema=schema)
            for name, (description, schema, _) in TOOLS.items()
        ]
    )


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult | types.InputRequiredResult:
    entry = TOOLS.get(params.name)
    if entry is None:
        raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
    return await entry[2](ctx, params)


# ----------------------------------------------------------------------------------------------------
# resources

STATIC_RESOURCES: Final[dict[str, tuple[types.Resource, types.TextResourceContents | types.BlobResourceContents]]] = {
    "test://static-text": (
        types.Resource(
            uri="test://static-text",
            name="static-text",
            title="Static Text Resource",
            description="A static text resource for testing",
            mime_type="text/plain",
        ),
        types.TextResourceContents(
            uri="test://static-text",
            mime_type="text/plain",
            text="This is the content of the static text resource.",
        ),
    ),
    "test://static-binary": (
        types.Resource(
            uri="test://static-binary",
            name="static-binary",
            title="Static Binary Resource",
            description="A static binary resource (image) for testing",
            mime_type="image/png",
        ),
        types.BlobResourceContents(uri="test://static-binary", mime_type="image/png", blob=PNG_B64),
    ),
    "test://watched-resource": (
        types.Resource(
            uri="test://watched-resource",
            name="watched-resource",
            title="Watched Resource",
            description="A resource clients can subscribe to",
            mime_type="text/plain",
        ),
        types.TextResourceContents(
            uri="test://watched-resource", mime_type="text/plain", text="Watched resource content"
        ),
    ),
}
TEMPLATE: Final = types.ResourceTemplate(
    uri_template="test://template/{id}/data",
    name="template",
    title="Resource Template",
    description="A resource template with parameter substitution",
    mime_type="application/json",
)
TEMPLATE_RE: Final = re.compile(r"^test://template/(?P<id>[^/]+)/data$")


async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=[resource for resource, _ in STATIC_RESOURCES.values()])


async def list_resource_templates(
    ctx: Ctx, params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(resource_templates=[TEMPLATE])


async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    if uri in STATIC_RESOURCES:
        return types.ReadResourceResult(contents=[STATIC_RESOURCES[uri][1]])
    if match := TEMPLATE_RE.match(uri):
        item_id = match["id"]
        text = json.dumps({"id": item_id, "templateTest": True, "data": f"Data for ID: {item_id}"})
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )
    raise MCPError(code=RESOURCE_NOT_FOUND, message="Resource not found", data={"uri": uri})


def _subscriptions(ctx: Ctx) -> set[str]:
    subscribed: set[str] = _connection_state(ctx).setdefault("subscriptions", set())
    return subscribed


async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    _subscriptions(ctx).add(str(params.uri))
    return types.EmptyResult()


async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    _subscriptions(ctx).discard(str(params.uri))
    return types.EmptyResult()


# ----------------------------------------------------------------------------------------------------
# prompts

PROMPTS: Final[dict[str, types.Prompt]] = {
    prompt.name: prompt
    for prompt in (
        types.Prompt(
            name="test_simple_prompt",
            title="Simple Test Prompt",
            description="A simple prompt without arguments",
        ),
        types.Prompt(
            name="test_prompt_with_arguments",
            title="Prompt With Arguments",
            description="A prompt with required arguments",
            arguments=[
                types.PromptArgument(name="arg1", description="First test argument", required=True),
                types.PromptArgument(name="arg2", description="Second test argument", required=True),
            ],
        ),
        types.Prompt(
            name="test_prompt_with_embedded_resource",
            title="Prompt With Embedded Resource",
            description="A prompt that includes an embedded resource",
            arguments=[
                types.PromptArgument(name="resourceUri", description="URI of the resource to embed", required=True)
            ],
        ),
        types.Prompt(
            name="test_prompt_with_image",
            title="Prompt With Image",
            description="A prompt that includes image content",
        ),
    )
}


async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=list(PROMPTS.values()))


def _user(content: types.ContentBlock) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=content)


async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    prompt = PROMPTS.get(params.name)
    if prompt is None:
        raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
    args = params.arguments or {}
    missing = [a.name for a in prompt.arguments or [] if a.required and a.name not in args]
    if missing:
        raise MCPError(code=types.INVALID_PARAMS, message=f"Missing required arguments: {', '.join(missing)}")
    if prompt.name == "test_simple_prompt":
        messages = [_user(_text("This is a simple prompt for testing."))]
    elif prompt.name == "test_prompt_with_arguments":
        messages = [_user(_text(f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"))]
    elif prompt.name == "test_prompt_with_embedded_resource":
        messages = [
            _user(_embedded(args["resourceUri"], "text/plain", "Embedded resource content for testing.")),
            _user(_text("Please process the embedded resource above.")),
        ]
    else:  # test_prompt_with_image
        messages = [
            _user(types.ImageContent(type="image", data=PNG_B64, mime_type="image/png")),
            _user(_text("Please analyze the image above.")),
        ]
    return types.GetPromptResult(description=prompt.description, messages=messages)


# ----------------------------------------------------------------------------------------------------
# utilities: completion, logging

COMPLETIONS: Final[dict[str, list[str]]] = {
    "arg1": ["paris", "park", "party", "test", "testValue1"],
    "arg2": ["world", "testValue2"],
    "resourceUri": ["test://static-text", "test://static-binary", "test://watched-resource"],
    "id": ["1", "123", "42"],
}


async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
    ref = params.ref
    known = (isinstance(ref, types.PromptReference) and ref.name in PROMPTS) or (
        isinstance(ref, types.ResourceTemplateReference) and ref.uri == TEMPLATE.uri_template
    )
    candidates = COMPLETIONS.get(params.argument.name, []) if known else []
    values = [v for v in candidates if v.startswith(params.argument.value)]
    return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))


async def set_logging_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    _connection_state(ctx)["log_level"] = params.level
    return types.EmptyResult()


# ----------------------------------------------------------------------------------------------------
# server + transports


def build_server() -> Server[Any]:
    return Server(
        SERVER_NAME,
        version=SERVER_VERSION,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
        on_set_logging_level=set_logging_level,
    )


class BoundedEventStore(EventStore):
    """In-memory SSE event store for resumability (SEP-1699), keeping the newest `max_events` events."""

    def __init__(self, max_events: int = 10_000) -> None:
        self._events: deque[tuple[StreamId, int, types.JSONRPCMessage | None]] = deque(maxlen=max_events)
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        event_id = next(self._ids)
        self._events.append((stream_id, event_id, message))
        return str(event_id)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        stream = next((sid for sid, eid, _ in self._events if eid == after), None)
        if stream is None:
            return None
        for sid, eid, message in list(self._events):
            # message None is a priming event: nothing to replay
            if sid == stream and eid > after and message is not None:
                await send_callback(EventMessage(message, str(eid)))
        return stream


def serve_http(port: int) -> None:
    """Serve streamable HTTP on 127.0.0.1:`port` (0 = any free port) at /mcp until SIGINT/SIGTERM."""
    app = build_server().streamable_http_app(
        streamable_http_path="/mcp",
        event_store=BoundedEventStore(),
        retry_interval=100,  # ms; the SSE `retry:` hint in priming events
        host="127.0.0.1",  # turns on DNS-rebinding protection (Host/Origin must be localhost-ish)
    )
    # IPPROTO_TCP explicitly: asyncio enables TCP_NODELAY only on accepted sockets whose proto is IPPROTO_TCP;
    # with proto 0 every small response waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    print(f"http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])


async def serve_stdio() -> None:
    server = build_server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--port", type=int, default=0, help="HTTP port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    if args.http:
        serve_http(args.port)
    else:
        anyio.run(serve_stdio)


if __name__ == "__main__":
    main()
