"""The tracker as an MCP server: tools, one resource, one resource template and one prompt."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError, UnexpectedToolError
from mcp.types import INVALID_PARAMS, CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import Field, ValidationError

from .db import UNASSIGNED, TrackerError
from .models import Comment, Issue, IssuePage, LabelList, Priority, ProjectList, Resolution, Status, UserList
from .schema import SCHEMA
from .tracker import Tracker

SERVER_NAME = "tracker"

IssueId = Annotated[int, Field(ge=1, description="Numeric issue id, as shown by list_issues.")]
ProjectKey = Annotated[str, Field(min_length=1, description="Project key, e.g. 'WEB' (see list_projects).")]
Username = Annotated[str, Field(min_length=1, description="Username, e.g. 'alice' (see list_users).")]
LabelName = Annotated[str, Field(min_length=1, description="Label name, e.g. 'bug' (see list_labels).")]
Title = Annotated[str, Field(min_length=1, max_length=200, description="One-line summary.")]
Body = Annotated[str, Field(max_length=10_000, description="Markdown description.")]
Limit = Annotated[int, Field(ge=1, le=100, description="Page size (1-100).")]
Offset = Annotated[int, Field(ge=0, description="Number of matching issues to skip.")]

_READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
_SET = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


class _TrackerServer(MCPServer):
    """An MCPServer whose argument errors read as one short line per bad field.

    The SDK's own text is pydantic's multi-line report with documentation links, which costs an
    agent tokens and says the same thing less plainly.
    """

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(exc, UnexpectedToolError) or not isinstance(cause, ValidationError):
                raise
            raise ToolError(f"Invalid arguments for {name}: {_describe(cause)}") from cause


def _describe(error: ValidationError) -> str:
    parts = []
    for e in error.errors(include_url=False):
        field = ".".join(str(p) for p in e["loc"]) or "arguments"
        got = "" if e["type"] == "missing" else f" (got {_short(e['input'])})"
        parts.append(f"{field}: {e['msg']}{got}")
    return "; ".join(parts) + "."


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@contextlib.contextmanager
def _agent_errors() -> Iterator[None]:
    # ToolError is the SDK's "anticipated failure": its text reaches the agent as an is_error result.
    # Anything else would be reported as a bare "Error executing tool".
    try:
        yield
    except TrackerError as exc:
        raise ToolError(str(exc)) from exc


def build_server(current_db: Path) -> MCPServer:
    """Build a tracker server that reads and writes the SQLite file `current_db`.

    Handlers call sqlite inline on the event loop rather than in a worker thread: each call is a
    sub-millisecond transaction on a small local file, and running them one at a time keeps every
    tool call atomic with respect to the others without any locking of our own.
    """
    tracker = Tracker(current_db)
    mcp = _TrackerServer(
        SERVER_NAME,
        title="Demo issue tracker",
        instructions=(
            "A small issue tracker with projects, users, labels, issues and comments. Use list_projects, "
            "list_users and list_labels to learn valid names, list_issues/search_issues to find issues and "
            "get_issue for full details; the other tools change issues."
        ),
        log_level="WARNING",
    )

    @mcp.tool(annotations=_READ)
    async def list_projects() -> ProjectList:
        """List all projects with their keys and number of open issues."""
        return tracker.list_projects()

    @mcp.tool(annotations=_READ)
    async def list_users() -> UserList:
        """List all users who can be assigned issues or write comments."""
        return tracker.list_users()

    @mcp.tool(annotations=_READ)
    async def list_labels() -> LabelList:
        """List all labels that can be put on issues, with how many issues carry each."""
        return tracker.list_labels()

    @mcp.tool(annotations=_READ)
    async def list_issues(
        project: ProjectKey | None = None,
        status: Status | None = None,
        priority: Priority | None = None,
        assignee: Annotated[
            str | None, Field(description=f"Username, or '{UNASSIGNED}' for issues nobody is assigned to.")
        ] = None,
        label: LabelName | None = None,
        limit: Limit = 20,
        offset: Offset = 0,
    ) -> IssuePage:
        """List issues ordered by id, optionally filtered; all filters combine with AND. Paginated."""
        with _agent_errors():
            return tracker.list_issues(
                project=project,
                status=status,
                priority=priority,
                assignee=assignee,
                label=label,
                limit=limit,
                offset=offset,
            )

    @mcp.tool(annotations=_READ)
    async def search_issues(
        query: Annotated[str, Field(min_length=1, description="Words that must all occur in title or body.")],
        project: ProjectKey | None = None,
        status: Status | None = None,
        limit: Limit = 20,
        offset: Offset = 0,
    ) -> IssuePage:
        """Find issues whose title or body contains every word of `query` (case-insensitive)."""
        if not query.split():
            raise ToolError("The query must contain at least one word.")
        with _agent_errors():
            return tracker.list_issues(query=query, project=project, status=status, limit=limit, offset=offset)

    @mcp.tool(annotations=_READ)
    async def get_issue(issue_id: IssueId) -> Issue:
        """Get one issue with its full body, labels, resolution and comments."""
        with _agent_errors():
            return tracker.get_issue(issue_id)

    @mcp.tool(annotations=_WRITE)
    async def create_issue(
        project: ProjectKey,
        title: Title,
        body: Body = "",
        priority: Priority = "medium",
        assignee: Username | None = None,
        reporter: Username | None = None,
        labels: Annotated[list[str] | None, Field(max_length=10, description="Label names to attach.")] = None,
    ) -> Issue:
        """Create a new open issue in a project and return it with its new id."""
        with _agent_errors():
            return tracker.create_issue(
                project=project,
                title=title,
                body=body,
                priority=priority,
                assignee=assignee,
                reporter=reporter,
                labels=labels or (),
            )

    @mcp.tool(annotations=_SET)
    async def update_issue(
        issue_id: IssueId,
        title: Title | None = None,
        body: Body | None = None,
        priority: Priority | None = None,
        status: Annotated[
            Status | None,
            Field(description="'open' or 'in_progress'; setting 'open' reopens a closed issue."),
        ] = None,
    ) -> Issue:
        """Change an issue's title, body, priority and/or status; omitted fields stay as they are.

        To close an issue use close_issue, which records a resolution.
        """
        with _agent_errors():
            return tracker.update_issue(issue_id, title=title, body=body, priority=priority, status=status)

    @mcp.tool(annotations=_SET)
    async def assign_issue(
        issue_id: IssueId,
        assignee: Annotated[str | None, Field(description="Username, or null to unassign.")],
    ) -> Issue:
        """Assign an issue to a user, or unassign it by passing null."""
        with _agent_errors():
            return tracker.assign_issue(issue_id, assignee)

    @mcp.tool(annotations=_SET)
    async def add_label(issue_id: IssueId, label: LabelName) -> Issue:
        """Put an existing label on an issue (no change if it already has it)."""
        with _agent_errors():
            return tracker.add_label(issue_id, label)

    @mcp.tool(annotations=_WRITE)
    async def remove_label(issue_id: IssueId, label: LabelName) -> Issue:
        """Take a label off an issue."""
        with _agent_errors():
            return tracker.remove_label(issue_id, label)

    @mcp.tool(annotations=_WRITE)
    async def add_comment(
        issue_id: IssueId,
        author: Username,
        body: Annotated[str, Field(min_length=1, max_length=10_000, description="Comment text (Markdown).")],
    ) -> Comment:
        """Add a comment to an issue as the given user."""
        with _agent_errors():
            return tracker.add_comment(issue_id, author, body)

    @mcp.tool(annotations=_WRITE)
    async def close_issue(
        issue_id: IssueId,
        resolution: Annotated[Resolution, Field(description="Why the issue is closed.")] = "fixed",
    ) -> Issue:
        """Close an open or in-progress issue with a resolution (fixed, wont_fix, duplicate, invalid)."""
        with _agent_errors():
            return tracker.close_issue(issue_id, resolution)

    @mcp.resource("tracker://schema", name="schema", mime_type="application/sql")
    def schema() -> str:
        """The SQL schema of the tracker database (seed.sqlite and current.sqlite)."""
        return SCHEMA

    @mcp.resource("tracker://issues/{issue_id}", name="issue", mime_type="application/json")
    def issue_resource(issue_id: int) -> str:
        """One issue with its labels and comments, as JSON."""
        try:
            return tracker.get_issue(issue_id).model_dump_json(indent=2)
        except TrackerError as exc:
            raise ResourceNotFoundError(str(exc)) from exc

    @mcp.prompt()
    def triage(project: str) -> str:
        """Ask the agent to triage the open, unassigned issues of one project."""
        try:
            page = tracker.list_issues(project=project, status="open", assignee=UNASSIGNED, limit=100)
        except TrackerError as exc:
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from exc
        lines = [f"- #{i.id} [{i.priority}] {i.title} (labels: {', '.join(i.labels) or 'none'})" for i in page.issues]
        listing = "\n".join(lines) or "(there are no open unassigned issues)"
        return (
            f"Triage the open, unassigned issues of project {project.upper()}.\n\n{listing}\n\n"
            "For each issue: read it with get_issue, set a fitting priority with update_issue, add labels "
            "with add_label, assign it to a suitable user with assign_issue (see list_users and who handles "
            "similar issues), and add a short comment explaining your decision."
        )

    return mcp
