"""The official MCP server conformance suite, run THROUGH the proxy, with the conforming fixture behind it.

Once with the fixture as a stdio backend the proxy spawns, once with the fixture over streamable HTTP. The
outcome must equal the direct run's (tests/test_conformance_direct.py): same expected failures and warnings.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance.harness import (
    FIXTURE_SERVER,
    announced_process,
    ensure_suite,
    fixture_server,
    list_server_scenarios,
    run_server_suite,
)
from test_conformance_direct import check_outcome


@contextlib.contextmanager
def proxy_in_front_of(env_spec: str, log_path: Path) -> Iterator[str]:
    """The proxy on a port it binds itself: its "listening on URL" line says which."""
    args = [sys.executable, "-m", "fleet_mcp_proxy", "serve", "--port", "0", "--env", env_spec]
    with announced_process(args, r"listening on (\S+)", announce_on="stderr", log_path=log_path, timeout=30) as (
        _,
        url,
    ):
        yield url  # printed after listen(): connections queue until it accepts


def _assert_same_outcome_as_direct(url: str, tmp_path: Path) -> None:
    prefix = ensure_suite()
    scenarios = list_server_scenarios(prefix)
    result = run_server_suite(url, timeout=240, output_dir=tmp_path / "results", prefix=prefix)
    print(f"\nconformance suite through the proxy at {url}:\n{result.report()}")
    check_outcome(result, scenarios)


@pytest.mark.timeout(400)
def test_conformance_suite_passes_through_proxy_with_stdio_backend(tmp_path: Path) -> None:
    spec = f"conf={sys.executable} {FIXTURE_SERVER}"
    with proxy_in_front_of(spec, tmp_path / "proxy.log") as url:
        _assert_same_outcome_as_direct(url, tmp_path)


@pytest.mark.timeout(400)
def test_conformance_suite_passes_through_proxy_with_http_backend(tmp_path: Path) -> None:
    with (
        fixture_server(log_path=tmp_path / "fixture.log") as backend,
        proxy_in_front_of(f"conf={backend}", tmp_path / "proxy.log") as url,
    ):
        _assert_same_outcome_as_direct(url, tmp_path)
