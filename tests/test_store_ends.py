"""The durable end in the store: states move forward only, a grade is written once, claims are compare-and-set,
and a version-1 file is migrated in place."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from fleet_mcp_proxy.store import SCHEMA_VERSION, open_any_store, open_store
from fleet_mcp_proxy.store.records import OwnerRecord
from fleet_mcp_proxy.store.schema import MIGRATIONS

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FINAL = {"status": "final", "reward": 1.0, "failure_reason": None}
OTHER = {"status": "final", "reward": 0.0, "failure_reason": None}
VERIFIER = {"stdout": "", "error": None, "attempts": 1}


async def test_an_end_moves_forward_and_carries_what_grading_needs(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store:
        await store.open_episode("e1", "alice", "task-1", T0, owner="me")
        await store.add_instance("e1", "web", "inst-1", "fleet", "web", T0, url="https://x/mcp", expires_at=1e10)
        (pending,) = await store.unfinished()
        assert (pending.state, pending.owner, pending.task) == ("live", "me", None)
        await store.begin_end("e1", "idle", T0 + timedelta(seconds=5), {"task_key": "task-1", "prompt": "p"})
        await store.begin_end("e1", "shutdown", T0 + timedelta(seconds=9), None)  # already ending: kept as it was
        (pending,) = await store.unfinished()
        assert (pending.state, pending.end_reason, pending.task) == (
            "ending",
            "idle",
            {"task_key": "task-1", "prompt": "p"},
        )
        assert [(i.instance_id, i.url, i.expires_at) for i in pending.instances] == [("inst-1", "https://x/mcp", 1e10)]
        await store.set_state("e1", "verifying", T0)
        assert await store.grade("e1", FINAL, VERIFIER, T0 + timedelta(seconds=6)) == FINAL
        # A retried grading (a restart, another process) gets the stored grade back; nothing is overwritten.
        assert await store.grade("e1", OTHER, VERIFIER, T0 + timedelta(seconds=7)) == FINAL
        record = await store.get("e1")
        assert record is not None and record.state == "graded" and record.graded_at == T0 + timedelta(seconds=6)
        await store.instance_released("e1", "inst-1", T0 + timedelta(seconds=8))
        await store.set_state("e1", "releasing", T0)
        (pending,) = await store.unfinished()
        assert pending.instances == ()
        await store.set_state("e1", "closed", T0 + timedelta(seconds=9))
        await store.set_state("e1", "live", T0)  # a closed row never reopens
        assert await store.unfinished() == []
        record = await store.get("e1")
        assert record is not None and (record.state, record.closed_at) == ("closed", T0 + timedelta(seconds=9))
        assert record.reward == FINAL


async def test_exactly_one_of_many_racing_claims_wins(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store, await open_any_store(store_target) as twin:
        await store.open_episode("e1", "alice", None, T0, owner="dead")
        wins: list[str] = []

        async def claim(name: str) -> None:
            if await (store if name.startswith("a") else twin).claim("e1", name, "dead"):
                wins.append(name)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(10):
                    tg.start_soon(claim, f"{'ab'[n % 2]}{n}")
        assert len(wins) == 1
        assert await store.disown(wins[0]) == 1
        assert await twin.claim("e1", "late", None)  # an unowned row is claimed with expected None


async def test_owners_and_meta(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store:
        owner = OwnerRecord(owner_id="o1", host="h", pid=1, started_at=T0, lease_until=10.0, address="http://h:8000")
        await store.register_owner(owner)
        await store.renew_owner("o1", 20.0)
        assert [(o.owner_id, o.lease_until, o.address) for o in await store.owners()] == [("o1", 20.0, "http://h:8000")]
        await store.register_owner(OwnerRecord(owner_id="o1", host="h", pid=2, started_at=T0, lease_until=30.0))
        assert [(o.pid, o.lease_until, o.address) for o in await store.owners()] == [(2, 30.0, None)]  # replaced
        await store.drop_owner("o1")
        assert await store.owners() == []
        assert await store.meta("run_id", None) is None
        assert await store.meta("run_id", "first") == "first"
        assert await store.meta("run_id", "second") == "first"


async def test_a_version_1_file_is_migrated_and_its_rows_count_as_closed(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute("INSERT INTO episodes (id, principal, started_at) VALUES ('old', 'a', ?)", (T0.isoformat(),))
    with pytest.raises(Exception, match="schema version 1"):
        await open_store(path, create=False)  # the read-only CLI says how to upgrade rather than failing later
    async with await open_store(path) as store:
        assert await store.unfinished() == []
        record = await store.get("old")
        assert record is not None and record.state == "closed"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone() == (SCHEMA_VERSION,)


async def test_a_grade_on_submit_leaves_the_episode_live_so_its_end_records_its_reason(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "e.sqlite3") as store:
        await store.open_episode("e1", "alice", "task-1", T0)
        await store.grade("e1", FINAL, VERIFIER, T0)
        await store.begin_end("e1", "max_steps", T0 + timedelta(seconds=1), None)
        record = await store.get("e1")
        assert record is not None and (record.state, record.end_reason) == ("ending", "max_steps")


async def test_routes_lead_to_the_owner_of_an_unfinished_episode(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store:
        a = OwnerRecord(owner_id="a", host="h", pid=1, started_at=T0, lease_until=1e10, address="http://10.0.0.5:8000")
        await store.register_owner(a)
        await store.open_episode("e1", "alice", None, T0, owner="a")
        await store.open_episode("e2", "alice", None, T0, owner=None)
        await store.add_route("key:alice:k1", "e1")
        await store.add_route("session:s1", "e1")
        assert await store.route_owner("key:alice:k1") == a
        assert await store.route_owner("session:s1") == a
        assert await store.route_owner("key:bob:k1") is None  # routes are per principal
        await store.add_route("key:alice:k1", "e2")  # a reused key moves to its newest episode: no owner yet
        assert await store.route_owner("key:alice:k1") is None
        await store.end_episode("e1", "done", T0)  # a closed episode is nobody's to forward to
        assert await store.route_owner("session:s1") is None


async def test_a_named_lease_is_compare_and_set_and_taken_over_once_it_ends(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store, await open_any_store(store_target) as twin:
        assert await store.lease("sweep") is None
        assert await store.claim_lease("sweep", "a", until=100.0, now=50.0)
        assert not await twin.claim_lease("sweep", "b", until=160.0, now=99.0)  # held by a until 100
        assert await store.claim_lease("sweep", "a", until=130.0, now=99.0)  # its holder renews it
        lease = await twin.lease("sweep")
        assert lease is not None and (lease.holder, lease.until) == ("a", 130.0)
        assert await twin.claim_lease("sweep", "b", until=190.0, now=130.0)  # ended: taken over
        assert not await store.claim_lease("sweep", "a", until=200.0, now=131.0)
        assert await store.meta("run_id", "r1") == "r1"  # other meta keys are untouched
        wins = []

        async def race(holder: str) -> None:
            if await store.claim_lease("race", holder, until=10.0, now=1.0):
                wins.append(holder)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(8):
                    tg.start_soon(race, f"h{n}")
        assert len(wins) == 1


async def test_owned_counts_are_per_owner_over_unfinished_rows(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store:
        for episode_id, owner in (("e1", "a"), ("e2", "a"), ("e3", "b"), ("e4", "a"), ("e5", None)):
            await store.open_episode(episode_id, "p", None, T0, owner=owner)
        await store.begin_end("e2", "idle", T0, None)  # unfinished, no longer live
        await store.end_episode("e4", "done", T0)  # closed: not counted
        counts = await store.owned_counts()
        assert {o: (c.live, c.unfinished) for o, c in counts.items()} == {"a": (1, 2), "b": (1, 1)}
