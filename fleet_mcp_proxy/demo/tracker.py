"""The tracker's operations: every read and write the MCP tools run, as plain Python methods."""

from __future__ import annotations

from collections.abc import Sequence

from .db import UNASSIGNED, Store, TrackerError
from .models import (
    Comment,
    Issue,
    IssuePage,
    Label,
    LabelList,
    Priority,
    Project,
    ProjectList,
    Resolution,
    Status,
    User,
    UserList,
)


class Tracker(Store):
    """The tracker API over one current.sqlite; refusals raise `TrackerError` with a message for the agent."""

    # -- reads -----------------------------------------------------------------------------------

    def list_projects(self) -> ProjectList:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT p.key, p.name, p.description,"
                " (SELECT count(*) FROM issues i WHERE i.project_id = p.id AND i.status != 'closed')"
                " AS open_issues"
                " FROM projects p ORDER BY p.id"
            )
            return ProjectList(projects=[Project(**dict(r)) for r in rows])

    def list_users(self) -> UserList:
        with self._tx() as conn:
            rows = conn.execute("SELECT username, display_name, email FROM users ORDER BY id")
            return UserList(users=[User(**dict(r)) for r in rows])

    def list_labels(self) -> LabelList:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT l.name, l.color, (SELECT count(*) FROM issue_labels il WHERE il.label_id = l.id)"
                " AS issue_count FROM labels l ORDER BY l.name"
            )
            return LabelList(labels=[Label(**dict(r)) for r in rows])

    def list_issues(
        self,
        *,
        project: str | None = None,
        status: Status | None = None,
        priority: Priority | None = None,
        assignee: str | None = None,
        label: str | None = None,
        query: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> IssuePage:
        with self._tx() as conn:
            where: list[str] = []
            args: list[object] = []
            if project is not None:
                where.append("i.project_id = ?")
                args.append(self._project_id(conn, project))
            if status is not None:
                where.append("i.status = ?")
                args.append(status)
            if priority is not None:
                where.append("i.priority = ?")
                args.append(priority)
            if assignee is not None and assignee.lower() == UNASSIGNED:
                where.append("i.assignee_id IS NULL")
            elif assignee is not None:
                where.append("i.assignee_id = ?")
                args.append(self._user_id(conn, assignee))
            if label is not None:
                where.append("EXISTS (SELECT 1 FROM issue_labels il WHERE il.issue_id = i.id AND il.label_id = ?)")
                args.append(self._label_id(conn, label))
            # Every word must occur in the title or body (LIKE is case-insensitive for ASCII).
            for word in (query or "").split():
                pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                where.append("(i.title LIKE ? ESCAPE '\\' OR i.body LIKE ? ESCAPE '\\')")
                args += [pattern, pattern]
            return self._page(conn, where, args, limit, offset)

    def get_issue(self, issue_id: int) -> Issue:
        with self._tx() as conn:
            return self._issue(conn, issue_id)

    # -- writes ----------------------------------------------------------------------------------

    def create_issue(
        self,
        *,
        project: str,
        title: str,
        body: str = "",
        priority: Priority = "medium",
        assignee: str | None = None,
        reporter: str | None = None,
        labels: Sequence[str] = (),
    ) -> Issue:
        title = _clean_title(title)
        with self._tx(write=True) as conn:
            project_id = self._project_id(conn, project)
            assignee_id = self._user_id(conn, assignee) if assignee else None
            reporter_id = self._user_id(conn, reporter) if reporter else None
            label_ids = sorted({self._label_id(conn, name) for name in labels})
            now = self._now(conn)
            cur = conn.execute(
                "INSERT INTO issues (project_id, title, body, priority, assignee_id, reporter_id, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (project_id, title, body.strip(), priority, assignee_id, reporter_id, now, now),
            )
            issue_id = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO issue_labels (issue_id, label_id) VALUES (?, ?)",
                [(issue_id, i) for i in label_ids],
            )
            return self._issue(conn, issue_id)

    def update_issue(
        self,
        issue_id: int,
        *,
        title: str | None = None,
        body: str | None = None,
        priority: Priority | None = None,
        status: Status | None = None,
    ) -> Issue:
        if title is None and body is None and priority is None and status is None:
            raise TrackerError("Nothing to update: pass at least one of title, body, priority, status.")
        if status == "closed":
            raise TrackerError("Use close_issue to close an issue; it records the resolution.")
        with self._tx(write=True) as conn:
            row = self._issue_row(conn, issue_id)
            new = {
                "title": _clean_title(title) if title is not None else row["title"],
                "body": body.strip() if body is not None else row["body"],
                "priority": priority or row["priority"],
                "status": status or row["status"],
            }
            if any(new[k] != row[k] for k in new):
                reopen = row["status"] == "closed" and new["status"] != "closed"
                conn.execute(
                    "UPDATE issues SET title = ?, body = ?, priority = ?, status = ?, updated_at = ?"
                    + (", resolution = NULL, closed_at = NULL" if reopen else "")
                    + " WHERE id = ?",
                    (new["title"], new["body"], new["priority"], new["status"], self._now(conn), issue_id),
                )
            return self._issue(conn, issue_id)

    def assign_issue(self, issue_id: int, assignee: str | None) -> Issue:
        with self._tx(write=True) as conn:
            row = self._issue_row(conn, issue_id)
            user_id = self._user_id(conn, assignee) if assignee else None
            if user_id != row["assignee_id"]:
                conn.execute(
                    "UPDATE issues SET assignee_id = ?, updated_at = ? WHERE id = ?",
                    (user_id, self._now(conn), issue_id),
                )
            return self._issue(conn, issue_id)

    def add_label(self, issue_id: int, label: str) -> Issue:
        with self._tx(write=True) as conn:
            self._issue_row(conn, issue_id)
            label_id = self._label_id(conn, label)
            cur = conn.execute("INSERT OR IGNORE INTO issue_labels VALUES (?, ?)", (issue_id, label_id))
            if cur.rowcount:
                conn.execute("UPDATE issues SET updated_at = ? WHERE id = ?", (self._now(conn), issue_id))
            return self._issue(conn, issue_id)

    def remove_label(self, issue_id: int, label: str) -> Issue:
        with self._tx(write=True) as conn:
            self._issue_row(conn, issue_id)
            label_id = self._label_id(conn, label)
            cur = conn.execute("DELETE FROM issue_labels WHERE issue_id = ? AND label_id = ?", (issue_id, label_id))
            if not cur.rowcount:
                raise TrackerError(f"Issue {issue_id} has no label {label!r}.")
            conn.execute("UPDATE issues SET updated_at = ? WHERE id = ?", (self._now(conn), issue_id))
            return self._issue(conn, issue_id)

    def add_comment(self, issue_id: int, author: str, body: str) -> Comment:
        body = body.strip()
        if not body:
            raise TrackerError("A comment needs a non-empty body.")
        with self._tx(write=True) as conn:
            self._issue_row(conn, issue_id)
            author_id = self._user_id(conn, author)
            now = self._now(conn)
            cur = conn.execute(
                "INSERT INTO comments (issue_id, author_id, body, created_at) VALUES (?, ?, ?, ?)",
                (issue_id, author_id, body, now),
            )
            conn.execute("UPDATE issues SET updated_at = ? WHERE id = ?", (now, issue_id))
            return Comment(id=int(cur.lastrowid or 0), author=author.lower(), body=body, created_at=now)

    def close_issue(self, issue_id: int, resolution: Resolution) -> Issue:
        with self._tx(write=True) as conn:
            row = self._issue_row(conn, issue_id)
            if row["status"] == "closed":
                raise TrackerError(f"Issue {issue_id} is already closed (resolution: {row['resolution']}).")
            now = self._now(conn)
            conn.execute(
                "UPDATE issues SET status = 'closed', resolution = ?, closed_at = ?, updated_at = ? WHERE id = ?",
                (resolution, now, now, issue_id),
            )
            return self._issue(conn, issue_id)


def _clean_title(title: str) -> str:
    title = " ".join(title.split())
    if not title:
        raise TrackerError("The title must not be empty.")
    return title
