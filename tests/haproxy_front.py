"""HAProxy (Debian's 2.6 package) running the shipped deploy/haproxy.cfg in front of replicas, on loopback.

Started in the foreground (`-db`) with the file's environment variables, stopped by its PID; its admin socket
answers `show table replicas` (which replica a session is stuck to) and `disable server replicas/rN`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from helpers import ROOT, stop_process

CONFIG = ROOT / "deploy" / "haproxy.cfg"
BACKEND = "replicas"  # the backend's name in deploy/haproxy.cfg


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


def config_env(bind: str, replicas: Sequence[str], stats_socket: str | None = None) -> dict[str, str]:
    """The variables deploy/haproxy.cfg reads: FMP_BIND, FMP_REPLICA_1..3, FMP_STATS_SOCKET."""
    if not 1 <= len(replicas) <= 3:
        raise ValueError("deploy/haproxy.cfg names one to three replicas")
    env = {"FMP_BIND": bind, **{f"FMP_REPLICA_{i}": r for i, r in enumerate(replicas, 1)}}
    if stats_socket is not None:
        env["FMP_STATS_SOCKET"] = stats_socket
    return env


def free_port() -> int:
    """A loopback port free a moment ago (HAProxy cannot report a port 0 bind back to us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ask(path: str, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):  # the socket closes after one answer (no "prompt" mode)
            chunks.append(chunk)
    return b"".join(chunks).decode()


@dataclass
class HAProxy:
    proc: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT/mcp
    stats_socket: str
    log: Path

    async def ask(self, command: str) -> str:
        with anyio.fail_after(10):
            return await anyio.to_thread.run_sync(_ask, self.stats_socket, command)

    async def stuck_server_ids(self) -> dict[str, int]:
        """Session id -> server id (1..3 = r1..r3), from the stick table."""
        table: dict[str, int] = {}
        for line in (await self.ask(f"show table {BACKEND}")).splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if "key" in fields and "server_id" in fields:
                table[fields["key"]] = int(fields["server_id"])
        return table

    async def server_states(self) -> dict[str, str]:
        """Server name -> status (UP, DOWN, MAINT, ...), from `show stat`."""
        rows = (await self.ask("show stat")).splitlines()
        header = rows[0].lstrip("# ").split(",")
        states: dict[str, str] = {}
        for row in rows[1:]:
            cells = dict(zip(header, row.split(","), strict=False))
            if cells.get("pxname") == BACKEND and cells.get("svname") not in ("BACKEND", None):
                states[cells["svname"]] = cells["status"]
        return states

    async def wait_states(self, expected: dict[str, str], timeout: float = 30) -> None:
        with anyio.fail_after(timeout):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"haproxy exited: {self.log.read_text(errors='replace')[-2000:]}")
                try:
                    if await self.server_states() == expected:
                        return
                except ConnectionRefusedError:  # its socket file exists a moment before it listens
                    pass
                await anyio.sleep(0.1)


@contextlib.asynccontextmanager
async def haproxy(replicas: Sequence[str]) -> AsyncIterator[HAProxy]:
    """deploy/haproxy.cfg in the foreground on a free loopback port; yields once every replica is UP."""
    binary = haproxy_binary()
    assert binary is not None, "haproxy is not installed (apt-get install haproxy, as .ci/run does)"
    root = Path(tempfile.mkdtemp(prefix="fmp-hap-"))  # short: a unix socket path holds at most 107 bytes
    port = free_port()
    env = config_env(f"127.0.0.1:{port}", replicas, str(root / "admin.sock"))
    log = root / "haproxy.log"
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(
                [binary, "-db", "-f", str(CONFIG)], stdout=out, stderr=subprocess.STDOUT, env=env, text=True
            )
        running = HAProxy(proc, f"http://127.0.0.1:{port}/mcp", env["FMP_STATS_SOCKET"], log)
        try:
            with anyio.fail_after(30):
                while not await anyio.Path(running.stats_socket).exists():
                    if proc.poll() is not None:
                        raise RuntimeError(f"haproxy exited: {log.read_text(errors='replace')[-2000:]}")
                    await anyio.sleep(0.05)
            await running.wait_states({f"r{i}": "UP" for i in range(1, len(replicas) + 1)})
            yield running
        finally:
            stop_process(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
