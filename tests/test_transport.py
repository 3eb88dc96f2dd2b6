"""Backend HTTP requests are repeated only when the backend never accepted them."""

from __future__ import annotations

import httpx2
import pytest

from fleet_mcp_proxy.transport import RetryUnacceptedTransport


def _counting(statuses: list[int]) -> tuple[httpx2.MockTransport, list[int]]:
    seen: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(len(seen))
        return httpx2.Response(statuses[min(len(seen) - 1, len(statuses) - 1)], text="body")

    return httpx2.MockTransport(handler), seen


@pytest.mark.anyio
async def test_gateway_errors_are_retried_until_the_backend_answers() -> None:
    inner, seen = _counting([503, 502, 200])
    async with httpx2.AsyncClient(transport=RetryUnacceptedTransport(inner)) as client:
        response = await client.post("http://127.0.0.1:1/mcp", content=b"{}")
    assert response.status_code == 200 and len(seen) == 3


@pytest.mark.anyio
async def test_an_answer_from_the_backend_itself_is_never_repeated() -> None:
    inner, seen = _counting([500])
    async with httpx2.AsyncClient(transport=RetryUnacceptedTransport(inner)) as client:
        response = await client.post("http://127.0.0.1:1/mcp", content=b"{}")
    assert response.status_code == 500 and len(seen) == 1


@pytest.mark.anyio
async def test_the_last_gateway_error_is_handed_on_when_the_budget_runs_out() -> None:
    inner, seen = _counting([503])
    async with httpx2.AsyncClient(transport=RetryUnacceptedTransport(inner, attempts=3)) as client:
        response = await client.post("http://127.0.0.1:1/mcp", content=b"{}")
    assert response.status_code == 503 and response.text == "body" and len(seen) == 3


@pytest.mark.anyio
async def test_a_request_lost_after_sending_is_not_repeated() -> None:
    sent: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(1)
        raise httpx2.ReadError("connection reset after the request was written")

    async with httpx2.AsyncClient(transport=RetryUnacceptedTransport(httpx2.MockTransport(handler))) as client:
        with pytest.raises(httpx2.ReadError):
            await client.post("http://127.0.0.1:1/mcp", content=b"{}")
    assert len(sent) == 1


@pytest.mark.anyio
async def test_a_connection_broken_while_the_request_was_written_is_retried_and_a_504_is_not() -> None:
    tries: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        tries.append(1)
        if len(tries) == 1:
            raise httpx2.WriteError("connection reset before the request was written")
        return httpx2.Response(200, text="ok")

    async with httpx2.AsyncClient(transport=RetryUnacceptedTransport(httpx2.MockTransport(handler))) as client:
        response = await client.post("http://127.0.0.1:1/mcp", content=b"{}")
    assert response.status_code == 200 and len(tries) == 2

    inner, seen = _counting([504, 200])  # the gateway forwarded it and gave up waiting: the backend may have it
    async with httpx2.AsyncClient(transport=RetryUnacceptedTransport(inner)) as client:
        response = await client.post("http://127.0.0.1:1/mcp", content=b"{}")
    assert response.status_code == 504 and len(seen) == 1
