"""The transport under every provisioning call to Fleet: the breaker first, then retries within the budget.

A retry repeats the same request (same `X-Request-ID`, so the platform recognises a repeated create) on
429/502/503/504 and on network errors, after stamina's jittered backoff (or the server's Retry-After). A
retry holds a slot of the proxy-wide budget from the moment it is decided until its attempt ends, backoff
included; a retry without a free slot waits for one. Once the breaker has opened, the failure is
handed back as it is: the caller's own error handling sees exactly what Fleet said. httpx-retries
cannot hold a slot across its backoff, hence this small loop on stamina.
"""

from __future__ import annotations

import httpx
import stamina

from .breaker import CircuitBreaker, RetryBudget

RETRY_STATUSES = frozenset({429, 502, 503, 504})
FAILURE_STATUSES = frozenset({502, 503, 504})  # what says "Fleet is down" to the breaker (429 does not)
RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_KEPT_HEADERS = ("content-type", "retry-after")


class _Again(Exception):
    """This attempt failed and a retry slot is held: try again after `wait` (None: the backoff)."""

    def __init__(self, wait: float | None) -> None:
        super().__init__("retrying a Fleet request")
        self.wait = wait


def _backoff(exc: Exception) -> bool | float:
    if isinstance(exc, _Again):
        return exc.wait if exc.wait is not None else True
    return False


def _retry_after(response: httpx.Response, cap: float) -> float | None:
    value = response.headers.get("retry-after", "")
    return min(float(value), cap) if value.isdigit() else None


async def _keep(response: httpx.Response) -> httpx.Response:
    """A closed copy of a failed response, to hand back if the retry is called off."""
    body = await response.aread()
    await response.aclose()
    headers = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
    return httpx.Response(response.status_code, headers=headers, content=body)


def _surface(outcome: httpx.Response | Exception) -> httpx.Response:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class GuardedTransport(httpx.AsyncBaseTransport):
    """Breaker-gated, budget-bounded retries around another transport."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        breaker: CircuitBreaker,
        budget: RetryBudget,
        *,
        retries: int,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
    ) -> None:
        self._inner = inner
        self._breaker = breaker
        self._budget = budget
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        probe = self._breaker.admit()  # raises FleetUnavailable: no call goes out
        return await self._send(request, probe, 0 if probe else self._retries)

    def _record(self, outcome: httpx.Response | Exception, probe: bool) -> None:
        if isinstance(outcome, Exception) or outcome.status_code in FAILURE_STATUSES:
            self._breaker.failed(probe)
        else:
            self._breaker.succeeded(probe)

    async def _send(self, request: httpx.Request, probe: bool, retries: int) -> httpx.Response:
        slot = False
        last: httpx.Response | Exception | None = None
        try:
            async for attempt in stamina.retry_context(
                on=_backoff,
                attempts=retries + 1,
                timeout=None,  # the caller's deadline bounds the whole call
                wait_initial=self._backoff,
                wait_max=self._max_backoff,
                wait_jitter=self._backoff,
            ):
                with attempt:
                    if last is not None and not self._breaker.closed:
                        return _surface(last)  # the breaker opened while this retry waited: add no load
                    outcome: httpx.Response | Exception
                    self._breaker.begin()
                    try:
                        outcome = await self._inner.handle_async_request(request)
                    except RETRY_EXCEPTIONS as exc:
                        outcome = exc
                    except BaseException:  # cancelled, or not Fleet's fault: no verdict
                        self._breaker.abandoned(probe)
                        raise
                    finally:
                        if slot:
                            self._budget.release()
                        slot = False
                    self._record(outcome, probe)
                    if isinstance(outcome, httpx.Response) and outcome.status_code not in RETRY_STATUSES:
                        return outcome
                    if attempt.num > retries or not self._breaker.closed:
                        return _surface(outcome)
                    if not await self._budget.acquire(give_up=lambda: not self._breaker.closed):
                        return _surface(outcome)  # the breaker opened while this retry waited for a slot
                    slot = True
                    wait = None
                    if isinstance(outcome, httpx.Response):
                        wait = _retry_after(outcome, self._max_backoff)
                        outcome = await _keep(outcome)
                    last = outcome
                    raise _Again(wait)
        finally:
            if slot:
                self._budget.release()
        raise AssertionError("unreachable: the last attempt returns or raises")
