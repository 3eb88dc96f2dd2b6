"""The demo tracker environment, driven through real MCP clients (in-process and stdio subprocess)."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.types import CallToolResult, TextContent

import fleet_mcp_proxy
from fleet_mcp_proxy.demo import DEMO_ENV_NAME, demo_command
from fleet_mcp_proxy.demo.db import CURRENT_FILE, SEED_FILE, prepare_instance
from fleet_mcp_proxy.demo.server import build_server

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(fleet_mcp_proxy.__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT = 60  # a cold interpreter importing the SDK takes a few seconds on a busy machine


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def dump(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def query(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


@asynccontextmanager
async def in_process(data_dir: Path) -> AsyncIterator[Client]:
    async with Client(build_server(prepare_instance(data_dir)), mode="legacy") as client:
        await client.list_tools()  # call_tool validates against the listed output schemas
        yield client


def stdio_params(data_dir: Path, *extra: str) -> StdioServerParameters:
    # cwd: the child finds the package from the source tree even when it is not installed.
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "fleet_mcp_proxy.demo", "--data-dir", str(data_dir), *extra],
        cwd=str(REPO_ROOT),
    )


async def call(client: Client, name: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return dict(result.structured_content)


async def call_error(client: Client, name: str, **arguments: Any) -> str:
    result = await client.call_tool(name, arguments)
    assert result.is_error, result
    message = text_of(result)
    assert "Traceback" not in message
    return message


async def test_tools_have_descriptions_and_schemas(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with in_process(tmp_path) as client:
            tools = (await client.list_tools()).tools
    names = {t.name for t in tools}
    assert len(tools) >= 8
    assert {
        "list_issues",
        "get_issue",
        "search_issues",
        "create_issue",
        "update_issue",
        "add_comment",
    } <= names
    for tool in tools:
        assert tool.description, tool.name
        assert tool.input_schema["type"] == "object", tool.name
        assert tool.output_schema and tool.output_schema["type"] == "object", tool.name


async def test_seed_is_deterministic(tmp_path: Path) -> None:
    a, b = prepare_instance(tmp_path / "a"), prepare_instance(tmp_path / "b")
    seed_a, seed_b = tmp_path / "a" / SEED_FILE, tmp_path / "b" / SEED_FILE
    assert dump(seed_a) == dump(seed_b) == dump(a) == dump(b)
    counts = {t: query(seed_a, f"SELECT count(*) FROM {t}")[0][0] for t in ("projects", "users", "issues")}
    assert counts == {"projects": 3, "users": 5, "issues": 20}
    assert query(seed_a, "SELECT count(*) FROM comments")[0][0] > 0
    assert query(seed_a, "SELECT count(*) FROM issue_labels")[0][0] > 0
    assert query(seed_a, "PRAGMA foreign_key_check") == []


async def test_writes_change_current_only(tmp_path: Path) -> None:
    pristine = dump(prepare_instance(tmp_path / "pristine"))
    with anyio.fail_after(10):
        async with in_process(tmp_path / "inst") as client:
            created = await call(
                client,
                "create_issue",
                project="api",
                title="  Webhook  retries ",
                priority="high",
                labels=["bug"],
            )
            new_id = created["id"]
            assert (created["project"], created["title"], created["status"]) == (
                "API",
                "Webhook retries",
                "open",
            )
            await call(client, "update_issue", issue_id=new_id, body="Retries stop after 3 attempts.")
            await call(client, "assign_issue", issue_id=new_id, assignee="carol")
            await call(client, "add_label", issue_id=new_id, label="docs")
            await call(client, "remove_label", issue_id=new_id, label="bug")
            comment = await call(client, "add_comment", issue_id=new_id, author="dave", body="On it.")
            closed = await call(client, "close_issue", issue_id=new_id, resolution="duplicate")
            assert closed["closed_at"] == closed["updated_at"] and closed["updated_at"] > created["created_at"]
            issue = await call(client, "get_issue", issue_id=new_id)
    assert issue["labels"] == ["docs"] and issue["assignee"] == "carol"
    assert issue["comments"] == [comment]

    current, seed = tmp_path / "inst" / CURRENT_FILE, tmp_path / "inst" / SEED_FILE
    assert dump(seed) == pristine
    row = query(
        current,
        "SELECT title, body, status, resolution, u.username"
        " FROM issues i JOIN users u ON u.id = i.assignee_id WHERE i.id = ?",
        new_id,
    )
    assert row == [("Webhook retries", "Retries stop after 3 attempts.", "closed", "duplicate", "carol")]
    assert query(current, "SELECT body FROM comments WHERE issue_id = ?", new_id) == [("On it.",)]
    assert query(seed, "SELECT count(*) FROM issues WHERE id = ?", new_id) == [(0,)]


async def test_reopen_clears_resolution_and_noop_writes_change_nothing(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with in_process(tmp_path) as client:
            before = dump(tmp_path / CURRENT_FILE)
            await call(client, "assign_issue", issue_id=1, assignee="alice")  # already alice
            await call(client, "add_label", issue_id=1, label="bug")  # already has it
            assert dump(tmp_path / CURRENT_FILE) == before
            reopened = await call(client, "update_issue", issue_id=4, status="open")
    assert (reopened["status"], reopened["resolution"], reopened["closed_at"]) == ("open", None, None)


async def test_invalid_input_is_a_readable_tool_error(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with in_process(tmp_path) as client:
            before = dump(tmp_path / CURRENT_FILE)
            assert "Issue 999 does not exist" in await call_error(client, "get_issue", issue_id=999)
            bad_status = await call_error(client, "update_issue", issue_id=1, status="done")
            assert "status" in bad_status and "'in_progress'" in bad_status and "'done'" in bad_status
            assert "issue_id" in await call_error(client, "get_issue", issue_id="abc")
            assert "Field required" in await call_error(client, "add_comment", issue_id=1, body="x")
            assert "close_issue" in await call_error(client, "update_issue", issue_id=1, status="closed")
            assert "Known users: alice" in await call_error(client, "assign_issue", issue_id=1, assignee="zed")
            assert "Known labels:" in await call_error(client, "add_label", issue_id=1, label="nope")
            assert "Known projects: WEB, API, OPS" in await call_error(client, "list_issues", project="XYZ")
            assert "already closed" in await call_error(client, "close_issue", issue_id=4)
            assert "no label" in await call_error(client, "remove_label", issue_id=2, label="bug")
            assert "Nothing to update" in await call_error(client, "update_issue", issue_id=2)
            assert "title" in await call_error(client, "create_issue", project="WEB", title="   ")
            assert dump(tmp_path / CURRENT_FILE) == before


async def test_list_filters_pagination_and_search(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with in_process(tmp_path) as client:
            seen: list[int] = []
            offset: int | None = 0
            while offset is not None:
                page = await call(client, "list_issues", limit=7, offset=offset)
                assert page["total"] == 20
                seen += [i["id"] for i in page["issues"]]
                offset = page["next_offset"]
            assert seen == list(range(1, 21))

            unassigned = await call(client, "list_issues", assignee="unassigned", status="open")
            assert {i["id"] for i in unassigned["issues"]} == {2, 6, 10, 17}
            bugs = await call(client, "list_issues", project="WEB", label="bug")
            assert {i["id"] for i in bugs["issues"]} == {1, 5, 6}
            found = await call(client, "search_issues", query="JPY rounding")
            assert [i["id"] for i in found["issues"]] == [13]
            assert (await call(client, "search_issues", query="100%"))["total"] == 0  # % is literal
            projects = await call(client, "list_projects")
            assert [p["key"] for p in projects["projects"]] == ["WEB", "API", "OPS"]


async def test_resources_and_prompt(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with in_process(tmp_path) as client:
            resources = (await client.list_resources()).resources
            assert [str(r.uri) for r in resources] == ["tracker://schema"]
            schema = (await client.read_resource("tracker://schema")).contents[0]
            assert "CREATE TABLE issues" in getattr(schema, "text", "")
            issue = (await client.read_resource("tracker://issues/13")).contents[0]
            assert "JPY" in getattr(issue, "text", "")
            prompt = await client.get_prompt("triage", {"project": "OPS"})
            content = prompt.messages[0].content
            assert isinstance(content, TextContent) and "#17" in content.text
            with pytest.raises(MCPError, match="Unknown project"):
                await client.get_prompt("triage", {"project": "nope"})


async def test_same_calls_on_fresh_instances_give_identical_databases(tmp_path: Path) -> None:
    # The logical clock makes an episode's effect on current.sqlite a pure function of its calls.
    dumps = []
    for name in ("a", "b"):
        with anyio.fail_after(10):
            async with in_process(tmp_path / name) as client:
                await call(client, "create_issue", project="OPS", title="Rotate logs", reporter="erin")
                await call(client, "add_comment", issue_id=3, author="bob", body="Thumbnails next sprint.")
        dumps.append(dump(tmp_path / name / CURRENT_FILE))
    assert dumps[0] == dumps[1]


async def test_restart_keeps_current_state(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with in_process(tmp_path) as client:
            await call(client, "close_issue", issue_id=2, resolution="wont_fix")
        async with in_process(tmp_path) as client:
            assert (await call(client, "get_issue", issue_id=2))["status"] == "closed"


async def test_stdio_subprocess_instances_are_independent(tmp_path: Path) -> None:
    dir_a, dir_b = tmp_path / "a" / "nested", tmp_path / "b"
    with anyio.fail_after(SUBPROCESS_TIMEOUT):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(Client(stdio_params(dir_a), mode="legacy"))
            b = await stack.enter_async_context(Client(stdio_params(dir_b), mode="legacy"))
            assert len((await a.list_tools()).tools) >= 8
            await b.list_tools()
            created = await call(a, "create_issue", project="WEB", title="Only in A")
            await call(a, "add_comment", issue_id=1, author="erin", body="A was here")
            assert "does not exist" in await call_error(b, "get_issue", issue_id=created["id"])
            assert len((await call(b, "get_issue", issue_id=1))["comments"]) == 2
            bad = await call_error(a, "update_issue", issue_id=1, priority="critical")
            assert "priority" in bad and "'urgent'" in bad
    assert query(dir_a / CURRENT_FILE, "SELECT title FROM issues WHERE id = ?", created["id"]) == [("Only in A",)]
    assert query(dir_b / CURRENT_FILE, "SELECT count(*) FROM issues") == [(20,)]
    assert dump(dir_a / SEED_FILE) == dump(dir_b / SEED_FILE) == dump(dir_b / CURRENT_FILE)


async def test_without_data_dir_the_temporary_instance_is_removed(tmp_path: Path) -> None:
    with anyio.fail_after(SUBPROCESS_TIMEOUT):
        # stdin at EOF: the server starts, finds no client and exits.
        done = await anyio.run_process(
            [sys.executable, "-m", "fleet_mcp_proxy.demo", "--log-level", "INFO"],
            input=b"",
            cwd=REPO_ROOT,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""
    line = next(ln for ln in done.stderr.decode().splitlines() if "tracker instance at" in ln)
    assert not await anyio.Path(line.rsplit(" ", 1)[1]).exists()


def test_demo_command() -> None:
    assert DEMO_ENV_NAME == "tracker"
    assert demo_command("/x") == [sys.executable, "-m", "fleet_mcp_proxy.demo", "--data-dir", "/x"]
