"""Slow clients (R8): header deadlines close slowloris connections while normal clients keep working.

Time is the subject here, so the slow connections really trickle bytes on real sockets. Figures are printed,
never asserted: what is asserted is that every slow connection is closed and every normal call succeeds.
"""

from __future__ import annotations

import statistics
from typing import Any

import anyio
import httpx2
import pytest
from edge_helpers import ok_app, serve
from helpers import config_with, http_client, kitchen_cmd, proxy_http

from fleet_mcp_proxy.front import slowclients

KITCHEN = f"kitchen={kitchen_cmd('kitchen')}"
SLOW = 200  # slow connections held open at once


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    return host, int(port)


async def _slow_connection(address: tuple[str, int], lifetimes: list[float], *, trickle: bool) -> None:
    """Send a request line, then one header byte every 0.2 s (or nothing) until the server hangs up."""
    started = anyio.current_time()
    async with await anyio.connect_tcp(*address) as stream:
        if trickle:
            await stream.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")

        async def drip() -> None:
            try:
                while trickle:
                    await stream.send(b"x")
                    await anyio.sleep(0.2)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return

        async with anyio.create_task_group() as tg:
            tg.start_soon(drip)
            try:
                while await stream.receive():  # the 408, then end of stream
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
            tg.cancel_scope.cancel()
    lifetimes.append(anyio.current_time() - started)


@pytest.mark.anyio
async def test_slowloris_connections_are_closed_while_a_normal_client_keeps_working() -> None:
    config = config_with(KITCHEN, header_timeout=1.0)
    async with proxy_http(config) as proxy:
        address = _address(proxy.url)
        lifetimes: list[float] = []
        latencies: list[float] = []
        async with http_client(proxy.url) as c:
            with anyio.fail_after(60):
                await c.call_tool("echo", {"text": "warm up"})
                for _ in range(10):  # the baseline, before any slow client
                    clock = anyio.current_time()
                    assert not (await c.call_tool("echo", {"text": "baseline"})).is_error
                    latencies.append(anyio.current_time() - clock)
                baseline = list(latencies)
                latencies.clear()
                async with anyio.create_task_group() as tg:
                    for i in range(SLOW):
                        tg.start_soon(lambda i=i: _slow_connection(address, lifetimes, trickle=i % 4 != 0))
                    for _ in range(40):  # while they trickle
                        clock = anyio.current_time()
                        result = await c.call_tool("echo", {"text": "normal"})
                        latencies.append(anyio.current_time() - clock)
                        assert not result.is_error, result
                        await anyio.sleep(0.02)
        assert len(lifetimes) == SLOW, "every slow connection was closed by the server"
        p99 = statistics.quantiles(latencies, n=100)[-1]
        print(
            f"\nR8: {SLOW} slow connections closed after {min(lifetimes):.2f}..{max(lifetimes):.2f} s "
            f"(deadline 1 s); normal calls p50 {statistics.median(baseline) * 1000:.1f} ms before, "
            f"{statistics.median(latencies) * 1000:.1f} ms during (p99 {p99 * 1000:.1f} ms)"
        )


@pytest.mark.anyio
async def test_beyond_limit_concurrency_new_connections_get_503_not_a_hang() -> None:
    config = config_with(KITCHEN, header_timeout=1.0, limit_concurrency=10)
    async with proxy_http(config) as proxy:
        address = _address(proxy.url)
        base = proxy.url.removesuffix("/mcp")
        lifetimes: list[float] = []
        async with anyio.create_task_group() as tg, httpx2.AsyncClient(timeout=10) as http:
            with anyio.fail_after(30):
                for _ in range(10):
                    tg.start_soon(lambda: _slow_connection(address, lifetimes, trickle=False))
                statuses: list[int] = []
                while not statuses or statuses[-1] != 503:  # 200 until all ten idle connections are accepted
                    statuses.append((await http.get(base + "/healthz", headers={"Connection": "close"})).status_code)
        assert set(statuses) <= {200, 503}, "a full server answers 503 at once: no hang, no reset"
        assert len(lifetimes) == 10
        async with httpx2.AsyncClient(timeout=10) as http:
            with anyio.fail_after(10):
                again = await http.get(base + "/healthz")
        assert again.status_code == 200, "the idle connections' slots came back when the deadline closed them"


def _protocols() -> list[Any]:
    protocols: list[Any] = [slowclients.HeaderDeadlineProtocol]
    httptools_protocol = getattr(slowclients, "HttpToolsHeaderDeadlineProtocol", None)
    if httptools_protocol is not None:
        protocols.append(
            pytest.param(
                httptools_protocol,
                marks=pytest.mark.skipif(
                    not _has_httptools(), reason="httptools is not installed: uvicorn cannot use its parser"
                ),
            )
        )
    return protocols


def _has_httptools() -> bool:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.anyio
@pytest.mark.parametrize("base", _protocols())
async def test_each_protocol_times_out_headers_but_not_requests_or_kept_alive_connections(base: type) -> None:
    protocol = type("Protocol", (base,), {"header_timeout": 0.5})
    async with serve(ok_app(), http=protocol, lifespan="off") as url:
        address = _address(url)
        lifetimes: list[float] = []
        with anyio.fail_after(20):
            async with httpx2.AsyncClient(timeout=10) as http:
                first = await http.get(url + "/")
                await anyio.sleep(0.7)  # idle on a kept-alive connection longer than the header deadline
                second = await http.get(url + "/")  # a new request: it gets its own deadline
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _slow_connection(address, lifetimes, trickle=True))
                tg.start_soon(lambda: _slow_connection(address, lifetimes, trickle=False))
        assert first.status_code == second.status_code == 200
        assert len(lifetimes) == 2
        print(f"\n{base.__name__}: slow connections closed after {', '.join(f'{t:.2f} s' for t in lifetimes)}")
