"""The recorder's group commit (issue 16): queued records land in order, in few transactions, and a refused one
costs only itself. Through the real stores: a SQLite file, and a PostgreSQL database of tests/pg_cluster.py."""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest
from test_store import T0, a_call

from fleet_mcp_proxy.recorder import BATCH_LIMIT, Recorder, now
from fleet_mcp_proxy.store import EpisodeStore, open_any_store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def _wal_commits(db: Path) -> int:
    """Transactions committed to a SQLite WAL since its last reset: its valid frames that end a transaction."""
    data = (db.parent / (db.name + "-wal")).read_bytes()
    if len(data) < 32:
        return 0
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    commits, offset = 0, 32
    while offset + 24 + page_size <= len(data):
        header = data[offset : offset + 24]
        if header[8:16] != salts:  # left over from before a checkpoint restarted the log
            break
        commits += struct.unpack(">I", header[4:8])[0] != 0  # a commit frame holds the database size after it
        offset += 24 + page_size
    return commits


async def _transactions(target: str | Path) -> int:
    """A counter that every committed write transaction on the store moves by one (read from outside it)."""
    if isinstance(target, Path):
        return _wal_commits(target)
    conn = await asyncpg.connect(target, timeout=10)
    try:
        return int(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint"))  # takes an id of its own
    finally:
        await conn.close()


@asynccontextmanager
async def _recording(target: str | Path) -> AsyncIterator[tuple[EpisodeStore, Recorder]]:
    store = await open_any_store(target)
    recorder = Recorder(store)
    async with anyio.create_task_group() as tg:
        tg.start_soon(recorder.run)
        try:
            yield store, recorder
        finally:
            with anyio.fail_after(60):
                await recorder.close(30)


async def test_a_burst_of_emitted_calls_lands_in_order_in_one_transaction(store_target: str | Path) -> None:
    n = 100
    async with _recording(store_target) as (store, recorder):
        before = await _transactions(store_target)
        recorder.emit("open_episode", "ep", "alice", None, T0)
        for k in range(1, n + 1):  # queued while the writer waits: it finds them all at once
            recorder.emit("add_call", "ep", a_call(k))
        with anyio.fail_after(60):
            written, _ = await recorder.commit("set_submission", "ep", "42", T0 + timedelta(seconds=1))
        after = await _transactions(store_target)
        assert written
        record = await store.get("ep")
    assert record is not None and record.answer == "42"
    assert [call.seq for call in record.calls] == list(range(1, n + 1))
    assert [call.arguments["nested"]["n"] for call in record.calls] == list(range(1, n + 1))
    # The burst in one transaction and the commit in its own (PostgreSQL: less the counter's own reading).
    made = after - before - (0 if isinstance(store_target, Path) else 1)
    assert made == 2, f"{n + 2} records took {made} transactions"


async def test_a_refused_record_in_a_batch_costs_only_itself(
    store_target: str | Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "fleet_mcp_proxy.recorder")
    async with _recording(store_target) as (store, recorder):
        recorder.emit("open_episode", "ep", "alice", None, T0)
        recorder.emit("add_call", "ep", a_call(1))
        recorder.emit("add_call", "ep-never-opened", a_call(2))  # refused: no such episode
        recorder.emit("add_call", "ep", a_call(3))
        recorder.emit("add_instance", "ep", "tracker", "local-1", "local", "tracker", T0)
        recorder.emit("set_result", "ep", {"status": "scored", "reward": 1.0}, {"stdout": ""})
        with anyio.fail_after(60):
            written, _ = await recorder.commit("set_submission", "ep", "42", T0)
        assert written
        record = await store.get("ep")
    assert record is not None
    assert [(c.seq, c.arguments["nested"]["n"]) for c in record.calls] == [(1, 1), (2, 3)]
    assert [i.instance_id for i in record.instances] == ["local-1"]
    assert record.reward == {"status": "scored", "reward": 1.0} and record.answer == "42"
    failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert failed == ["episode store: add_call for episode ep-never-opened failed"], caplog.text


async def test_a_commit_after_many_emits_is_durable_when_it_returns(store_target: str | Path) -> None:
    n = 2 * BATCH_LIMIT + 10  # more than one batch holds
    async with _recording(store_target) as (_, recorder):
        recorder.emit("open_episode", "ep", "alice", None, T0)
        for k in range(1, n + 1):
            recorder.emit("add_call", "ep", a_call(k))
        with anyio.fail_after(60):
            written, _ = await recorder.commit("set_submission", "ep", "42", T0)
        assert written
        async with await open_any_store(store_target) as other:  # another connection sees it all, now
            record = await other.get("ep")
        assert record is not None and record.answer == "42"
        assert [call.seq for call in record.calls] == list(range(1, n + 1))


async def test_close_writes_every_queued_record(store_target: str | Path, caplog: pytest.LogCaptureFixture) -> None:
    n = BATCH_LIMIT + 10
    store = await open_any_store(store_target)
    recorder = Recorder(store)
    async with anyio.create_task_group() as tg:
        tg.start_soon(recorder.run)
        recorder.emit("open_episode", "ep", "alice", None, now())
        for k in range(1, n + 1):
            recorder.emit("add_call", "ep", a_call(k))
        with anyio.fail_after(60):
            await recorder.close(30)
    async with await open_any_store(store_target) as reopened:
        record = await reopened.get("ep")
    assert record is not None and len(record.calls) == n
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
