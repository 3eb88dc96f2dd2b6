"""The episode store: every record survives restarts and crashes, and the `episodes` CLI reads it back."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

from fleet_mcp_proxy.store import (
    SCHEMA_VERSION,
    CallRecord,
    DuplicateRecord,
    EpisodeRecord,
    EpisodeStore,
    InstanceRecord,
    RecordNotFound,
    StoreError,
    open_any_store,
    open_store,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
REWARD = {"status": "scored", "reward": 0.75, "failure_reason": None}
VERIFIER = {"stdout": "3 of 4 checks passed\n", "error": None, "attempts": 1}


def a_call(n: int, seq: int | None = None) -> CallRecord:
    return CallRecord(
        seq=seq,
        tool="tracker__create_issue",
        arguments={"title": f"issue {n}", "labels": ["bug", "ünïcode"], "nested": {"n": n}},
        result_bytes=100 + n,
        is_error=n % 3 == 0,
        started_at=T0 + timedelta(seconds=n),
        duration_ms=12.5 + n,
    )


async def record_full_episode(store: EpisodeStore, episode_id: str, task_key: str | None = "task-1") -> None:
    await store.open_episode(episode_id, "alice", task_key, T0)
    await store.add_instance(episode_id, "tracker", "local-1", "local", "tracker", T0)
    await store.add_instance(episode_id, "web", "fl-abc", "fleet", "fleet:web@v2", T0 + timedelta(seconds=1))
    for n in range(1, 4):
        assert await store.add_call(episode_id, a_call(n)) == n
    await store.instance_released(episode_id, "local-1", T0 + timedelta(seconds=10))
    await store.set_submission(episode_id, "the answer is 42", T0 + timedelta(seconds=11))
    await store.grade(episode_id, REWARD, VERIFIER, T0 + timedelta(seconds=11.5))
    await store.end_episode(episode_id, "submitted", T0 + timedelta(seconds=12))


def expected_full_episode(episode_id: str, task_key: str | None = "task-1") -> EpisodeRecord:
    return EpisodeRecord(
        episode_id=episode_id,
        principal="alice",
        task_key=task_key,
        started_at=T0,
        ended_at=T0 + timedelta(seconds=12),
        end_reason="submitted",
        answer="the answer is 42",
        submitted_at=T0 + timedelta(seconds=11),
        reward=REWARD,
        verifier=VERIFIER,
        instances=(
            InstanceRecord(
                alias="tracker",
                instance_id="local-1",
                provider="local",
                spec="tracker",
                created_at=T0,
                released_at=T0 + timedelta(seconds=10),
            ),
            InstanceRecord(
                alias="web",
                instance_id="fl-abc",
                provider="fleet",
                spec="fleet:web@v2",
                created_at=T0 + timedelta(seconds=1),
            ),
        ),
        calls=tuple(a_call(n, seq=n) for n in range(1, 4)),
        state="closed",
        graded_at=T0 + timedelta(seconds=11.5),
        closed_at=T0 + timedelta(seconds=12),
    )


@pytest.mark.anyio
async def test_a_full_episode_round_trips(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store:
        await record_full_episode(store, "0123456789abcdef")
        record = await store.get("0123456789abcdef")
        assert record == expected_full_episode("0123456789abcdef")
        assert json.loads(json.dumps(record.to_json())) == record.to_json()
        assert await store.get("ffffffffffffffff") is None


@pytest.mark.anyio
async def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "e.sqlite3"
    async with await open_store(db) as store:
        await store.open_episode("a" * 16, "alice", None, T0)
        assert await anyio.Path(f"{db}-wal").exists()  # commits go to the write-ahead log
        with sqlite3.connect(db) as peek:  # a second reader while the store is open: WAL allows it
            assert peek.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert peek.execute("SELECT MAX(version) FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        peek.close()


@pytest.mark.anyio
async def test_records_survive_a_restart(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store:
        await record_full_episode(store, "0123456789abcdef")
    async with await open_any_store(store_target) as store:
        assert await store.get("0123456789abcdef") == expected_full_episode("0123456789abcdef")
        assert await store.add_call("0123456789abcdef", a_call(4)) == 4  # numbering carries on


@pytest.mark.anyio
async def test_writes_that_break_the_rules_are_refused(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store:
        await store.open_episode("a" * 16, "alice", None, T0)
        with pytest.raises(DuplicateRecord):
            await store.open_episode("a" * 16, "bob", None, T0)
        with pytest.raises(RecordNotFound, match="b{16}"):
            await store.add_call("b" * 16, a_call(1))
        with pytest.raises(RecordNotFound):
            await store.end_episode("b" * 16, "idle", T0)
        with pytest.raises(RecordNotFound, match="no instance"):
            await store.instance_released("a" * 16, "never-made", T0)
        assert await store.add_call("a" * 16, a_call(1, seq=7)) == 7  # a caller's own numbering is kept
        with pytest.raises(DuplicateRecord):
            await store.add_call("a" * 16, a_call(2, seq=7))
        assert await store.add_call("a" * 16, a_call(3)) == 8
        with pytest.raises(ValueError, match="timezone"):
            await store.end_episode("a" * 16, "idle", datetime(2025, 1, 1))


@pytest.mark.anyio
async def test_a_cancelled_caller_still_records_its_call(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store:
        await store.open_episode("a" * 16, "alice", None, T0)
        with anyio.CancelScope() as scope:
            scope.cancel()  # e.g. the episode's task group is being torn down as the call finishes
            await store.add_call("a" * 16, a_call(1))
        record = await store.get("a" * 16)
        assert record is not None
        assert [call.seq for call in record.calls] == [1]


@pytest.mark.anyio
async def test_unusable_databases_are_refused_by_name(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    async with await open_store(newer):
        pass
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE schema_version SET version = 99")
    db.close()
    with pytest.raises(StoreError, match=r"newer\.sqlite3 has schema version 99"):
        await open_store(newer)
    foreign = tmp_path / "foreign.sqlite3"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    db.close()
    with pytest.raises(StoreError, match="not a fleet-mcp-proxy episode database"):
        await open_store(foreign)
    with pytest.raises(StoreError, match="absent.sqlite3"):
        await open_store(tmp_path / "absent.sqlite3", create=False)
    assert not (tmp_path / "absent.sqlite3").exists()  # a reader never creates a database
    with pytest.raises(StoreError, match="cannot open episode database"):
        await open_store(tmp_path)  # a directory


# Opens the store and records calls, printing each one after its commit; then holds the store open
# (no close, so no checkpoint) until the test kills it.
WRITER = """
import sys
from datetime import UTC, datetime
import anyio
from fleet_mcp_proxy.store import CallRecord, open_store

