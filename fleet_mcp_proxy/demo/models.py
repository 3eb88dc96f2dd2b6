"""Pydantic models the tracker returns; MCPServer derives each tool's output schema from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Status = Literal["open", "in_progress", "closed"]
Priority = Literal["low", "medium", "high", "urgent"]
Resolution = Literal["fixed", "wont_fix", "duplicate", "invalid"]

STATUSES: tuple[Status, ...] = ("open", "in_progress", "closed")
PRIORITIES: tuple[Priority, ...] = ("low", "medium", "high", "urgent")
RESOLUTIONS: tuple[Resolution, ...] = ("fixed", "wont_fix", "duplicate", "invalid")


class Project(BaseModel):
    key: str = Field(description="Short project key, e.g. 'WEB'; tools take this as `project`.")
    name: str
    description: str
    open_issues: int = Field(description="Issues in this project that are not closed.")


class User(BaseModel):
    username: str = Field(description="Login name; tools take this as `assignee`/`author`.")
    display_name: str
    email: str


class Label(BaseModel):
    name: str
    color: str
    issue_count: int


class Comment(BaseModel):
    id: int
    author: str
    body: str
    created_at: str


class IssueSummary(BaseModel):
    id: int
    project: str
    title: str
    status: Status
    priority: Priority
    assignee: str | None
    labels: list[str]
    updated_at: str


class Issue(BaseModel):
    id: int
    project: str
    title: str
    body: str
    status: Status
    priority: Priority
    resolution: Resolution | None = Field(description="Set only while the issue is closed.")
    assignee: str | None
    reporter: str | None
    labels: list[str]
    comments: list[Comment]
    created_at: str
    updated_at: str
    closed_at: str | None


class IssuePage(BaseModel):
    issues: list[IssueSummary]
    total: int = Field(description="Number of matching issues across all pages.")
    offset: int
    limit: int
    next_offset: int | None = Field(description="Pass as `offset` to get the next page; null on the last page.")


class ProjectList(BaseModel):
    projects: list[Project]


class UserList(BaseModel):
    users: list[User]


class LabelList(BaseModel):
    labels: list[Label]
