"""A backend MCP server exercising every feature the proxy forwards (tests only).

    python tests/backends/kitchen.py NAME                 # stdio
    python tests/backends/kitchen.py NAME --http          # streamable HTTP on a free loopback port;
                                                          # prints "READY <url>" on stdout
    python tests/backends/kitchen.py NAME --start-delay S # answer nothing for S seconds first (a slow start)
Set KITCHEN_EVENTS=<file> to have it append what it observed (cancellations) to that file.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import warnings
from typing import Any

import anyio
import mcp_types as t
import uvicorn
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

warnings.simplefilter("ignore")
PAGE = 3
Ctx = ServerRequestContext[Any, Any]


def _event(line: str) -> None:
    path = os.environ.get("KITCHEN_EVENTS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def _record_call(name: str, request_id: Any) -> None:
    """Which path carried a call: the proxy's lanes send string ids, the SDK client integers."""
    path = os.environ.get("KITCHEN_CALL_IDS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps([name, request_id]) + "\n")


def _text(text: str) -> list[t.ContentBlock]:
    return [t.TextContent(type="text", text=text)]


def build(name: str) -> Server[Any]:
    obj: dict[str, Any] = {"type": "object"}
    tools = [
        t.Tool(
            name="echo",
            description=f"Echo text back ({name}).",
            input_schema={**obj, "properties": {"text": {"type": "string"}}, "required": ["text"]},
            output_schema={**obj, "properties": {"text": {"type": "string"}, "backend": {"type": "string"}}},
        ),
        t.Tool(
            name="add",
            description="Add two points.",
            input_schema={
                **obj,
                "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}}}},
                "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
                "additionalProperties": False,
            },
            annotations=t.ToolAnnotations(read_only_hint=True, title="Adder"),
            _meta={"kitchen/flavour": "salty"},
        ),
        t.Tool(name="media", description="Every content type.", input_schema=obj),
        t.Tool(name="fail", description="A tool error.", input_schema=obj),
        t.Tool(name="protocol_error", description="A JSON-RPC error.", input_schema=obj),
        t.Tool(
            name="count",
            description="Progress.",
            input_schema={**obj, "properties": {"n": {"type": "integer"}}},
        ),
        t.Tool(name="block", description="Wait until cancelled.", input_schema=obj),
        t.Tool(
            name="big",
            description="A large text.",
            input_schema={**obj, "properties": {"size": {"type": "integer"}}},
        ),
        t.Tool(name="ask_llm", description="Sampling.", input_schema=obj),
        t.Tool(name="ask_user", description="Elicitation.", input_schema=obj),
        t.Tool(name="roots", description="Roots.", input_schema=obj),
        t.Tool(name="chatty", description="Log and list_changed.", input_schema=obj),
        t.Tool(
            name="touch",
            description="resources/updated.",
            input_schema={**obj, "properties": {"uri": {"type": "string"}}},
        ),
        t.Tool(name="pid", description="The backend's pid.", input_schema=obj),
        t.Tool(
            name="nap",
            description="Sleep silently, reporting progress only after each of `steps` equal parts (0: never).",
            input_schema={**obj, "properties": {"seconds": {"type": "number"}, "steps": {"type": "integer"}}},
        ),
        t.Tool(name="crash", description="Exit mid-call.", input_schema=obj),
        t.Tool(name=f"only_{name}", description="Unique to this backend.", input_schema=obj),
    ]
    extra = t.Tool(name=f"extra_{name}", description="Appears after chatty.", input_schema=obj)
    state: dict[str, Any] = {"extra": False}
    waiting: list[anyio.Event] = []  # ask_user calls with pair=true waiting for a partner

    async def list_tools(ctx: Ctx, params: t.PaginatedRequestParams | None) -> t.ListToolsResult:
        listed = tools + ([extra] if state["extra"] else [])
        start = int(params.cursor) if params and params.cursor else 0
        end = start + PAGE
        return t.ListToolsResult(tools=listed[start:end], next_cursor=str(end) if end < len(listed) else None)

    async def call_tool(ctx: Ctx, p: t.CallToolRequestParams) -> t.CallToolResult:
        args = p.arguments or {}
        _record_call(p.name, ctx.request_id)
        s = ctx.session
        if p.name == "echo":
            text = str(args.get("text", ""))
            return t.CallToolResult(content=_text(text), structured_content={"text": text, "backend": name})
        if p.name == "add":
            total = float(args["a"]["x"]) + float(args["b"]["x"])
            return t.CallToolResult(content=_text(str(total)), _meta={"kitchen/sum": total})
        if p.name == "media":
            return t.CallToolResult(
                content=[
                    t.TextContent(type="text", text="héllo ✓ \u0000 end"),
                    t.ImageContent(type="image", data="iVBORw0KGgo=", mime_type="image/png"),
                    t.AudioContent(type="audio", data="UklGRg==", mime_type="audio/wav"),
                    t.EmbeddedResource(
                        type="resource",
                        resource=t.TextResourceContents(
                            uri=f"mem://{name}/info", text="embedded", mime_type="text/plain"
                        ),
                    ),
                    t.ResourceLink(type="resource_link", uri=f"mem://{name}/info", name="info"),
                ]
            )
        if p.name == "fail":
            return t.CallToolResult(content=_text("it went wrong"), is_error=True)
        if p.name == "protocol_error":
            raise MCPError(code=t.INVALID_PARAMS, message="bad arguments", data={"field": "x"})
        if p.name == "count":
            n = int(args.get("n", 3))
            for i in range(1, n + 1):
                await s.report_progress(i, n, f"step {i}")
            return t.CallToolResult(content=_text(f"counted {n}"))
        if p.name == "block":
            _event(f"block started {ctx.request_id}")
            try:
                await anyio.Event().wait()
            except anyio.get_cancelled_exc_class():
                _event(f"block cancelled {ctx.request_id}")
                raise
        if p.name == "big":
            return t.CallToolResult(content=_text("x" * int(args.get("size", 1024))))
        if p.name == "ask_llm":
            r = await s.create_message(
                [t.SamplingMessage(role="user", content=t.TextContent(type="text", text=f"hello from {name}"))],
                max_tokens=16,
                related_request_id=ctx.request_id,
            )
            content = r.content
            return t.CallToolResult(content=_text(f"sampled: {getattr(content, 'text', '?')}"))
        if p.name == "ask_user":
            if args.get("pair"):  # elicit only once two such calls are in flight at once
                if waiting:
                    waiting.pop().set()
                else:
                    partner = anyio.Event()
                    waiting.append(partner)
                    with anyio.fail_after(60):
                        await partner.wait()
            label = f" ({args['label']})" if "label" in args else ""
            r2 = await s.elicit_form(
                f"Your name?{label}", {"type": "object", "properties": {"n": {"type": "string"}}}, ctx.request_id
            )
            return t.CallToolResult(content=_text(f"elicited: {r2.action} {r2.content}"))
        if p.name == "roots":
            r3 = await s.send_request(t.ListRootsRequest(), t.ListRootsResult)
            return t.CallToolResult(content=_text("roots: " + ",".join(str(r.uri) for r in r3.roots)))
        if p.name == "chatty":
            await s.send_log_message("warning", f"{name} says hi", logger=name, related_request_id=ctx.request_id)
            state["extra"] = True
            await s.send_tool_list_changed()
            return t.CallToolResult(content=_text("chatted"))
        if p.name == "touch":
            await s.send_resource_updated(str(args.get("uri", f"mem://{name}/info")))
            return t.CallToolResult(content=_text("touched"))
        if p.name == "pid":
            return t.CallToolResult(content=_text(str(os.getpid())), structured_content={"pid": os.getpid()})
        if p.name == "nap":
            seconds, steps = float(args.get("seconds", 1.0)), int(args.get("steps", 0))
            for i in range(1, max(steps, 1) + 1):
                await anyio.sleep(seconds / max(steps, 1))
                if steps:
                    await s.report_progress(i, steps, f"part {i}")
            return t.CallToolResult(content=_text(f"napped {seconds:g} s"))
        if p.name == "crash":
            os._exit(3)
        if p.name == f"only_{name}":
            return t.CallToolResult(content=_text(name))
        raise MCPError(code=t.INVALID_PARAMS, message=f"Unknown tool: {p.name}")

    resources = [
        t.Resource(uri=f"mem://{name}/info", name="info", mime_type="text/plain"),
        t.Resource(uri="mem://shared", name="shared", mime_type="text/plain"),
    ]
    templates = [t.ResourceTemplate(uri_template=f"mem://{name}/items/{{id}}", name="item")]

    async def list_resources(ctx: Ctx, params: t.PaginatedRequestParams | None) -> t.ListResourcesResult:
        return t.ListResourcesResult(resources=resources)

    async def list_templates(ctx: Ctx, params: t.PaginatedRequestParams | None) -> t.ListResourceTemplatesResult:
        return t.ListResourceTemplatesResult(resource_templates=templates)

    async def read_resource(ctx: Ctx, params: t.ReadResourceRequestParams) -> t.ReadResourceResult:
        uri = str(params.uri)
        if uri == f"mem://{name}/info" or uri == "mem://shared" or uri.startswith(f"mem://{name}/items/"):
            return t.ReadResourceResult(
                contents=[t.TextResourceContents(uri=uri, text=f"{name}:{uri}", mime_type="text/plain")]
            )
        raise MCPError(code=t.INVALID_PARAMS, message=f"Unknown resource: {uri}")

    async def subscribe(ctx: Ctx, params: t.SubscribeRequestParams) -> t.EmptyResult:
        return t.EmptyResult()

    prompts = [
        t.Prompt(
            name="greet",
            description="Greet someone.",
            arguments=[t.PromptArgument(name="who", required=True)],
        ),
        t.Prompt(name=f"{name}_prompt", description="Unique prompt."),
    ]

    async def list_prompts(ctx: Ctx, params: t.PaginatedRequestParams | None) -> t.ListPromptsResult:
        return t.ListPromptsResult(prompts=prompts)

    async def get_prompt(ctx: Ctx, params: t.GetPromptRequestParams) -> t.GetPromptResult:
        who = (params.arguments or {}).get("who", "nobody")
        return t.GetPromptResult(
            messages=[t.PromptMessage(role="user", content=t.TextContent(type="text", text=f"{name} greets {who}"))]
        )

    async def complete(ctx: Ctx, params: t.CompleteRequestParams) -> t.CompleteResult:
        prefix = params.argument.value
        values = [v for v in ("alice", "albert", "bob") if v.startswith(prefix)]
        return t.CompleteResult(completion=t.Completion(values=values, total=len(values), has_more=False))

    return Server(
        name,
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=subscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
    )


async def _serve_http(server: Server[Any]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    app = server.streamable_http_app(host="127.0.0.1")
    uv = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    sock.listen(128)  # a client that read READY may connect at once: it queues until uvicorn accepts
    print(f"READY http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    await uv.serve(sockets=[sock])


async def _main() -> None:
    server = build(sys.argv[1] if len(sys.argv) > 1 else "kitchen")
    if "--start-delay" in sys.argv:
        await anyio.sleep(float(sys.argv[sys.argv.index("--start-delay") + 1]))
    if "--http" in sys.argv:
        await _serve_http(server)
        return
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(_main)
