"""SQLite's write statements, run synchronously on the store's connection thread.

A write is built here as a `Statement` and run in that thread in one go: one hop from the event loop per write,
or per batch of writes (the recorder's group commit), instead of one per SQLite call. Under py-spy the hops and
the per-write commit, not the SQL, were the recorder's cost.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .records import CallRecord, DuplicateRecord, JSONObject, Provider, RecordNotFound, StoreError, Write, to_iso

# One statement, so numbering is atomic even if another connection writes the same file.
INSERT_CALL = """INSERT INTO calls
    SELECT ?, COALESCE(?, MAX(seq) + 1, 1), ?, ?, ?, ?, ?, ? FROM calls WHERE episode_id = ? RETURNING seq"""
# A grade is written once: a retried grading (another process, a restart) finds it and keeps it. A live
# episode graded on submit stays live: its end still records its reason.
GRADE = """UPDATE episodes SET reward = ?, verifier = ?, graded_at = ?,
    state = CASE WHEN state IN ('ending', 'verifying') THEN 'graded' ELSE state END
    WHERE id = ? AND reward IS NULL RETURNING id"""


@dataclass(frozen=True, slots=True)
class Statement:
    episode_id: str  # "" when the write is not about one episode
    sql: str
    params: tuple[Any, ...]
    missing: str = ""  # the RecordNotFound text when no row changed (default: "no episode ID")
    must_change: bool = True
    must_exist: bool = False  # no row changed is fine, but the episode must be there (a grade already stored)


def execute(conn: sqlite3.Connection, statement: Statement) -> list[sqlite3.Row]:
    """Run one statement to its end; refusals become the store's own errors, naming the episode."""
    episode_id = statement.episode_id
    try:
        cursor = conn.execute(statement.sql, statement.params)
        rows = cursor.fetchall()  # steps the statement to its end
        changed = cursor.rowcount
        cursor.close()
    except sqlite3.IntegrityError as exc:
        if exc.sqlite_errorname == "SQLITE_CONSTRAINT_FOREIGNKEY":
            raise RecordNotFound(f"no episode {episode_id}") from None
        if exc.sqlite_errorname in ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"):
            raise DuplicateRecord(f"episode {episode_id}: {exc}") from None
        raise StoreError(f"episode {episode_id}: {exc}") from None
    if changed == 0 and statement.must_change:
        raise RecordNotFound(statement.missing or f"no episode {episode_id}")
    exists = "SELECT 1 FROM episodes WHERE id = ?"
    if changed == 0 and statement.must_exist and not conn.execute(exists, (episode_id,)).fetchall():
        raise RecordNotFound(f"no episode {episode_id}")
    return rows


def execute_all(conn: sqlite3.Connection, statements: Sequence[Statement]) -> None:
    """Every statement in order in ONE transaction: all are committed, or none (the first refusal is raised)."""
    conn.execute("BEGIN IMMEDIATE")  # takes the write lock now (busy_timeout waits for another process)
    try:
        for statement in statements:
            execute(conn, statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _dumps(value: JSONObject | None) -> str | None:
    return None if value is None else json.dumps(value)


def open_episode(
    episode_id: str,
    principal: str,
    task_key: str | None,
    started_at: datetime,
    owner: str | None = None,
    task: JSONObject | None = None,
) -> Statement:
    sql = """INSERT INTO episodes (id, principal, task_key, started_at, state, owner, task)
        VALUES (?, ?, ?, ?, 'live', ?, ?)"""
    return Statement(episode_id, sql, (episode_id, principal, task_key, to_iso(started_at), owner, _dumps(task)))


def add_instance(
    episode_id: str,
    alias: str,
    instance_id: str,
    provider: Provider,
    spec: str,
    created_at: datetime,
    *,
    url: str | None = None,
    data_dir: str | None = None,
    expires_at: float | None = None,
    origin: str | None = None,
) -> Statement:
    sql = """INSERT INTO instances (episode_id, instance_id, alias, provider, spec, created_at, url, data_dir,
        expires_at, origin) VALUES (?,?,?,?,?,?,?,?,?,?)"""
    params = (episode_id, instance_id, alias, provider, spec, to_iso(created_at), url, data_dir, expires_at, origin)
    return Statement(episode_id, sql, params)


def instance_released(episode_id: str, instance_id: str, released_at: datetime) -> Statement:
    sql = "UPDATE instances SET released_at = ? WHERE episode_id = ? AND instance_id = ?"
    missing = f"no instance {instance_id} in episode {episode_id}"
    return Statement(episode_id, sql, (to_iso(released_at), episode_id, instance_id), missing)


def add_call(episode_id: str, call: CallRecord) -> Statement:
    arguments = json.dumps(call.arguments, separators=(",", ":"))
    params = (call.result_bytes, int(call.is_error), to_iso(call.started_at), call.duration_ms, episode_id)
    return Statement(episode_id, INSERT_CALL, (episode_id, call.seq, call.tool, arguments, *params))


def set_submission(episode_id: str, answer: str, submitted_at: datetime) -> Statement:
    sql = "UPDATE episodes SET answer = ?, submitted_at = ? WHERE id = ?"
    return Statement(episode_id, sql, (answer, to_iso(submitted_at), episode_id))


def grade(episode_id: str, reward: JSONObject, verifier: JSONObject, at: datetime) -> Statement:
    params = (json.dumps(reward), json.dumps(verifier), to_iso(at), episode_id)
    return Statement(episode_id, GRADE, params, must_change=False)


def add_route(route: str, episode_id: str, handshake: JSONObject | None = None) -> Statement:
    sql = "INSERT OR REPLACE INTO routes (route, episode_id, handshake) VALUES (?, ?, ?)"
    return Statement(episode_id, sql, (route, episode_id, _dumps(handshake)), must_change=False)


def _set_result(at: datetime, episode_id: str, reward: JSONObject, verifier: JSONObject) -> Statement:
    statement = grade(episode_id, reward, verifier, at)
    return Statement(statement.episode_id, statement.sql, statement.params, must_change=False, must_exist=True)


_BUILDERS: dict[str, Callable[..., Statement]] = {
    "open_episode": open_episode,
    "add_instance": add_instance,
    "instance_released": instance_released,
    "add_call": add_call,
    "set_submission": set_submission,
    "add_route": add_route,
}


def statement_of(write: Write, now: datetime) -> Statement:
    """The statement a batchable write makes (`now`: when a `set_result` is graded)."""
    method, args, kwargs = write
    if method == "set_result":
        return _set_result(now, *args, **kwargs)
    return _BUILDERS[method](*args, **kwargs)
