"""The PostgreSQL store beyond the behaviour it shares with SQLite (tests/test_store*.py run on both): migrations
under concurrent starts, refusal of foreign or newer databases, read-only readers, no password in any message,
and a claim raced by separate processes. Against a real throwaway cluster (tests/pg_cluster.py)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import asyncpg
import pytest
from canaries import FLEET_KEY
from helpers import ROOT
from pg_cluster import PgCluster

from fleet_mcp_proxy.config import ConfigError, load_config
from fleet_mcp_proxy.store import SCHEMA_VERSION, StoreError, open_any_store
from fleet_mcp_proxy.store.pg_schema import PG_MIGRATIONS
from fleet_mcp_proxy.store.schema import MIGRATIONS

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


async def _sql(url: str, statement: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(statement))
    finally:
        await conn.close()


def test_both_stores_know_the_same_versions() -> None:
    assert len(PG_MIGRATIONS) == len(MIGRATIONS) == SCHEMA_VERSION


async def test_concurrent_first_starts_migrate_once(pg_cluster: PgCluster) -> None:
    url = pg_cluster.new_database()
    opened = []

    async def start() -> None:
        opened.append(await open_any_store(url))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(start)
    try:
        await opened[0].open_episode("e1", "alice", None, T0)
        assert (await opened[-1].get("e1")) is not None
    finally:
        for store in opened:
            await store.aclose()
    rows = await _sql(url, "SELECT version FROM schema_version ORDER BY version")
    assert [row["version"] for row in rows] == list(range(1, SCHEMA_VERSION + 1))


async def test_foreign_newer_and_unmigrated_databases_are_refused_by_name(pg_cluster: PgCluster) -> None:
    fresh = pg_cluster.new_database()
    name = fresh.split("/")[3].split("?")[0]
    with pytest.raises(StoreError, match=f"{name} .*no fleet-mcp-proxy episode database"):
        await open_any_store(fresh, create=False)  # a reader never creates the tables
    assert [tuple(row) for row in await _sql(fresh, "SELECT to_regclass('schema_version')")] == [(None,)]

    foreign = pg_cluster.new_database()
    await _sql(foreign, "CREATE TABLE episodes (body TEXT)")
    with pytest.raises(StoreError, match="not a fleet-mcp-proxy episode database"):
        await open_any_store(foreign)

    newer = pg_cluster.new_database()
    await (await open_any_store(newer)).aclose()
    await _sql(newer, "UPDATE schema_version SET version = 99 WHERE version = 1")
    with pytest.raises(StoreError, match="has schema version 99"):
        await open_any_store(newer)


async def test_a_reader_cannot_write(pg_cluster: PgCluster) -> None:
    url = pg_cluster.new_database()
    async with await open_any_store(url) as store:
        await store.open_episode("e1", "alice", None, T0)
    async with await open_any_store(url, create=False) as reader:
        assert (await reader.get("e1")) is not None
        with pytest.raises(StoreError, match="read-only"):
            await reader.open_episode("e2", "alice", None, T0)


async def test_no_password_in_any_error_or_config_text(pg_cluster: PgCluster) -> None:
    nowhere = f"postgresql://fmp:{FLEET_KEY}@/episodes?host={pg_cluster.root}/absent&port=5432"
    missing = pg_cluster.url("no_such_db", password=FLEET_KEY)
    for url, database in ((nowhere, "episodes"), (missing, "no_such_db")):
        with pytest.raises(StoreError) as caught:
            await open_any_store(url)
        assert FLEET_KEY not in str(caught.value)
        assert f"PostgreSQL {database} at " in str(caught.value)
    config = load_config(store=missing)
    assert config.store.url == missing and config.store_path is None
    assert FLEET_KEY not in repr(config)
    with pytest.raises(ConfigError, match="store.url") as bad:
        load_config(overrides={"store": {"url": f"mysql://fmp:{FLEET_KEY}@db/x"}})
    assert FLEET_KEY not in str(bad.value)


WON = "WON\n"
# Opens the store, says READY, waits for GO on stdin, then claims e1 from its dead owner.
CLAIMER = """
import sys
import anyio
from fleet_mcp_proxy.store import open_any_store

async def main(url, me):
    store = await open_any_store(url)
    print("READY", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    won = await store.claim("e1", me, "dead")
    print("WON" if won else "LOST", flush=True)
    await store.aclose()

anyio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_processes_racing_a_claim_see_exactly_one_winner(pg_cluster: PgCluster) -> None:
    url = pg_cluster.new_database()
    async with await open_any_store(url) as store:
        await store.open_episode("e1", "alice", None, T0, owner="dead")
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", CLAIMER, url, f"replica-{n}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for n in range(4)
        ]
        try:
            with anyio.fail_after(60):
                for proc in racers:
                    assert proc.stdout is not None
                    line = await anyio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True)
                    assert line == "READY\n"
                for proc in racers:  # all connected and waiting: release them together
                    assert proc.stdin is not None
                    proc.stdin.write("GO\n")
                    proc.stdin.flush()
                outcomes = []
                for proc in racers:
                    assert proc.stdout is not None
                    outcomes.append(await anyio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True))
        finally:
            for proc in racers:
                proc.kill()
                proc.wait(10)
        assert sorted(outcomes) == ["LOST\n"] * 3 + [WON]
        winner = f"replica-{outcomes.index(WON)}"
        (pending,) = await store.unfinished()
        assert pending.owner == winner


def test_one_setting_selects_the_store(tmp_path: Path) -> None:
    file = tmp_path / "proxy.toml"
    file.write_text('[store]\nurl = "postgresql://fmp:${PGPASS}@db:5432/fmp"\n', encoding="utf-8")
    config = load_config(file, environ={"PGPASS": FLEET_KEY})
    assert config.store_target == f"postgresql://fmp:{FLEET_KEY}@db:5432/fmp" and FLEET_KEY not in repr(config)
    assert load_config(file, environ={"PGPASS": "x"}, store="/tmp/e.sqlite3").store_target == "/tmp/e.sqlite3"
    assert load_config(overrides={"store_path": "/tmp/e.sqlite3"}).store_target == "/tmp/e.sqlite3"  # as before
    file.write_text('[proxy]\nstore_path = "/tmp/e.sqlite3"\n[store]\nurl = "postgresql://db/fmp"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="keep one"):
        load_config(file)
