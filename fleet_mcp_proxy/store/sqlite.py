"""The embedded `EpisodeStore`: SQLite in WAL mode, one connection, every write committed as it is made (or, for
the recorder's batches, every batch in one transaction)."""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite
import anyio

from . import sqlite_writes as writes
from .records import (
    LEASE_PREFIX,
    CallRecord,
    EndState,
    EpisodeRecord,
    EpisodeStore,
    EpisodeSummary,
    JSONObject,
    Lease,
    OwnedCount,
    OwnerRecord,
    PendingEnd,
    Provider,
    RecordNotFound,
    RouteTarget,
    StoreError,
    Write,
    check_batchable,
    lease_of,
    lease_value,
    to_iso,
)
from .rows import (
    ORPHANS,
    ROUTE_TARGET,
    UNFINISHED,
    episode_fields,
    json_object,
    owner_of,
    pending_ends,
    record_of,
    route_target_of,
)
from .schema import MIGRATIONS, SCHEMA_VERSION
from .sqlite_writes import Statement, execute, execute_all, statement_of

_BEGIN_END = """UPDATE episodes SET state = 'ending', end_reason = COALESCE(end_reason, ?),
    ended_at = COALESCE(ended_at, ?), task = COALESCE(?, task) WHERE id = ? AND state = 'live'"""
_SET_STATE = (
    """UPDATE episodes SET state = ?1, closed_at = COALESCE(?2, closed_at) WHERE id = ?3 AND state != 'closed'"""
)
_CLAIM = """UPDATE episodes SET owner = ?1 WHERE id = ?2 AND state != 'closed'
    AND (owner = ?3 OR (owner IS NULL AND ?4 IS NULL)) RETURNING id"""
_UNRELEASED = """SELECT i.* FROM instances i JOIN episodes e ON e.id = i.episode_id
    WHERE e.state != 'closed' AND i.released_at IS NULL ORDER BY i.rowid"""
_SUMMARIES = """SELECT e.*, (SELECT COUNT(*) FROM calls c WHERE c.episode_id = e.id) AS call_count
    FROM episodes e WHERE ?1 IS NULL OR e.task_key = ?1 ORDER BY e.started_at DESC, e.id DESC LIMIT ?2 OFFSET ?3"""
_ROUTE_OWNER = """SELECT o.* FROM routes r JOIN episodes e ON e.id = r.episode_id JOIN owners o ON o.id = e.owner
    WHERE r.route = ? AND e.state != 'closed'"""
# Compare-and-set in one statement: the upsert's WHERE sees the stored lease, under SQLite's write lock.
_CLAIM_LEASE = """INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value
    WHERE json_extract(meta.value, '$.holder') = ?3 OR json_extract(meta.value, '$.until') <= ?4 RETURNING key"""
_OWNED = """SELECT owner, SUM(state = 'live'), COUNT(*) FROM episodes
    WHERE state != 'closed' AND owner IS NOT NULL GROUP BY owner"""
_EXPORT_IDS = "SELECT started_at, id FROM episodes WHERE (started_at, id) >= (?, ?) ORDER BY started_at, id LIMIT ?"
_EXPORT_PAGE = 100
T = TypeVar("T")


