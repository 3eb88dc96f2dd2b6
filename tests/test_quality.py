"""The code stays lint-clean, formatted and strictly typed, and the SDK internals we lean on are still there."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest
from helpers import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint_is_clean() -> None:
    result = _run("ruff", "check", "fleet_mcp_proxy", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _run("ruff", "format", "--check", "fleet_mcp_proxy", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_package_passes_strict_mypy() -> None:
    result = _run("mypy", "fleet_mcp_proxy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_pinned_sdk_still_has_the_private_members_the_proxy_uses() -> None:
    """mcp is pinned exactly; if an upgrade moves these, this fails before anything subtler does."""
    from mcp.client.session import ClientSession
    from mcp.server.session import ServerSession

    assert version("mcp") == "2.3.0"
    assert callable(getattr(ClientSession, "_stamp", None)) or "_stamp" in ClientSession.__init__.__code__.co_names
    assert "_dispatcher" in ClientSession.__init__.__code__.co_names
    assert "_connection" in ServerSession.__init__.__code__.co_names
    assert (
        "_server_instances"
        in __import__(
            "mcp.server.streamable_http_manager", fromlist=["x"]
        ).StreamableHTTPSessionManager.__init__.__code__.co_names
    )


def test_pinned_sdk_transport_still_has_what_the_fast_lane_holds_sessions_with() -> None:
    """front/lane.py keeps a session's idle countdown suspended as the SDK's own requests do."""
    from mcp.server.streamable_http import StreamableHTTPServerTransport

    names = StreamableHTTPServerTransport.__init__.__code__.co_names
    for member in ("_requests_in_flight", "_idle_timeout", "idle_scope", "_terminated"):
        assert member in names, member
    assert isinstance(StreamableHTTPServerTransport.is_terminated, property)


def test_pinned_sdk_stdio_client_still_has_what_the_stdio_lane_spawns_and_stops_with() -> None:
    """fastlane/stdio.py owns a stdio environment's pipes but starts and stops it with the SDK's own helpers."""
    from mcp.client import stdio

    for helper in ("_get_executable_command", "_create_platform_compatible_process", "_stop_server_process"):
        assert callable(getattr(stdio, helper, None)), helper
    assert callable(getattr(stdio, "_drain_stdout", None))
    assert callable(stdio.get_default_environment)
