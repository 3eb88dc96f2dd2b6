"""The tracker's SQLite plumbing: an instance's data directory, transactions, lookups, row conversion."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .models import Comment, Issue, IssuePage, IssueSummary
from .schema import tick_to_iso
from .seed import build_seed

SEED_FILE = "seed.sqlite"
CURRENT_FILE = "current.sqlite"
UNASSIGNED = "unassigned"

_SUMMARY = """
SELECT i.id, p.key AS project, i.title, i.status, i.priority, u.username AS assignee, i.updated_at
FROM issues i JOIN projects p ON p.id = i.project_id LEFT JOIN users u ON u.id = i.assignee_id
"""


class TrackerError(Exception):
    """A request the tracker refuses; the message is written for the agent that sent it."""


def prepare_instance(data_dir: Path) -> Path:
    """Create `data_dir/seed.sqlite` and `data_dir/current.sqlite` if missing; return the current path.

    Existing files are kept, so a restarted instance resumes from its own current state.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    seed, current = data_dir / SEED_FILE, data_dir / CURRENT_FILE
    if not seed.exists():
        build_seed(seed)
    if not current.exists():
        fd, tmp = tempfile.mkstemp(prefix=".current-", suffix=".sqlite", dir=data_dir)
        os.close(fd)
        shutil.copyfile(seed, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, current)
    return current


class Store:
    """Connections, name lookups and row-to-model conversion for one instance's current.sqlite.

    Each public method of the `Tracker` subclass opens its own connection, runs one transaction and
    closes it: the file on disk is complete after every call (rollback journal, no WAL side files),
    which is what a verifier that copies or opens current.sqlite needs.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        # Explicit BEGIN (IMMEDIATE for writes): a call's checks and its writes happen under one lock,
        # even if another process opens the same file.
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    # -- lookups ---------------------------------------------------------------------------------

    def _id(self, conn: sqlite3.Connection, table: str, column: str, value: str, kind: str) -> int:
        row = conn.execute(f"SELECT id FROM {table} WHERE {column} = ?", (value,)).fetchone()
        if row is None:
            known = ", ".join(r[0] for r in conn.execute(f"SELECT {column} FROM {table} ORDER BY id"))
            raise TrackerError(f"Unknown {kind} {value!r}. Known {kind}s: {known}.")
        return int(row[0])

    def _project_id(self, conn: sqlite3.Connection, key: str) -> int:
        return self._id(conn, "projects", "key", key.upper(), "project")

    def _user_id(self, conn: sqlite3.Connection, username: str) -> int:
        return self._id(conn, "users", "username", username.lower(), "user")

    def _label_id(self, conn: sqlite3.Connection, name: str) -> int:
        return self._id(conn, "labels", "name", name.lower(), "label")

    def _issue_row(self, conn: sqlite3.Connection, issue_id: int) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM issues WHERE id = ?", (issue_id,)).fetchone()
        if row is None:
            top = conn.execute("SELECT max(id) FROM issues").fetchone()[0]
            raise TrackerError(f"Issue {issue_id} does not exist (issue ids run from 1 to {top}).")
        return row  # type: ignore[no-any-return]

    def _now(self, conn: sqlite3.Connection) -> str:
        tick = conn.execute("UPDATE clock SET tick = tick + 1 WHERE id = 1 RETURNING tick").fetchone()[0]
        return tick_to_iso(int(tick))

    def _labels_of(self, conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {i: [] for i in ids}
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            "SELECT il.issue_id, l.name FROM issue_labels il JOIN labels l ON l.id = il.label_id"
            f" WHERE il.issue_id IN ({marks}) ORDER BY l.name",
            tuple(ids),
        )
        for issue_id, name in rows:
            out[issue_id].append(name)
        return out

    def _issue(self, conn: sqlite3.Connection, issue_id: int) -> Issue:
        r = self._issue_row(conn, issue_id)
        names = dict(conn.execute("SELECT id, username FROM users"))
        comments = [
            Comment(id=c["id"], author=names[c["author_id"]], body=c["body"], created_at=c["created_at"])
            for c in conn.execute("SELECT * FROM comments WHERE issue_id = ? ORDER BY id", (issue_id,))
        ]
        project = conn.execute("SELECT key FROM projects WHERE id = ?", (r["project_id"],)).fetchone()[0]
        return Issue(
            id=r["id"],
            project=project,
            title=r["title"],
            body=r["body"],
            status=r["status"],
            priority=r["priority"],
            resolution=r["resolution"],
            assignee=names.get(r["assignee_id"]),
            reporter=names.get(r["reporter_id"]),
            labels=self._labels_of(conn, [issue_id])[issue_id],
            comments=comments,
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            closed_at=r["closed_at"],
        )

    def _page(
        self, conn: sqlite3.Connection, where: list[str], args: list[object], limit: int, offset: int
    ) -> IssuePage:
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = int(conn.execute(f"SELECT count(*) FROM ({_SUMMARY}{clause})", args).fetchone()[0])
        rows = conn.execute(f"{_SUMMARY}{clause} ORDER BY i.id LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        labels = self._labels_of(conn, [r["id"] for r in rows])
        issues = [IssueSummary(**dict(r), labels=labels[r["id"]]) for r in rows]
        more = offset + len(issues) < total
        return IssuePage(
            issues=issues,
            total=total,
            offset=offset,
            limit=limit,
            next_offset=offset + limit if more else None,
        )