class SQLiteStore:
    """Embedded SQLite in WAL mode: one connection, one write at a time, each committed as it is made."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = str(path)
        self._create = create  # False (the CLI): never create or convert a file, only read what is there
        self._lock = anyio.Lock()
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> SQLiteStore:
        # isolation_level=None: autocommit, so every write is its own transaction, durable when it returns.
        # The CLI opens with mode=rw so that a mistyped path is an error rather than a new, empty database.
        target = self.path if self._create else Path(self.path).absolute().as_uri() + "?mode=rw"  # noqa: ASYNC240
        connection = aiosqlite.connect(target, uri=not self._create, isolation_level=None)
        try:
            db = await connection
        except sqlite3.Error as exc:
            # aiosqlite's worker thread still has to report its own stop to this loop; once the loop is gone
            # that report would die as a traceback on stderr, so wait for the thread first (bounded).
            await anyio.to_thread.run_sync(connection._thread.join, 5)
            raise StoreError(f"cannot open episode database {self.path}: {exc}") from None
        try:
            await self._prepare(db)
        except BaseException as exc:
            await db.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot use episode database {self.path}: {exc}") from None
            raise
        db.row_factory = aiosqlite.Row
        self._db = db
        return self

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        await db.execute("PRAGMA busy_timeout = 5000")  # the CLI may read while the proxy writes
        await db.execute("PRAGMA foreign_keys = ON")
        tables = {row[0] for row in await db.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables and (tables or not self._create):
            raise StoreError(f"{self.path} is not a fleet-mcp-proxy episode database")
        if self._create:
            # WAL: readers never block the writer, and a commit is one append to the log.
            (mode,) = next(iter(await db.execute_fetchall("PRAGMA journal_mode = WAL")))
            if mode != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (journal_mode={mode})")
        # NORMAL in WAL mode: commits survive a crash of this process, and the file is never corrupted;
        # only an OS crash or power loss can lose the last few commits, not worth an fsync per tool call.
        await db.execute("PRAGMA synchronous = NORMAL")
        if not self._create:
            version = await self._check_version(db)
            if version is not None and version < SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}; start `fleet-mcp-proxy serve` (or `finish`) on it "
                    f"once to upgrade it to {SCHEMA_VERSION}"
                )
            return
        await db.execute("BEGIN IMMEDIATE")  # two processes opening a new file must not both create the schema
        try:
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = await self._check_version(db) or 0
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_version VALUES (?)", (number,))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def _check_version(self, db: aiosqlite.Connection) -> int | None:
        rows = builtins.list(await db.execute_fetchall("SELECT MAX(version) FROM schema_version"))
        version: int | None = rows[0][0]
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this proxy knows {SCHEMA_VERSION}")
        return version

    async def __aenter__(self) -> SQLiteStore:
        return self if self._db is not None else await self.open()

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[aiosqlite.Connection]:
        # Shielded: a record already started is written even if its caller is being cancelled, and the one
        # connection is never left inside a transaction that later writes would silently join.
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self._db is None:
                    raise StoreError(f"episode database {self.path} is not open")
                yield self._db

    async def _write(
        self, episode_id: str, sql: str, params: tuple[Any, ...], missing: str = "", *, must_change: bool = True
    ) -> builtins.list[sqlite3.Row]:
        return await self._run(Statement(episode_id, sql, params, missing, must_change))

    async def _run(self, statement: Statement) -> builtins.list[sqlite3.Row]:
        # One hop to the connection's thread for the whole write (aiosqlite's per-call hops cost more than the SQL).
        async with self._exclusive() as db:
            return await _in_thread(db, execute, db._conn, statement)

    async def apply(self, writes: Sequence[Write]) -> None:
        check_batchable(writes)
        statements = [statement_of(write, datetime.now(UTC)) for write in writes]
        if len(statements) == 1:
            await self._run(statements[0])  # on its own it commits itself: no BEGIN and COMMIT to run
            return
        async with self._exclusive() as db:
            await _in_thread(db, execute_all, db._conn, statements)

    async def open_episode(
        self,
        episode_id: str,
        principal: str,
        task_key: str | None,
        started_at: datetime,
        owner: str | None = None,
        task: JSONObject | None = None,
    ) -> None:
        await self._run(writes.open_episode(episode_id, principal, task_key, started_at, owner, task))

    async def add_instance(
        self,
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
    ) -> None:
        statement = writes.add_instance(
            episode_id,
            alias,
            instance_id,
            provider,
            spec,
            created_at,
            url=url,
            data_dir=data_dir,
            expires_at=expires_at,
            origin=origin,
        )
        await self._run(statement)

    async def instance_released(self, episode_id: str, instance_id: str, released_at: datetime) -> None:
        await self._run(writes.instance_released(episode_id, instance_id, released_at))

    async def add_call(self, episode_id: str, call: CallRecord) -> int:
        rows = await self._run(writes.add_call(episode_id, call))
        return int(rows[0][0])

    async def set_submission(self, episode_id: str, answer: str, submitted_at: datetime) -> None:
        await self._run(writes.set_submission(episode_id, answer, submitted_at))

    async def set_result(self, episode_id: str, reward: JSONObject, verifier: JSONObject) -> None:
        await self.grade(episode_id, reward, verifier, datetime.now(UTC))

    # -- the durable end ------------------------------------------------------------------------------------------
    async def begin_end(self, episode_id: str, reason: str, ended_at: datetime, task: JSONObject | None) -> None:
        await self._write(
            episode_id, _BEGIN_END, (reason, to_iso(ended_at), _dumps(task), episode_id), must_change=False
        )

    async def set_state(self, episode_id: str, state: EndState, at: datetime) -> None:
        closed_at = to_iso(at) if state == "closed" else None
        await self._write(episode_id, _SET_STATE, (state, closed_at, episode_id), must_change=False)

    async def grade(self, episode_id: str, reward: JSONObject, verifier: JSONObject, at: datetime) -> JSONObject:
        if await self._run(writes.grade(episode_id, reward, verifier, at)):
            return reward
        async with self._exclusive() as db:
            rows = builtins.list(await db.execute_fetchall("SELECT reward FROM episodes WHERE id = ?", (episode_id,)))
        if not rows:
            raise RecordNotFound(f"no episode {episode_id}")
        return json_object(rows[0][0]) or reward

    async def unfinished(self) -> builtins.list[PendingEnd]:
        async with self._exclusive() as db:
            await db.execute("BEGIN")
            try:
                episodes = await db.execute_fetchall(UNFINISHED.format(""))
                instances = await db.execute_fetchall(_UNRELEASED)
            finally:
                await db.execute("COMMIT")
        return pending_ends(episodes, instances)

    async def claim(self, episode_id: str, owner: str, expected: str | None) -> bool:
        rows = await self._write(episode_id, _CLAIM, (owner, episode_id, expected, expected), must_change=False)
        return bool(rows)

    async def hand_over(self, episode_id: str, owner: str) -> bool:
        sql = "UPDATE episodes SET owner = NULL WHERE id = ? AND owner = ? AND state = 'live' RETURNING id"
        return bool(await self._write(episode_id, sql, (episode_id, owner), must_change=False))

    async def disown(self, owner: str) -> int:
        rows = await self._write(
            "",
            "UPDATE episodes SET owner = NULL WHERE owner = ? AND state != 'closed' RETURNING id",
            (owner,),
            must_change=False,
        )
        return len(rows)

    async def register_owner(self, owner: OwnerRecord) -> None:
        sql = "INSERT OR REPLACE INTO owners (id, host, pid, started_at, lease_until, address) VALUES (?,?,?,?,?,?)"
        params = (owner.owner_id, owner.host, owner.pid, to_iso(owner.started_at), owner.lease_until, owner.address)
        await self._write("", sql, params, must_change=False)

    async def renew_owner(self, owner_id: str, lease_until: float) -> None:
        sql = "UPDATE owners SET lease_until = ? WHERE id = ?"
        await self._write("", sql, (lease_until, owner_id), must_change=False)

    async def drop_owner(self, owner_id: str) -> None:
        await self._write("", "DELETE FROM owners WHERE id = ?", (owner_id,), must_change=False)

    async def owners(self) -> builtins.list[OwnerRecord]:
        async with self._exclusive() as db:
            rows = await db.execute_fetchall("SELECT * FROM owners")
        return [owner_of(row) for row in rows]

    async def meta(self, key: str, default: str | None) -> str | None:
        if default is not None:
            sql = "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)"
            await self._write("", sql, (key, default), must_change=False)
        async with self._exclusive() as db:
            rows = builtins.list(await db.execute_fetchall("SELECT value FROM meta WHERE key = ?", (key,)))
        return str(rows[0][0]) if rows else None

    async def claim_lease(self, name: str, holder: str, until: float, now: float) -> bool:
        params = (LEASE_PREFIX + name, lease_value(holder, until), holder, now)
        return bool(await self._write("", _CLAIM_LEASE, params, must_change=False))

    async def lease(self, name: str) -> Lease | None:
        return lease_of(await self.meta(LEASE_PREFIX + name, None))

    async def owned_counts(self) -> dict[str, OwnedCount]:
        async with self._exclusive() as db:
            rows = await db.execute_fetchall(_OWNED)
        return {str(row[0]): OwnedCount(live=int(row[1]), unfinished=int(row[2])) for row in rows}

    async def add_route(self, route: str, episode_id: str, handshake: JSONObject | None = None) -> None:
        await self._run(writes.add_route(route, episode_id, handshake))

    async def route_target(self, route: str) -> RouteTarget | None:
        async with self._exclusive() as db:
            rows = await db.execute_fetchall(ROUTE_TARGET.format("?"), (route,))
        return next((route_target_of(row) for row in rows), None)

    async def orphans(self, at: float, limit: int = 100) -> builtins.list[tuple[str, str]]:
        async with self._exclusive() as db:
            rows = await db.execute_fetchall(ORPHANS.format("?", "?"), (at, limit))
        return [(row["id"], row["route"]) for row in rows]

    async def pending_end(self, episode_id: str) -> PendingEnd | None:
        async with self._exclusive() as db:
            episodes = await db.execute_fetchall(UNFINISHED.format("AND e.id = ?"), (episode_id,))
            instances = await db.execute_fetchall(
                "SELECT * FROM instances WHERE episode_id = ? AND released_at IS NULL ORDER BY rowid", (episode_id,)
            )
        return next(iter(pending_ends(episodes, instances)), None)

    async def route_owner(self, route: str) -> OwnerRecord | None:
        async with self._exclusive() as db:
            rows = await db.execute_fetchall(_ROUTE_OWNER, (route,))
        return next((owner_of(row) for row in rows), None)

    async def _require(self, episode_id: str) -> None:
        async with self._exclusive() as db:
            rows = builtins.list(await db.execute_fetchall("SELECT 1 FROM episodes WHERE id = ?", (episode_id,)))
        if not rows:
            raise RecordNotFound(f"no episode {episode_id}")

    async def end_episode(self, episode_id: str, reason: str, ended_at: datetime) -> None:
        # The whole end in one write, for a record with nothing left to finish (tests, imports).
        sql = "UPDATE episodes SET end_reason = ?1, ended_at = ?2, state = 'closed', closed_at = ?2 WHERE id = ?3"
        await self._write(episode_id, sql, (reason, to_iso(ended_at), episode_id))

    async def get(self, episode_id: str) -> EpisodeRecord | None:
        async with self._exclusive() as db:
            await db.execute("BEGIN")  # one snapshot for the three reads, even while another process writes
            try:
                episode = builtins.list(await db.execute_fetchall("SELECT * FROM episodes WHERE id = ?", (episode_id,)))
                instances = await db.execute_fetchall(
                    "SELECT * FROM instances WHERE episode_id = ? ORDER BY rowid", (episode_id,)
                )
                calls = await db.execute_fetchall(
                    "SELECT * FROM calls WHERE episode_id = ? ORDER BY seq", (episode_id,)
                )
            finally:
                await db.execute("COMMIT")
        if not episode:
            return None
        return record_of(episode[0], instances, calls)

    async def list(
        self, limit: int = 50, offset: int = 0, task_key: str | None = None
    ) -> builtins.list[EpisodeSummary]:
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        async with self._exclusive() as db:
            rows = await db.execute_fetchall(_SUMMARIES, (task_key, limit, offset))
        summaries = []
        for row in rows:
            reward = json_object(row["reward"]) or {}
            score = reward.get("reward")
            summaries.append(
                EpisodeSummary(
                    **episode_fields(row),
                    call_count=row["call_count"],
                    submitted=row["submitted_at"] is not None,
                    status=reward.get("status"),
                    reward=float(score) if isinstance(score, int | float) else None,
                    state=row["state"],
                )
            )
        return summaries

    async def export(self, since: datetime | None = None) -> AsyncIterator[JSONObject]:
        # Pages of ids, then one short read per episode: the writer is never held up for a whole export.
        after = ("", "") if since is None else (to_iso(since), "")
        while True:
            async with self._exclusive() as db:
                page = await db.execute_fetchall(_EXPORT_IDS, (*after, _EXPORT_PAGE))
            ids = [(row[0], row[1]) for row in page]
            for _, episode_id in ids:
                if (record := await self.get(episode_id)) is not None:
                    yield record.to_json()
            if len(ids) < _EXPORT_PAGE:
                return
            after = (ids[-1][0], ids[-1][1] + "\x00")  # just past the last id sent

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            async with self._lock:
                db, self._db = self._db, None
                if db is not None:
                    await db.close()  # the last connection out checkpoints the WAL into the main file


async def _in_thread(db: aiosqlite.Connection, function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` on the connection's own thread, queued behind its other calls. aiosqlite has no public
    call for this; its `_execute` is what each of its own calls goes through."""
    result: T = await db._execute(function, *args)  # type: ignore[no-untyped-call]
    return result


def _dumps(value: JSONObject | None) -> str | None:
    return None if value is None else json.dumps(value)


async def open_store(path: str | Path, *, create: bool = True) -> SQLiteStore:
    return await SQLiteStore(path, create=create).open()


if TYPE_CHECKING:  # mypy proves SQLiteStore implements the interface
    _conforms: type[EpisodeStore] = SQLiteStore
