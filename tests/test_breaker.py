"""The Fleet breaker and retry budget as pure logic (a hand-moved clock), and the guarded transport against a
scripted fake Fleet mounted through `httpx.MockTransport`."""

from __future__ import annotations

import anyio
import httpx
import pytest

from fleet_mcp_proxy.providers.breaker import CircuitBreaker, FleetUnavailable, RetryBudget, State
from fleet_mcp_proxy.providers.fleet_transport import GuardedTransport


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_n_consecutive_failures_and_a_success_resets_the_count() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, open_for=10, max_open_for=40, clock=clock)
    for _ in range(2):
        assert breaker.admit() is False
        breaker.failed()
    breaker.succeeded()
    for _ in range(2):
        breaker.failed()
    assert breaker.state is State.CLOSED, "a success in between resets the count"
    breaker.failed()
    assert breaker.state is State.OPEN and breaker.opened == 1
    with pytest.raises(FleetUnavailable) as refused:
        breaker.admit()
    assert "Fleet is unavailable" in str(refused.value) and "in 10 s" in str(refused.value)
    assert refused.value.retry_in == pytest.approx(10)


def test_one_probe_per_interval_its_failure_doubles_the_wait_up_to_the_cap_and_a_success_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, open_for=10, max_open_for=25, clock=clock)
    breaker.failed()
    waits = []
    for _ in range(3):
        waits.append(breaker.retry_in())
        clock.now += breaker.retry_in()
        assert breaker.state is State.HALF_OPEN
        assert breaker.admit() is True, "the first call after the interval is the probe"
        with pytest.raises(FleetUnavailable, match="checking it again"):
            breaker.admit()  # only one probe at a time
        breaker.failed(probe=True)
    assert waits == [10, 20, 25]
    clock.now += breaker.retry_in()
    probe = breaker.admit()
    breaker.succeeded(probe)
    assert breaker.state is State.CLOSED and breaker.admit() is False
    breaker.failed()
    assert breaker.retry_in() == 10, "closing resets the open interval"


def test_an_abandoned_probe_lets_the_next_call_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, open_for=5, clock=clock)
    breaker.failed()
    clock.now += 5
    assert breaker.admit() is True
    breaker.abandoned(probe=True)
    assert breaker.admit() is True


def test_a_flaky_fleet_does_not_trip_the_breaker_but_a_fleet_that_is_down_does() -> None:
    import random

    rng = random.Random(7)
    breaker = CircuitBreaker(failures=5, open_for=5, clock=FakeClock())
    runs = 0
    streak = 0
    for _ in range(20_000):  # 30 % failures: runs of 5 happen, but never with 80 % of the last 20 failed
        if rng.random() < 0.3:
            breaker.failed()
            streak += 1
            runs += streak == 5
        else:
            breaker.succeeded()
            streak = 0
    assert runs > 10 and breaker.opened == 0
    n = 0
    while breaker.state is State.CLOSED and n < 20:
        breaker.failed()
        n += 1
    assert breaker.opened == 1 and n <= 16, n
    fresh = CircuitBreaker(failures=5, clock=FakeClock())
    for _ in range(5):
        fresh.failed()
    assert fresh.state is State.OPEN, "with no recent success, 5 failures in a row open it"


def test_a_late_success_closes_an_open_breaker() -> None:
    breaker = CircuitBreaker(failures=1, open_for=5, clock=FakeClock())
    breaker.failed()
    breaker.succeeded()
    assert breaker.state is State.CLOSED


def test_the_retry_budget_is_max_of_minimum_and_ratio_of_provisions_in_flight() -> None:
    budget = RetryBudget(ratio=0.2, minimum=3)
    assert budget.limit == 3
    with budget.provisioning():
        assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]
        for _ in range(3):
            budget.release()
    held = [budget.provisioning() for _ in range(50)]
    for cm in held:
        cm.__enter__()
    assert budget.limit == 10
    assert sum(budget.try_acquire() for _ in range(30)) == 10
    for cm in held:
        cm.__exit__(None, None, None)
    assert budget.provisions == 0 and budget.peak == 10