async def main(path, stop):
    store = await open_store(path)
    await store.open_episode("c" * 16, "crash", None, datetime.now(UTC))
    seq = 0
    while stop == 0 or seq < stop:
        call = CallRecord(tool="t", arguments={"n": seq + 1}, result_bytes=1, is_error=False,
                          started_at=datetime.now(UTC), duration_ms=0.5)
        seq = await store.add_call("c" * 16, call)
        print("COMMITTED", seq, flush=True)
    print("IDLE", flush=True)
    sys.stdin.read()

anyio.run(main, sys.argv[1], int(sys.argv[2]))
"""


async def read_line(stream: IO[str]) -> str:
    with anyio.fail_after(20):
        line = await anyio.to_thread.run_sync(stream.readline, abandon_on_cancel=True)
    assert line, "the writer exited before printing"
    return line


def sigkill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=20) == -signal.SIGKILL


async def calls_after_crash(db: Path) -> list[int]:
    assert (await anyio.Path(f"{db}-wal").stat()).st_size > 0  # the commits are still only in the log
    async with await open_store(db) as store:
        record = await store.get("c" * 16)
    assert record is not None
    assert all(call.arguments == {"n": call.seq} for call in record.calls)
    return [call.seq or 0 for call in record.calls]


def start_writer(db: Path, stop: int) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", WRITER, str(db), str(stop)]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@pytest.mark.anyio
async def test_a_killed_writer_keeps_every_committed_call(tmp_path: Path) -> None:
    db, n = tmp_path / "e.sqlite3", 25
    proc = start_writer(db, n)
    try:
        assert proc.stdout is not None
        lines = [await read_line(proc.stdout) for _ in range(n + 1)]
        assert lines[-2:] == [f"COMMITTED {n}\n", "IDLE\n"]
    finally:
        sigkill(proc)
    assert await calls_after_crash(db) == list(range(1, n + 1))


@pytest.mark.anyio
async def test_a_writer_killed_mid_stream_loses_at_most_the_call_in_flight(tmp_path: Path) -> None:
    db = tmp_path / "e.sqlite3"
    proc = start_writer(db, 0)  # writes until killed
    assert proc.stdout is not None
    printed = 0
    try:
        while printed < 40:
            printed = int((await read_line(proc.stdout)).split()[1])
    finally:
        sigkill(proc)
    for line in proc.stdout.read().splitlines():  # what it acknowledged before it died
        printed = int(line.split()[1])
    seqs = await calls_after_crash(db)
    assert seqs == list(range(1, len(seqs) + 1))
    assert printed <= len(seqs) <= printed + 1  # every acknowledged commit, plus perhaps the one in flight


@pytest.mark.anyio
async def test_export_round_trips_through_json_lines(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store:
        await record_full_episode(store, "0123456789abcdef")
        # More than one export page, with start times shared across page boundaries.
        ids = [f"{i:016x}" for i in range(1, 251)]
        for i, episode_id in enumerate(ids):
            await store.open_episode(episode_id, "bob", None, T0 + timedelta(hours=1 + i // 90))
            await store.add_call(episode_id, a_call(i))
        lines = [json.dumps(episode) + "\n" async for episode in store.export()]
        assert [json.loads(line)["episode_id"] for line in lines] == ["0123456789abcdef", *ids]
        for line in lines[:5] + lines[95:105] + lines[-3:]:
            parsed = json.loads(line)
            record = await store.get(parsed["episode_id"])
            assert record is not None
            assert parsed == record.to_json()
        later = [episode["episode_id"] async for episode in store.export(since=T0 + timedelta(hours=3))]
        assert later == ids[180:]


@pytest.mark.anyio
async def test_list_filters_and_pages_newest_first(store_target: str | Path) -> None:
    async with await open_any_store(store_target) as store:
        for i in range(7):
            episode_id = f"{i:016x}"
            await store.open_episode(episode_id, "alice", f"task-{i % 2}", T0 + timedelta(minutes=i))
            for n in range(i):
                await store.add_call(episode_id, a_call(n))
        await store.set_result(f"{6:016x}", REWARD, VERIFIER)
        await store.set_submission(f"{6:016x}", "done", T0)
        newest = await store.list(limit=3)
        assert [s.episode_id[-1] for s in newest] == ["6", "5", "4"]
        assert (newest[0].call_count, newest[0].status, newest[0].reward, newest[0].submitted) == (
            6,
            "scored",
            0.75,
            True,
        )
        assert (newest[1].status, newest[1].reward, newest[1].submitted) == (None, None, False)
        assert [s.episode_id[-1] for s in await store.list(limit=3, offset=3)] == ["3", "2", "1"]
        assert [s.episode_id[-1] for s in await store.list(limit=3, offset=6)] == ["0"]
        assert [s.episode_id[-1] for s in await store.list(task_key="task-1")] == ["5", "3", "1"]
        assert [s.episode_id[-1] for s in await store.list(limit=1, offset=1, task_key="task-0")] == ["4"]
        assert await store.list(task_key="no-such-task") == []
        assert newest[0].to_json()["started_at"] == "2025-01-02T03:10:05.678901+00:00"


@pytest.mark.anyio
async def test_concurrent_writers_keep_every_call(store_target: str | Path) -> None:
    episodes, tasks, calls = ["e" * 16, "f" * 16], 12, 15
    async with await open_any_store(store_target) as store:
        for episode_id in episodes:
            await store.open_episode(episode_id, "alice", None, T0)

        async def writer(episode_id: str, task: int) -> None:
            for n in range(calls):
                await store.add_call(episode_id, a_call(task * 1000 + n))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for episode_id in episodes:
                    for task in range(tasks):
                        tg.start_soon(writer, episode_id, task)
        for episode_id in episodes:
            record = await store.get(episode_id)
            assert record is not None
            assert [call.seq for call in record.calls] == list(range(1, tasks * calls + 1))
            made = sorted(call.arguments["nested"]["n"] for call in record.calls)
            assert made == sorted(task * 1000 + n for task in range(tasks) for n in range(calls))


# --- the CLI, as a separate process ---------------------------------------------------------------


def episodes_cli(*args: str, cwd: Path | None = None, state: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fleet_mcp_proxy.episodes_cli", *args]
    env = {**os.environ, **({"XDG_STATE_HOME": str(state)} if state is not None else {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd, env=env, check=False)


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    async def fill(db: Path) -> None:
        async with await open_store(db) as store:
            await record_full_episode(store, "0123456789abcdef")
            await store.open_episode("fedcba9876543210", "bob", "task-2", T0 + timedelta(hours=1))

    db = tmp_path / "state" / "fleet-mcp-proxy" / "episodes.sqlite3"  # where XDG_STATE_HOME=tmp/state puts it
    db.parent.mkdir(parents=True)
    anyio.run(fill, db)
    return db


def test_cli_list(recorded: Path) -> None:
    done = episodes_cli("list", state=recorded.parents[1])  # the default database, under $XDG_STATE_HOME
    assert done.returncode == 0, done.stderr
    header, newest, older = done.stdout.splitlines()
    assert header.split() == ["EPISODE", "STARTED", "(UTC)", "TASK", "CALLS", "STATUS", "REWARD", "STATE", "ENDED"]
    assert newest.split() == ["fedcba9876543210", "2025-01-02", "04:04:05", "task-2", "0", "-", "-", "live", "-"]
    assert older.split() == [
        *("0123456789abcdef", "2025-01-02", "03:04:05", "task-1", "3", "scored", "0.75", "closed", "submitted")
    ]
    only = episodes_cli("list", "--db", str(recorded), "--task", "task-1", "--limit", "5")
    assert only.stdout.splitlines()[1:] == [older]
    assert len(episodes_cli("list", "--db", str(recorded), "--limit", "1").stdout.splitlines()) == 2


def test_cli_show(recorded: Path) -> None:
    done = episodes_cli("show", "0123456789abcdef", "--db", str(recorded))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected_full_episode("0123456789abcdef").to_json()
    assert done.stdout.startswith('{\n  "episode_id"')  # pretty-printed


def test_cli_export(recorded: Path, tmp_path: Path) -> None:
    done = episodes_cli("export", "--db", str(recorded))
    assert done.returncode == 0, done.stderr
    episodes: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    assert episodes[0] == expected_full_episode("0123456789abcdef").to_json()
    assert [e["episode_id"] for e in episodes] == ["0123456789abcdef", "fedcba9876543210"]
    out = tmp_path / "out" / "episodes.jsonl"
    out.parent.mkdir()
    assert episodes_cli("export", "--db", str(recorded), "--out", str(out)).returncode == 0
    assert out.read_text(encoding="utf-8") == done.stdout
    assert [p.name for p in out.parent.iterdir()] == ["episodes.jsonl"]  # no partial file left behind


def test_cli_unknown_episode_exits_1(recorded: Path) -> None:
    done = episodes_cli("show", "0000000000000000", "--db", str(recorded))
    assert (done.returncode, done.stdout) == (1, "")
    assert "no episode 0000000000000000" in done.stderr


def test_cli_bad_database_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "missing.sqlite3"
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_text("not a database at all, just text that is long enough to fill a header" * 2)
    for db in (missing, garbage):
        for command in (["list"], ["show", "0123456789abcdef"], ["export"]):
            done = episodes_cli(*command, "--db", str(db))
            assert done.returncode == 2, (command, done.stderr)
            assert str(db) in done.stderr
            assert "Traceback" not in done.stderr
    assert not missing.exists()
