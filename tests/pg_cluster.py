"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, a temporary data directory, trust
authentication, and no TCP port at all: it listens on a unix socket in a private directory, so no port is
ever chosen, probed or shared. Started once per session; stopped by `pg_ctl -m immediate stop`."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

USER = "fmp"
PORT = 5432  # only names the socket file inside the private directory


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class PgCluster:
    bin_dir: Path
    root: Path  # holds data/, sock/ and the server log
    as_postgres: list[str]  # the prefix that runs the server's tools as an unprivileged user when we are root

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, database: str, password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{USER}{secret}@/{database}?host={self.socket_dir}&port={PORT}"

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        command = [str(self.bin_dir / "psql"), "-h", str(self.socket_dir), "-p", str(PORT), "-U", USER]
        subprocess.run(
            [*command, "-d", "postgres", "-qc", f"CREATE DATABASE {name}"], check=True, timeout=60, capture_output=True
        )
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.as_postgres, str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"],
            timeout=60,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> PgCluster:
    """Raises RuntimeError naming what is missing (the Debian package) or the server log's last lines."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql (as .ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="fmp-pg-"))
    (root / "sock").mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(root, "postgres")
        shutil.chown(root / "sock", "postgres")
        root.chmod(0o755)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    cluster = PgCluster(bin_dir, root, as_postgres)
    data, log = root / "data", root / "server.log"
    run = [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "--no-sync"]
    subprocess.run(run, check=True, timeout=120, capture_output=True)
    # No TCP listener; durability settings off: the tests kill clients, never this server.
    options = f"-p {PORT} -k {root / 'sock'} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
    start = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"]
    done = subprocess.run(start, timeout=120, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else done.stderr
        cluster.stop()
        raise RuntimeError(f"PostgreSQL did not start: {tail}")
    return cluster
