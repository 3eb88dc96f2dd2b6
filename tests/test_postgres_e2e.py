"""`serve --store postgresql://...` end to end: a real proxy process records one demo task episode in a real
PostgreSQL database, and `fleet-mcp-proxy episodes` reads it back from there."""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
import pytest
from canaries import FLEET_KEY
from helpers import ROOT, child_env, http_client, read_line_matching, stop_process
from pg_cluster import PgCluster
from test_tasks import SOLUTIONS

from fleet_mcp_proxy.store import open_any_store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]
TASK = "tracker-create-api-issue"  # graded when its episode ends


def _episodes(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fleet_mcp_proxy", "episodes", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


async def test_serve_records_a_task_episode_in_postgresql(pg_cluster: PgCluster) -> None:
    database = pg_cluster.new_database()
    url = pg_cluster.url(database.split("/")[3].split("?")[0], password=FLEET_KEY)  # trust auth ignores it
    command = [sys.executable, "-m", "fleet_mcp_proxy", "serve", "--port", "0", "--store", url]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env())
    try:
        assert proc.stderr is not None
        proxy = (await read_line_matching(proc.stderr, r"listening on (\S+)", timeout=60)).group(1)
        with anyio.fail_after(120):
            async with http_client(f"{proxy}?task={TASK}") as client:
                await SOLUTIONS[TASK][0](client)
            async with await open_any_store(url, create=False) as store:
                while not (listed := await store.list()) or listed[0].state != "closed":
                    await anyio.sleep(0.1)  # the proxy grades and closes the episode after the client left
    finally:
        stop_process(proc)
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert FLEET_KEY not in log

    listing = _episodes("list", "--db", url)
    assert listing.returncode == 0, listing.stderr
    (row,) = listing.stdout.splitlines()[1:]
    episode_id, _, _, task, calls, status, reward, *_ = row.split()  # ENDED (the reason) may hold spaces
    assert (task, calls, status, reward) == (TASK, "1", "final", "1")
    shown = _episodes("show", episode_id, "--db", url)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert (record["task_key"], record["state"], record["reward"]["reward"]) == (TASK, "closed", 1.0)
    assert [call["tool"] for call in record["calls"]] == ["create_issue"]
    assert record["instances"] and all(i["released_at"] for i in record["instances"])
    missing = _episodes("show", "0" * 16, "--db", url)
    assert missing.returncode == 1 and FLEET_KEY not in missing.stderr
