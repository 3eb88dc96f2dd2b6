"""Local environments: a command spawned per episode over stdio, or an MCP server already listening on a URL."""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import anyio

from ..config import EnvironmentConfig
from .base import HttpTarget, Instance, StdioTarget
from .origin import local_origin

INSTANCE_DIR = "{instance_dir}"


class LocalProvider:
    """Gives each episode its own instance directory; the backend link spawns the process itself.

    `{instance_dir}` in a command's arguments, environment or cwd is replaced by a fresh directory that
    lives exactly as long as the instance, so a server like the demo tracker keeps its seed and current
    database files apart from every other episode's.
    """

    name = "local"

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self.origin = local_origin()

    async def provision(self, env: EnvironmentConfig, episode_id: str) -> Instance:
        instance_id = f"local-{env.name}-{uuid.uuid4().hex[:12]}"
        if env.url is not None:
            remote = HttpTarget(env.url, dict(env.headers))
            return Instance(env.name, instance_id, self.name, remote, origin=self.origin)
        assert env.command is not None
        data_dir: Path | None = None
        parts = [*env.command, *env.env.values(), env.cwd or ""]
        if any(INSTANCE_DIR in part for part in parts):
            data_dir = Path(
                await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix=f"fmp-{env.name}-", dir=self._root))
            )

        def fill(text: str) -> str:
            return text.replace(INSTANCE_DIR, str(data_dir)) if data_dir is not None else text

        command, *args = (fill(part) for part in env.command)
        if command in ("python", "python3"):  # the proxy's own interpreter, venv or not
            command = sys.executable
        target = StdioTarget(
            command=command,
            args=tuple(args),
            env={k: fill(v) for k, v in env.env.items()},
            cwd=fill(env.cwd) if env.cwd else None,
        )
        return Instance(env.name, instance_id, self.name, target, data_dir, origin=self.origin)

    async def delete(self, instance: Instance) -> None:
        """Remove the instance directory; the process itself is stopped by its backend link."""
        if instance.data_dir is not None:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(instance.data_dir, ignore_errors=True))  # type: ignore[arg-type]
