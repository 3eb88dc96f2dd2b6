"""The built-in demo environment: a SQLite-backed issue tracker served as an MCP server.

The proxy runs one instance per episode with `demo_command(data_dir)` over stdio. Each instance's
directory holds `seed.sqlite` (the deterministic initial state) and `current.sqlite` (the live state
the tools read and write), the two databases a verifier compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .db import CURRENT_FILE, SEED_FILE

DEMO_ENV_NAME = "tracker"
DEMO_TASKS = Path(__file__).with_name("tasks.json")
"""Demo tasks for the tracker in the Fleet export format, each with a verifier (see `fleet_mcp_proxy.tasks`)."""

__all__ = ["CURRENT_FILE", "DEMO_ENV_NAME", "DEMO_TASKS", "SEED_FILE", "demo_command"]


def demo_command(data_dir: str) -> list[str]:
    """The argv that serves one tracker instance over stdio with its state in `data_dir`."""
    return [sys.executable, "-m", "fleet_mcp_proxy.demo", "--data-dir", data_dir]
