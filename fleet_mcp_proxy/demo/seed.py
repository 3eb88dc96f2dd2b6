"""The deterministic seed: fixed rows and fixed logical timestamps, never the wall clock."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

from .schema import SCHEMA, tick_to_iso

PROJECTS = [
    ("WEB", "Storefront Web", "The customer-facing web shop: catalog, cart and checkout."),
    ("API", "Payments API", "Public REST API for payments, refunds and webhooks."),
    ("OPS", "Infrastructure", "CI, databases, certificates, monitoring and runbooks."),
]

USERS = [
    ("alice", "Alice Nguyen", "alice@example.com"),
    ("bob", "Bob Okafor", "bob@example.com"),
    ("carol", "Carol Smith", "carol@example.com"),
    ("dave", "Dave Patel", "dave@example.com"),
    ("erin", "Erin Kowalski", "erin@example.com"),
]

LABELS = [
    ("bug", "#d73a4a"),
    ("feature", "#a2eeef"),
    ("docs", "#0075ca"),
    ("security", "#b60205"),
    ("performance", "#fbca04"),
    ("ux", "#c5def5"),
    ("good-first-issue", "#7057ff"),
]

_DAY = 24 * 60


def _t(day: int, hour: int) -> int:
    return day * _DAY + hour * 60


# Agent writes are stamped from here on, one logical minute apart; every seed event is earlier.
AGENT_START = _t(5, 0)

# (project, title, body, status, priority, resolution, assignee, reporter, created, updated, labels)
_Row = tuple[str, str, str, str, str, str | None, str | None, str, int, int, tuple[str, ...]]
ISSUES: list[_Row] = [
    ("WEB", "Checkout button unresponsive on Safari 17",
     "Clicking 'Place order' does nothing on Safari 17. No console errors.",
     "in_progress", "high", None, "alice", "carol", _t(0, 1), _t(1, 3), ("bug", "ux")),
    ("WEB", "Add dark mode toggle", "Users keep asking for a dark theme in the account settings.",
     "open", "medium", None, None, "erin", _t(0, 4), _t(0, 4), ("feature", "ux")),
    ("WEB", "Product images load slowly on category pages",
     "Category pages take 6+ seconds to render on 4G because of full-size product images.",
     "open", "high", None, "bob", "dave", _t(1, 0), _t(2, 2), ("performance",)),
    ("WEB", "Typo in footer copyright notice", "The footer says 'Copyrihgt'.",
     "closed", "low", "fixed", "erin", "alice", _t(1, 2), _t(1, 6), ("docs", "good-first-issue")),
    ("WEB", "Cart total ignores discount codes with trailing spaces",
     "Codes pasted from the newsletter include a trailing space and are silently rejected.",
     "in_progress", "urgent", None, "alice", "bob", _t(2, 0), _t(3, 1), ("bug",)),
    ("WEB", "Wishlist page returns 500 for guest users",
     "GET /wishlist without a session raises a NoneType error in the view.",
     "open", "high", None, None, "carol", _t(2, 5), _t(2, 5), ("bug",)),
    ("WEB", "Improve accessibility of the size selector",
     "The size buttons have no labels for screen readers and fail contrast checks.",
     "open", "medium", None, "carol", "erin", _t(3, 2), _t(3, 2), ("ux", "good-first-issue")),
    ("API", "Refund endpoint double-charges on retry",
     "When the client retries POST /refunds after a timeout the capture is sent twice.",
     "in_progress", "urgent", None, "bob", "dave", _t(0, 2), _t(2, 4), ("bug",)),
    ("API", "Document webhook signature verification",
     "The docs never explain how to verify the X-Signature header.",
     "open", "medium", None, "dave", "alice", _t(0, 6), _t(0, 6), ("docs",)),
    ("API", "Rate limit headers missing on 429 responses",
     "Retry-After and X-RateLimit-Remaining are absent when the limit is hit.",
     "open", "low", None, None, "bob", _t(1, 1), _t(1, 1), ("bug", "good-first-issue")),
    ("API", "Support idempotency keys on POST /payments",
     "Accept an Idempotency-Key header and return the original response on replays.",
     "open", "high", None, "bob", "carol", _t(1, 4), _t(1, 4), ("feature",)),
    ("API", "Rotate leaked sandbox API key",
     "A sandbox key was committed to a public gist. Rotate it and audit its use.",
     "closed", "urgent", "fixed", "dave", "erin", _t(2, 1), _t(2, 3), ("security",)),
    ("API", "Currency rounding error for JPY amounts",
     "Charges in JPY are 100x too large: zero-decimal currencies are multiplied by 100.",
     "open", "high", None, "carol", "bob", _t(3, 0), _t(3, 4), ("bug",)),
    ("API", "Deprecate v1 charges endpoint", "Remove /v1/charges now that /v2/payments exists.",
     "closed", "low", "wont_fix", "bob", "dave", _t(3, 3), _t(4, 0), ("feature",)),
    ("OPS", "Nightly database backup job fails silently",
     "The backup cron has not produced a dump since Friday and nobody was alerted.",
     "open", "urgent", None, "erin", "dave", _t(0, 3), _t(1, 5), ("bug",)),
    ("OPS", "Upgrade PostgreSQL from 14 to 16", "Plan and run the major upgrade on the primary cluster.",
     "in_progress", "medium", None, "erin", "alice", _t(0, 5), _t(3, 5), ("feature",)),
    ("OPS", "TLS certificate for status page expires in 10 days",
     "status.example.com uses a manually issued certificate that expires soon.",
     "open", "high", None, None, "erin", _t(2, 2), _t(4, 2), ("security",)),
    ("OPS", "Reduce CI pipeline time below 10 minutes",
     "The main pipeline takes 23 minutes; cache dependencies and split the test stage.",
     "open", "medium", None, "dave", "bob", _t(2, 6), _t(2, 6), ("performance",)),
    ("OPS", "Alert noise: disk usage warnings on build agents",
     "Build agents page on-call for disk usage at 70%, which is normal for them.",
     "closed", "low", "fixed", "dave", "carol", _t(3, 1), _t(3, 6), ()),
    ("OPS", "Write runbook for payment service outage",
     "We need a step-by-step runbook before the holiday freeze.",
     "open", "medium", None, "alice", "dave", _t(4, 1), _t(4, 1), ("docs",)),
]  # fmt: skip

# (issue id, author, body, created)
COMMENTS = [
    (1, "carol", "Reproduced on Safari 17.2 / macOS 14; Chrome and Firefox are fine.", _t(0, 5)),
    (1, "alice", "The click handler is attached before hydration finishes. Working on a fix.", _t(1, 3)),
    (3, "dave", "The largest images are 4 MB PNGs; we should serve WebP thumbnails.", _t(2, 2)),
    (4, "erin", "Fixed in the footer template.", _t(1, 6)),
    (5, "bob", "Support reports 14 affected orders since Monday.", _t(3, 1)),
    (8, "bob", "The retry middleware re-sends the capture call; we need an idempotency guard.", _t(1, 2)),
    (8, "carol", "Finance asks for a list of affected refunds before we ship the fix.", _t(2, 4)),
    (12, "dave", "Key rotated and the old key revoked; audit log attached to the incident.", _t(2, 3)),
    (13, "carol", "JPY has zero decimal places; we multiply by 100 unconditionally.", _t(3, 4)),
    (14, "bob", "Closing: v1 clients still account for 30% of traffic.", _t(4, 0)),
    (15, "erin", "The cron wrapper exits 0 even when pg_dump fails.", _t(1, 5)),
    (17, "alice", "Who owns the status page certificate now that the old vendor is gone?", _t(4, 2)),
]


def _populate(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO projects (key, name, description) VALUES (?, ?, ?)", PROJECTS)
    conn.executemany("INSERT INTO users (username, display_name, email) VALUES (?, ?, ?)", USERS)
    conn.executemany("INSERT INTO labels (name, color) VALUES (?, ?)", LABELS)
    project_id = {key: i for i, (key, _, _) in enumerate(PROJECTS, start=1)}
    user_id = {name: i for i, (name, _, _) in enumerate(USERS, start=1)}
    label_id = {name: i for i, (name, _) in enumerate(LABELS, start=1)}
    for issue_id, row in enumerate(ISSUES, start=1):
        project, title, body, status, priority, resolution, assignee, reporter, created, updated, labels = row
        closed_at = tick_to_iso(updated) if status == "closed" else None
        conn.execute(
            "INSERT INTO issues (id, project_id, title, body, status, priority, resolution, assignee_id,"
            " reporter_id, created_at, updated_at, closed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (issue_id, project_id[project], title, body, status, priority, resolution,
             user_id[assignee] if assignee else None, user_id[reporter],
             tick_to_iso(created), tick_to_iso(updated), closed_at),
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO issue_labels (issue_id, label_id) VALUES (?, ?)",
            [(issue_id, label_id[name]) for name in labels],
        )
    for issue_id, author, body, created in COMMENTS:
        conn.execute(
            "INSERT INTO comments (issue_id, author_id, body, created_at) VALUES (?, ?, ?, ?)",
            (issue_id, user_id[author], body, tick_to_iso(created)),
        )
    conn.execute("INSERT INTO clock (id, tick) VALUES (1, ?)", (AGENT_START,))


def build_seed(path: Path) -> None:
    """Write the seed database to `path` atomically (built beside it, then renamed into place)."""
    fd, tmp_name = tempfile.mkstemp(prefix=".seed-", suffix=".sqlite", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        conn = sqlite3.connect(tmp)
        try:
            with conn:
                _populate(conn)
        finally:
            conn.close()
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; verifiers may read it as another user
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