# -- the transport --------------------------------------------------------------------------------------------
class ScriptedFleet:
    """Answers from a script of statuses (then 200), counting calls; `None` cuts the connection."""

    def __init__(self, *script: int | None) -> None:
        self.script = list(script)
        self.calls = 0
        self.request_ids: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.request_ids.append(request.headers.get("x-request-id", ""))
        status = self.script.pop(0) if self.script else 200
        if status is None:
            raise httpx.RemoteProtocolError("cut")
        return httpx.Response(status, json={"detail": "scripted"})


def guarded(fleet: ScriptedFleet, breaker: CircuitBreaker, budget: RetryBudget, retries: int = 4) -> httpx.AsyncClient:
    transport = GuardedTransport(httpx.MockTransport(fleet), breaker, budget, retries=retries, backoff=0.001)
    return httpx.AsyncClient(transport=transport, base_url="http://fleet.test")


@pytest.mark.anyio
async def test_retries_repeat_the_same_request_and_a_success_is_returned() -> None:
    fleet = ScriptedFleet(503, None, 502)
    breaker, budget = CircuitBreaker(failures=5), RetryBudget()
    async with guarded(fleet, breaker, budget) as http:
        with anyio.fail_after(5):
            response = await http.post("/v1/env/instances", headers={"X-Request-ID": "r1"})
    assert response.status_code == 200 and fleet.calls == 4
    assert set(fleet.request_ids) == {"r1"}
    assert budget.retries == 0 and budget.peak == 1 and breaker.state is State.CLOSED


@pytest.mark.anyio
async def test_a_retry_waits_for_a_budget_slot_and_gives_up_when_the_breaker_opens() -> None:
    fleet = ScriptedFleet(503, 503, 503)
    budget = RetryBudget(ratio=0, minimum=1)
    breaker = CircuitBreaker(failures=2, open_for=60)
    async with guarded(fleet, breaker, budget) as http:
        assert budget.try_acquire()  # someone else holds the only slot
        outcome: dict[str, int] = {}

        async def call() -> None:
            outcome["status"] = (await http.get("/v1/env/instances/x")).status_code

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                while budget.waited == 0:
                    await anyio.lowlevel.checkpoint()
                assert fleet.calls == 1, "the retry waits: no call without a slot"
                budget.release()  # the slot frees: the retry goes out, fails, and the breaker opens
        assert outcome == {"status": 503} and fleet.calls == 2 and breaker.state is State.OPEN
        assert budget.retries == 0


@pytest.mark.anyio
async def test_once_the_breaker_opens_retries_stop_and_new_calls_are_refused_without_a_call() -> None:
    fleet = ScriptedFleet(*([503] * 20), 404)
    breaker = CircuitBreaker(failures=3, open_for=60)
    async with guarded(fleet, breaker, RetryBudget(), retries=5) as http:
        with anyio.fail_after(5):
            assert (await http.get("/v1/env/instances/x")).status_code == 503
            with pytest.raises(FleetUnavailable):
                await http.get("/v1/env/instances/x")
    assert fleet.calls == 3, "the third failed attempt opened the breaker: no retry, no new call"
    fleet2 = ScriptedFleet(404)
    async with guarded(fleet2, CircuitBreaker(), RetryBudget()) as http:
        assert (await http.get("/v1/env/instances/x")).status_code == 404
    assert fleet2.calls == 1


@pytest.mark.anyio
async def test_a_cut_connection_is_raised_after_the_retries_and_counts_as_a_failure() -> None:
    fleet = ScriptedFleet(None, None, None)
    breaker = CircuitBreaker(failures=3, open_for=60)
    async with guarded(fleet, breaker, RetryBudget(), retries=2) as http:
        with anyio.fail_after(5), pytest.raises(httpx.RemoteProtocolError):
            await http.post("/v1/env/instances")
    assert fleet.calls == 3 and breaker.state is State.OPEN


def test_quick_errors_while_most_attempts_are_still_out_do_not_open_it() -> None:
    breaker = CircuitBreaker(failures=5, clock=FakeClock())
    for _ in range(150):
        breaker.begin()
    for _ in range(45):  # the 503s come back first; the 105 slow successes are still under way
        breaker.failed()
    assert breaker.state is State.CLOSED
    for _ in range(105):
        breaker.failed()  # ... but they fail too: Fleet is down
    assert breaker.state is State.OPEN
