"""Backend tool lists remembered across episodes and restarts, so `tools/list` needs no instance.

One JSON file per environment spec (Fleet env key and version, command or URL, and modality) under
`$XDG_STATE_HOME/fleet-mcp-proxy/catalog/`. File names are hashes: specs may carry tokens in a URL or a
command line, and none of that is written down. The live list after provisioning always wins: it replaces
the entry, and episodes that were served the stale one are told `tools/list_changed`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import anyio

from .config import EnvironmentConfig, FleetSettings

logger = logging.getLogger(__name__)
_FORMAT = 1


def default_cache_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "fleet-mcp-proxy" / "catalog"


def cache_key(env: EnvironmentConfig, modality: str | None, fleet: FleetSettings | None = None) -> str:
    """Everything that decides which tools an environment offers; never its secrets (env vars, headers)."""
    spec: dict[str, Any] = {"modality": modality or env.modality}
    if env.fleet is not None:
        spec.update(fleet=env.fleet, data=env.data, region=env.region, base_url=fleet.base_url if fleet else None)
    elif env.command is not None:
        spec.update(command=list(env.command), cwd=env.cwd)
    else:
        spec.update(url=env.url)
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def _valid(tools: Any) -> bool:
    return isinstance(tools, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools)


class CatalogCache:
    """Process-wide: one read per spec from disk, then memory; writes are atomic renames."""

    def __init__(self, directory: Path | None) -> None:
        self._dir = directory
        self._memory: dict[str, list[dict[str, Any]]] = {}
        self._missing: set[str] = set()

    async def get(self, key: str) -> list[dict[str, Any]] | None:
        if key in self._memory:
            return self._memory[key]
        if self._dir is None or key in self._missing:
            return None
        path = anyio.Path(self._dir / f"{key}.json")
        try:
            data = json.loads(await path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._missing.add(key)
            return None
        except (OSError, ValueError):
            logger.warning("ignoring the unreadable catalog cache entry %s", path)
            self._missing.add(key)
            return None
        tools = data.get("tools") if isinstance(data, dict) and data.get("format") == _FORMAT else None
        if tools is None or not _valid(tools):
            self._missing.add(key)
            return None
        valid: list[dict[str, Any]] = tools
        self._memory[key] = valid
        return valid

    async def put(self, key: str, tools: list[dict[str, Any]], label: str) -> bool:
        """Remember `tools` for `key`; True when that changed what was cached."""
        if self._memory.get(key) == tools:
            return False
        self._memory[key] = tools
        self._missing.discard(key)
        if self._dir is None:
            return True
        directory = anyio.Path(self._dir)
        final = directory / f"{key}.json"
        temporary = directory / f"{key}.{os.getpid()}.tmp"
        body = json.dumps({"format": _FORMAT, "environment": label, "tools": tools}, ensure_ascii=False)
        try:
            await directory.mkdir(parents=True, exist_ok=True)
            await temporary.write_text(body, encoding="utf-8")
            await temporary.replace(final)
        except OSError:
            logger.warning("could not write the catalog cache entry %s", final)
        return True
