"""The shared `EpisodeStore`: PostgreSQL through asyncpg, a small pool, every write committed when it returns.

Several proxy replicas write here at once, so whatever must be race-free across processes (numbering calls,
the compare-and-set claim, the write-once grade) is one statement that PostgreSQL serializes on the row lock.
The URL may hold a password: messages name the host and database only (`where`).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import anyio
import asyncpg

from .opening import describe, is_postgres_url
from .pg_schema import PG_MIGRATIONS
from .records import (
    LEASE_PREFIX,
    CallRecord,
    DuplicateRecord,
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
from .schema import SCHEMA_VERSION

POOL_SIZE = 4  # the recorder is one writer; the rest serve reads (dashboard, finisher) beside it
CONNECT_TIMEOUT = 10.0
STATEMENT_TIMEOUT = 30.0  # every statement's deadline (asyncpg cancels it on the server)
ACQUIRE_TIMEOUT = 30.0
CLOSE_TIMEOUT = 5.0
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('fleet-mcp-proxy schema'))"

# The episode row's counter is bumped under its row lock, so concurrent writers (other connections, other
# replicas) get distinct numbers; a caller's own number is kept and the counter moves past it.
_INSERT_CALL = """WITH n AS (
        UPDATE episodes SET last_seq = GREATEST(last_seq, COALESCE($2::integer, last_seq + 1)) WHERE id = $1
        RETURNING COALESCE($2::integer, last_seq) AS seq)
    INSERT INTO calls (episode_id, seq, tool, arguments, result_bytes, is_error, started_at, duration_ms)
    SELECT $1, n.seq, $3, $4, $5, $6, $7, $8 FROM n RETURNING seq"""
_BEGIN_END = """UPDATE episodes SET state = 'ending', end_reason = COALESCE(end_reason, $1),
    ended_at = COALESCE(ended_at, $2), task = COALESCE($3, task) WHERE id = $4 AND state = 'live' RETURNING id"""
_SET_STATE = """UPDATE episodes SET state = $1, closed_at = COALESCE($2, closed_at)
    WHERE id = $3 AND state <> 'closed' RETURNING id"""
# A concurrent second grader waits on the row lock, then re-reads `reward IS NULL` as false: one grade wins.
_GRADE = """UPDATE episodes SET reward = $1, verifier = $2, graded_at = $3,
    state = CASE WHEN state IN ('ending', 'verifying') THEN 'graded' ELSE state END
    WHERE id = $4 AND reward IS NULL RETURNING id"""
_CLAIM = """UPDATE episodes SET owner = $1 WHERE id = $2 AND state <> 'closed'
    AND owner IS NOT DISTINCT FROM $3 RETURNING id"""
_UNRELEASED = """SELECT i.* FROM instances i JOIN episodes e ON e.id = i.episode_id
    WHERE e.state <> 'closed' AND i.released_at IS NULL ORDER BY i.position"""
_SUMMARIES = """SELECT e.*, (SELECT COUNT(*) FROM calls c WHERE c.episode_id = e.id) AS call_count
    FROM episodes e WHERE $1::text IS NULL OR e.task_key = $1 ORDER BY e.started_at DESC, e.id DESC
    LIMIT $2 OFFSET $3"""
_REGISTER = """INSERT INTO owners (id, host, pid, started_at, lease_until, address) VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = EXCLUDED.started_at,
    lease_until = EXCLUDED.lease_until, address = EXCLUDED.address"""
_ADD_ROUTE = """INSERT INTO routes (route, episode_id, handshake) VALUES ($1, $2, $3)
    ON CONFLICT (route) DO UPDATE SET episode_id = EXCLUDED.episode_id, handshake = EXCLUDED.handshake"""
_ROUTE_OWNER = """SELECT o.* FROM routes r JOIN episodes e ON e.id = r.episode_id JOIN owners o ON o.id = e.owner
    WHERE r.route = $1 AND e.state <> 'closed'"""
# Compare-and-set in one statement: a concurrent claimer waits on the row lock, then re-checks the WHERE.
_CLAIM_LEASE = """INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
    WHERE (meta.value::jsonb ->> 'holder') = $3 OR (meta.value::jsonb ->> 'until')::float8 <= $4 RETURNING key"""
_OWNED = """SELECT owner, COUNT(*) FILTER (WHERE state = 'live') AS live, COUNT(*) AS unfinished FROM episodes
    WHERE state <> 'closed' AND owner IS NOT NULL GROUP BY owner"""
_EXPORT_FIRST = "SELECT started_at, id FROM episodes WHERE started_at >= $1 ORDER BY started_at, id LIMIT $2"
_EXPORT_NEXT = "SELECT started_at, id FROM episodes WHERE (started_at, id) > ($1, $2) ORDER BY started_at, id LIMIT $3"
_EXPORT_PAGE = 100
# The store and connection whose `apply` transaction the current task is inside: its writes join that transaction.
_BATCH: ContextVar[tuple[object, Any] | None] = ContextVar("fmp_pg_batch", default=None)


def _secrets_of(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    return found + [v for v in parse_qs(parts.query).get("password", []) if v]


class PostgresStore:
    """PostgreSQL shared by replicas: a small asyncpg pool; autocommit, so each write is durable when it returns."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        if not is_postgres_url(url):
            raise StoreError("a PostgreSQL episode store needs a postgresql:// URL")
        self._url = url
        self.path = describe(url)  # where it is, safe to print
        self._create = create  # False (the CLI): never create or migrate, and the session is read-only
        self._pool: asyncpg.Pool | None = None

    def _reason(self, exc: BaseException) -> str:
        """An error's text for people, with any password in it blanked (drivers may echo the DSN)."""
        text = str(exc) or type(exc).__name__
        for secret in _secrets_of(self._url):
            text = text.replace(secret, "***")
        return text

    async def open(self) -> PostgresStore:
        settings = {"application_name": "fleet-mcp-proxy"}
        if not self._create:
            settings["default_transaction_read_only"] = "on"
        try:
            with anyio.fail_after(CONNECT_TIMEOUT * 2):
                pool = await asyncpg.create_pool(
                    self._url,
                    min_size=1,
                    max_size=POOL_SIZE,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=STATEMENT_TIMEOUT,
                    server_settings=settings,
                )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise StoreError(f"cannot open episode database {self.path}: {self._reason(exc)}") from None
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                await self._prepare(conn)
        except BaseException as exc:
            await self._close(pool)
            if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresError | asyncpg.InterfaceError):
                raise StoreError(f"cannot use episode database {self.path}: {self._reason(exc)}") from None
            raise
        self._pool = pool
        return self

    async def _prepare(self, conn: Any) -> None:
        if not self._create:
            version = await self._check_version(conn)
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}; start `fleet-mcp-proxy serve` (or `finish`) on it "
                    f"once to upgrade it to {SCHEMA_VERSION}"
                )
            return
        # DDL is transactional here: concurrent first starts queue on the lock; each sees the others' work.
        async with conn.transaction():
            await conn.execute(_MIGRATION_LOCK)
            if await conn.fetchval("SELECT to_regclass('schema_version') IS NULL"):
                if await conn.fetchval("SELECT to_regclass('episodes') IS NOT NULL"):
                    raise StoreError(f"{self.path} is not a fleet-mcp-proxy episode database")
                await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            version = await self._check_version(conn)
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in PG_MIGRATIONS[number - 1]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version VALUES ($1)", number)

    async def _check_version(self, conn: Any) -> int:
        if await conn.fetchval("SELECT to_regclass('schema_version') IS NULL"):
            raise StoreError(f"{self.path} holds no fleet-mcp-proxy episode database (no schema_version table)")
        version: int = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this proxy knows {SCHEMA_VERSION}")
        return version

    async def __aenter__(self) -> PostgresStore:
        return self if self._pool is not None else await self.open()

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    @asynccontextmanager
    async def _connection(self, episode_id: str = "") -> AsyncIterator[Any]:
        # Shielded, like SQLite's: a record already started is written even if its caller is being cancelled
        # (each statement still has its deadline).
        with anyio.CancelScope(shield=True):
            if self._pool is None:
                raise StoreError(f"episode database {self.path} is not open")
            batch = _BATCH.get()
            try:
                if batch is not None and batch[0] is self:
                    yield batch[1]
                else:
                    async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                        yield conn
            except asyncpg.ForeignKeyViolationError:
                raise RecordNotFound(f"no episode {episode_id}") from None
            except asyncpg.UniqueViolationError:
                raise DuplicateRecord(f"episode {episode_id}: recorded twice") from None
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                about = f" (episode {episode_id})" if episode_id else ""
                raise StoreError(f"episode database {self.path}{about}: {self._reason(exc)}") from None

    async def _write(
        self, episode_id: str, sql: str, *params: Any, missing: str = "", must_change: bool = True
    ) -> builtins.list[Any]:
        async with self._connection(episode_id) as conn:
            rows: builtins.list[Any] = await conn.fetch(sql, *params)
        if not rows and must_change:
            raise RecordNotFound(missing or f"no episode {episode_id}")
        return rows

    async def _fetch(self, sql: str, *params: Any) -> builtins.list[Any]:
        async with self._connection() as conn:
            rows: builtins.list[Any] = await conn.fetch(sql, *params)
        return rows

    async def open_episode(
        self,
        episode_id: str,
        principal: str,
        task_key: str | None,
        started_at: datetime,
        owner: str | None = None,
        task: JSONObject | None = None,
    ) -> None:
        sql = """INSERT INTO episodes (id, principal, task_key, started_at, state, owner, task)
            VALUES ($1, $2, $3, $4, 'live', $5, $6) RETURNING id"""
        await self._write(episode_id, sql, episode_id, principal, task_key, to_iso(started_at), owner, _dumps(task))

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
        sql = """INSERT INTO instances (episode_id, instance_id, alias, provider, spec, created_at, url, data_dir,
            expires_at, origin) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING position"""
        params = (episode_id, instance_id, alias, provider, spec, to_iso(created_at), url, data_dir, expires_at, origin)
        await self._write(episode_id, sql, *params)

    async def instance_released(self, episode_id: str, instance_id: str, released_at: datetime) -> None:
        sql = "UPDATE instances SET released_at = $1 WHERE episode_id = $2 AND instance_id = $3 RETURNING position"
        missing = f"no instance {instance_id} in episode {episode_id}"
        await self._write(episode_id, sql, to_iso(released_at), episode_id, instance_id, missing=missing)

    async def add_call(self, episode_id: str, call: CallRecord) -> int:
        arguments = json.dumps(call.arguments, separators=(",", ":"))
        params = (call.result_bytes, call.is_error, to_iso(call.started_at), call.duration_ms)
        rows = await self._write(episode_id, _INSERT_CALL, episode_id, call.seq, call.tool, arguments, *params)
        return int(rows[0][0])

    async def set_submission(self, episode_id: str, answer: str, submitted_at: datetime) -> None:
        sql = "UPDATE episodes SET answer = $1, submitted_at = $2 WHERE id = $3 RETURNING id"
        await self._write(episode_id, sql, answer, to_iso(submitted_at), episode_id)

    async def apply(self, writes: Sequence[Write]) -> None:
        check_batchable(writes)
        if len(writes) == 1:  # on its own a write commits itself: no BEGIN and COMMIT round trips
            method, args, kwargs = writes[0]
            await getattr(self, method)(*args, **kwargs)
            return
        async with self._connection() as conn, conn.transaction():
            joined = _BATCH.set((self, conn))
            try:
                for method, args, kwargs in writes:
                    await getattr(self, method)(*args, **kwargs)
            finally:
                _BATCH.reset(joined)

    async def set_result(self, episode_id: str, reward: JSONObject, verifier: JSONObject) -> None:
        await self.grade(episode_id, reward, verifier, datetime.now(UTC))

    # -- the durable end ------------------------------------------------------------------------------------------
    async def begin_end(self, episode_id: str, reason: str, ended_at: datetime, task: JSONObject | None) -> None:
        params = (reason, to_iso(ended_at), _dumps(task), episode_id)
        if not await self._write(episode_id, _BEGIN_END, *params, must_change=False):
            await self._require(episode_id)  # past live already (kept as it was), or never recorded

    async def set_state(self, episode_id: str, state: EndState, at: datetime) -> None:
        closed_at = to_iso(at) if state == "closed" else None
        if not await self._write(episode_id, _SET_STATE, state, closed_at, episode_id, must_change=False):
            await self._require(episode_id)

    async def grade(self, episode_id: str, reward: JSONObject, verifier: JSONObject, at: datetime) -> JSONObject:
        params = (json.dumps(reward), json.dumps(verifier), to_iso(at), episode_id)
        if await self._write(episode_id, _GRADE, *params, must_change=False):
            return reward
        rows = await self._fetch("SELECT reward FROM episodes WHERE id = $1", episode_id)
        if not rows:
            raise RecordNotFound(f"no episode {episode_id}")
        return json_object(rows[0]["reward"]) or reward

    async def unfinished(self) -> builtins.list[PendingEnd]:
        async with self._connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            episodes = await conn.fetch(UNFINISHED.format(""))
            instances = await conn.fetch(_UNRELEASED)
        return pending_ends(episodes, instances)

    async def claim(self, episode_id: str, owner: str, expected: str | None) -> bool:
        return bool(await self._write(episode_id, _CLAIM, owner, episode_id, expected, must_change=False))

    async def hand_over(self, episode_id: str, owner: str) -> bool:
        sql = "UPDATE episodes SET owner = NULL WHERE id = $1 AND owner = $2 AND state = 'live' RETURNING id"
        return bool(await self._write(episode_id, sql, episode_id, owner, must_change=False))

    async def disown(self, owner: str) -> int:
        sql = "UPDATE episodes SET owner = NULL WHERE owner = $1 AND state <> 'closed' RETURNING id"
        return len(await self._write("", sql, owner, must_change=False))

    async def register_owner(self, owner: OwnerRecord) -> None:
        params = (owner.owner_id, owner.host, owner.pid, to_iso(owner.started_at), owner.lease_until, owner.address)
        async with self._connection() as conn:
            await conn.execute(_REGISTER, *params)

    async def renew_owner(self, owner_id: str, lease_until: float) -> None:
        async with self._connection() as conn:
            await conn.execute("UPDATE owners SET lease_until = $1 WHERE id = $2", lease_until, owner_id)

    async def drop_owner(self, owner_id: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM owners WHERE id = $1", owner_id)

    async def owners(self) -> builtins.list[OwnerRecord]:
        return [owner_of(row) for row in await self._fetch("SELECT * FROM owners ORDER BY started_at, id")]

    async def meta(self, key: str, default: str | None) -> str | None:
        async with self._connection() as conn:
            if default is not None:
                await conn.execute("INSERT INTO meta VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", key, default)
            value = await conn.fetchval("SELECT value FROM meta WHERE key = $1", key)
        return None if value is None else str(value)

    async def claim_lease(self, name: str, holder: str, until: float, now: float) -> bool:
        params = (LEASE_PREFIX + name, lease_value(holder, until), holder, now)
        return bool(await self._write("", _CLAIM_LEASE, *params, must_change=False))

    async def lease(self, name: str) -> Lease | None:
        return lease_of(await self.meta(LEASE_PREFIX + name, None))

    async def owned_counts(self) -> dict[str, OwnedCount]:
        rows = await self._fetch(_OWNED)
        return {str(row["owner"]): OwnedCount(live=int(row["live"]), unfinished=int(row["unfinished"])) for row in rows}

    async def add_route(self, route: str, episode_id: str, handshake: JSONObject | None = None) -> None:
        shake = json.dumps(handshake) if handshake is not None else None
        async with self._connection(episode_id) as conn:
            await conn.execute(_ADD_ROUTE, route, episode_id, shake)

    async def route_target(self, route: str) -> RouteTarget | None:
        rows = await self._fetch(ROUTE_TARGET.format("$1"), route)
        return route_target_of(rows[0]) if rows else None

    async def orphans(self, at: float, limit: int = 100) -> builtins.list[tuple[str, str]]:
        rows = await self._fetch(ORPHANS.format("$1", "$2"), at, limit)
        return [(row["id"], row["route"]) for row in rows]

    async def pending_end(self, episode_id: str) -> PendingEnd | None:
        async with self._connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            episodes = await conn.fetch(UNFINISHED.format("AND e.id = $1"), episode_id)
            instances = await conn.fetch(
                "SELECT * FROM instances WHERE episode_id = $1 AND released_at IS NULL ORDER BY position", episode_id
            )
        return next(iter(pending_ends(episodes, instances)), None)

    async def route_owner(self, route: str) -> OwnerRecord | None:
        rows = await self._fetch(_ROUTE_OWNER, route)
        return owner_of(rows[0]) if rows else None

    async def _require(self, episode_id: str) -> None:
        if not await self._fetch("SELECT 1 FROM episodes WHERE id = $1", episode_id):
            raise RecordNotFound(f"no episode {episode_id}")

    async def end_episode(self, episode_id: str, reason: str, ended_at: datetime) -> None:
        # The whole end in one write, for a record with nothing left to finish (tests, imports).
        sql = """UPDATE episodes SET end_reason = $1, ended_at = $2, state = 'closed', closed_at = $2
            WHERE id = $3 RETURNING id"""
        await self._write(episode_id, sql, reason, to_iso(ended_at), episode_id)

    async def get(self, episode_id: str) -> EpisodeRecord | None:
        async with self._connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            episode = await conn.fetch("SELECT * FROM episodes WHERE id = $1", episode_id)
            instances = await conn.fetch("SELECT * FROM instances WHERE episode_id = $1 ORDER BY position", episode_id)
            calls = await conn.fetch("SELECT * FROM calls WHERE episode_id = $1 ORDER BY seq", episode_id)
        if not episode:
            return None
        return record_of(episode[0], instances, calls)

    async def list(
        self, limit: int = 50, offset: int = 0, task_key: str | None = None
    ) -> builtins.list[EpisodeSummary]:
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        summaries = []
        for row in await self._fetch(_SUMMARIES, task_key, limit, offset):
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
        # Pages of ids, then one short read per episode, as SQLite does; pages resume strictly after the last.
        page = await self._fetch(_EXPORT_FIRST, "" if since is None else to_iso(since), _EXPORT_PAGE)
        while True:
            for row in page:
                if (record := await self.get(row["id"])) is not None:
                    yield record.to_json()
            if len(page) < _EXPORT_PAGE:
                return
            page = await self._fetch(_EXPORT_NEXT, page[-1]["started_at"], page[-1]["id"], _EXPORT_PAGE)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await self._close(pool)

    @staticmethod
    async def _close(pool: Any) -> None:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await pool.close()  # waits for connections in use to come back
                return
            pool.terminate()


def _dumps(value: JSONObject | None) -> str | None:
    return None if value is None else json.dumps(value)


async def open_postgres_store(url: str, *, create: bool = True) -> PostgresStore:
    return await PostgresStore(url, create=create).open()


if TYPE_CHECKING:  # mypy proves PostgresStore implements the interface
    _conforms: type[EpisodeStore] = PostgresStore
