"""The official MCP server conformance suite, run THROUGH the proxy, with the conforming fixture behind it.

Once with the fixture as a stdio backend the proxy spawns, once with the fixture over streamable HTTP. The
outcome must equal the direct run's (tests/test_conformance_direct.py): same expected failures and warnings.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance.harness import (
    FIXTURE_SERVER,
    ensure_suite,
    fixture_server,
    free_port,
    list_server_scenarios,
    run_server_suite,
    stop_process,
    wait_until_answering,
)
from test_conformance_direct import check_outcome


@contextlib.contextmanager
def proxy_in_front_of(env_spec: str, log_path: Path) -> Iterator[str]:
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleet_mcp_proxy", "serve", "--port", str(port), "--env", env_spec],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_answering(f"http://127.0.0.1:{port}/healthz", timeout=30, process=process)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            stop_process(process)


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
