"""The tracker's SQL schema and its logical clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

SCHEMA = """\
CREATE TABLE projects (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE users (
    id           INTEGER PRIMARY KEY,
    username     TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    email        TEXT NOT NULL UNIQUE
);
CREATE TABLE issues (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects(id),
    title       TEXT NOT NULL CHECK (length(trim(title)) > 0),
    body        TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'in_progress', 'closed')),
    priority    TEXT NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high', 'urgent')),
    resolution  TEXT CHECK (resolution IN ('fixed', 'wont_fix', 'duplicate', 'invalid')),
    assignee_id INTEGER REFERENCES users(id),
    reporter_id INTEGER REFERENCES users(id),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    closed_at   TEXT,
    -- a closed issue always says why; an open one never carries a stale resolution
    CHECK ((status = 'closed') = (resolution IS NOT NULL AND closed_at IS NOT NULL))
);
CREATE INDEX issues_project_status ON issues(project_id, status);
CREATE TABLE labels (
    id    INTEGER PRIMARY KEY,
    name  TEXT NOT NULL UNIQUE,
    color TEXT NOT NULL
);
CREATE TABLE issue_labels (
    issue_id INTEGER NOT NULL REFERENCES issues(id),
    label_id INTEGER NOT NULL REFERENCES labels(id),
    PRIMARY KEY (issue_id, label_id)
);
CREATE TABLE comments (
    id         INTEGER PRIMARY KEY,
    issue_id   INTEGER NOT NULL REFERENCES issues(id),
    author_id  INTEGER NOT NULL REFERENCES users(id),
    body       TEXT NOT NULL CHECK (length(trim(body)) > 0),
    created_at TEXT NOT NULL
);
CREATE INDEX comments_issue ON comments(issue_id);
-- Logical clock: one row; every write advances it by one minute, so replaying the same tool calls
-- on the same seed yields the same database (verifiers diff seed against current).
CREATE TABLE clock (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    tick INTEGER NOT NULL
);
"""

EPOCH = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def tick_to_iso(tick: int) -> str:
    """Minutes since EPOCH as an ISO-8601 UTC timestamp."""
    return (EPOCH + timedelta(minutes=tick)).strftime("%Y-%m-%dT%H:%M:%SZ")
