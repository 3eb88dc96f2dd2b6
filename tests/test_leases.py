"""The lease keeper: releases retried until done, heartbeats that notice a lost lease. Time is the subject
of the heartbeat tests (the shortest beat interval is 1 s), so they wait on events bounded by fail_after."""

from __future__ import annotations

import anyio
import pytest

from fleet_mcp_proxy.providers.base import HttpTarget, Instance
from fleet_mcp_proxy.providers.leases import Beat, LeaseKeeper, LeaseLost, beat_interval


def _instance(n: int = 1) -> Instance:
    return Instance("env", f"inst-{n}", "test", HttpTarget("http://127.0.0.1:1/mcp"))


def test_beat_interval_is_half_the_ttl_between_1_and_30_seconds() -> None:
    assert beat_interval(10) == 5
    assert beat_interval(600) == 30
    assert beat_interval(0.5) == 1


@pytest.mark.anyio
async def test_a_failing_release_is_retried_until_it_succeeds_and_drain_waits_for_it() -> None:
    calls: list[str] = []

    async def flaky_delete(instance: Instance) -> None:
        calls.append(instance.instance_id)
        if len(calls) < 3:
            raise ConnectionError("platform down")

    async with anyio.create_task_group() as tg:
        keeper = LeaseKeeper(tg)
        keeper.release(_instance(), flaky_delete)
        keeper.release(_instance(), flaky_delete)  # idempotent: queued once
        assert await keeper.drain(30)
    assert calls == ["inst-1"] * 3


@pytest.mark.anyio
async def test_a_refused_heartbeat_marks_the_instance_lost() -> None:
    lost = anyio.Event()
    reasons: list[str] = []

    async def refuse(instance: Instance) -> Beat:
        raise LeaseLost("Fleet answered 404 to a heartbeat")

    def on_lost(reason: str) -> None:
        reasons.append(reason)
        lost.set()

    async with anyio.create_task_group() as tg:
        LeaseKeeper(tg).hold(_instance(), heartbeat=refuse, ttl=2, on_lost=on_lost)
        with anyio.fail_after(10):
            await lost.wait()
        tg.cancel_scope.cancel()
    assert reasons == ["Fleet answered 404 to a heartbeat"]


@pytest.mark.anyio
async def test_transient_heartbeat_failures_lose_the_lease_only_after_a_whole_ttl() -> None:
    attempts = 0
    lost = anyio.Event()

    async def unreachable(instance: Instance) -> Beat:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("network")

    async with anyio.create_task_group() as tg:
        LeaseKeeper(tg).hold(_instance(), heartbeat=unreachable, ttl=2, on_lost=lambda _r: lost.set())
        with anyio.fail_after(15):
            await lost.wait()
        tg.cancel_scope.cancel()
    assert attempts >= 2, "transient failures are retried before the lease is given up"


@pytest.mark.anyio
async def test_releasing_stops_the_heartbeat() -> None:
    beats = 0
    first = anyio.Event()

    async def beat(instance: Instance) -> Beat:
        nonlocal beats
        beats += 1
        first.set()
        return Beat(ttl=2)

    async def delete(instance: Instance) -> None:
        return None

    async with anyio.create_task_group() as tg:
        keeper = LeaseKeeper(tg)
        keeper.hold(_instance(), heartbeat=beat, ttl=2)
        with anyio.fail_after(10):
            await first.wait()
        keeper.release(_instance(), delete)
        assert await keeper.drain(10)
        counted = beats
        with anyio.move_on_after(2.5):  # time is the subject: no beat may follow the release
            await anyio.Event().wait()
        tg.cancel_scope.cancel()
    assert beats == counted


@pytest.mark.anyio
async def test_a_beat_answered_after_the_release_does_not_mark_the_instance_lost() -> None:
    # A beat in flight when the episode releases its instance is refused (the platform deleted it): that is the
    # release, not a lost lease; the owner must not hear "lost" (seen in R4's logs).
    in_flight, released, answered = anyio.Event(), anyio.Event(), anyio.Event()
    reasons: list[str] = []

    async def beat(instance: Instance) -> Beat:
        in_flight.set()
        await released.wait()
        answered.set()
        raise LeaseLost("Fleet refused the heartbeat")

    async def delete(instance: Instance) -> None:
        return None

    async with anyio.create_task_group() as tg:
        keeper = LeaseKeeper(tg)
        keeper.hold(_instance(), heartbeat=beat, ttl=2, on_lost=reasons.append)
        with anyio.fail_after(10):
            await in_flight.wait()
            keeper.release(_instance(), delete)
            released.set()
            await answered.wait()
            assert await keeper.drain(10)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert reasons == []


@pytest.mark.anyio
async def test_the_released_ids_kept_for_idempotency_are_bounded() -> None:
    deleted: list[str] = []

    async def delete(instance: Instance) -> None:
        deleted.append(instance.instance_id)

    async with anyio.create_task_group() as tg:
        keeper = LeaseKeeper(tg, released_kept=3)
        for n in range(1, 6):
            keeper.release(_instance(n), delete)
        assert await keeper.drain(30)
        keeper.release(_instance(5), delete)  # recent: still known, not deleted twice
        keeper.release(_instance(1), delete)  # forgotten (only 3 kept): deleted again, harmlessly
        assert await keeper.drain(30)
    assert deleted == ["inst-1", "inst-2", "inst-3", "inst-4", "inst-5", "inst-1"]


@pytest.mark.anyio
async def test_a_failed_heartbeat_is_retried_soon_enough_to_beat_the_platforms_deadline() -> None:
    # The platform stops an instance `ttl` after its last accepted beat; beats come every ttl / 2. Retried a
    # whole interval later, one failed beat (a 503) lands the next one on the deadline: the instance is gone.
    ttl = 10.0
    calls: list[float] = []
    accepted = anyio.Event()

    async def first_fails(instance: Instance) -> Beat:
        calls.append(anyio.current_time())
        if len(calls) == 1:
            raise ConnectionError("503")
        accepted.set()
        return Beat()

    async with anyio.create_task_group() as tg:
        start = anyio.current_time()
        LeaseKeeper(tg).hold(_instance(), heartbeat=first_fails, ttl=ttl)
        with anyio.fail_after(3 * ttl):
            await accepted.wait()
        tg.cancel_scope.cancel()
    # The retry waits 0.5 s after a failure at ttl / 2: half a TTL (10x the wait) of slack is left.
    assert calls[1] - start < ttl, f"accepted {calls[1] - start:.1f} s after the last beat; the platform stopped it"


@pytest.mark.anyio
async def test_the_first_beat_counts_from_the_create_not_from_its_late_answer() -> None:
    # A create may answer long after the platform made the instance (it waits for it to run): the lease, and
    # so the first beat, count from when the create was sent.
    ttl = 20.0  # beats every 10 s
    beaten = anyio.Event()
    at: list[float] = []

    async def beat(instance: Instance) -> Beat:
        at.append(anyio.current_time())
        beaten.set()
        return Beat()

    async with anyio.create_task_group() as tg:
        start = anyio.current_time()
        LeaseKeeper(tg).hold(_instance(), heartbeat=beat, ttl=ttl, since=start - 9.0)  # answered 9 s late
        with anyio.fail_after(2 * ttl):
            await beaten.wait()
        tg.cancel_scope.cancel()
    assert at[0] - start < 6.0, f"first beat {at[0] - start:.1f} s after the answer; it was due 1 s after it"
