"""The operator endpoints: `/readyz`, `/status` and the dashboard, the last in real headless Chromium.

Episodes are opened through real MCP clients against the demo tracker (and the Fleet emulator for lease
clocks); the page is Debian's `chromium` driven by selenium through Debian's `chromedriver`.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fleet_emulator import running_emulator
from helpers import config_with, http_client, proxy_http
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_tasks import jpy_reporter

from fleet_mcp_proxy.config import load_config

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
WAIT = 20.0  # seconds for the page to show a change (it polls /status every second)
JPY_TASK = "tracker-jpy-reporter"

pytestmark = pytest.mark.anyio


def base_of(url: str) -> str:
    return url.removesuffix("/mcp")


async def get_json(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url, **kwargs)
    return response.status_code, response.json()


async def test_readyz_and_status_describe_live_episodes(tmp_path: Path) -> None:
    config = config_with(store_path=str(tmp_path / "episodes.sqlite3"))
    async with proxy_http(config) as proxy:
        base = base_of(proxy.url)
        code, ready = await get_json(f"{base}/readyz")
        assert code == 200 and ready["checks"] == {"proxy": "ok", "store": "ok", "fleet": "not used"}, ready
        code, empty = await get_json(f"{base}/status")
        assert (
            code == 200
            and empty["episodes"] == []
            and empty["totals"] == {"episodes": 0, "instances": 0, "pending_ends": 0}
        )
        with anyio.fail_after(60):
            async with http_client(proxy.url) as client:
                made = await client.call_tool("create_issue", {"project": "WEB", "title": "shown", "reporter": "bob"})
                assert not made.is_error
                await client.call_tool("get_issue", {"issue_id": 999_999})  # an error result
                code, status = await get_json(f"{base}/status")
                (episode,) = status["episodes"]
                assert (episode["principal"], episode["kind"], episode["state"]) == ("anonymous", "session", "ready")
                (env,) = episode["environments"]
                assert env["alias"] == "tracker" and env["status"] == "ready" and env["provider"] == "local"
                assert env["instance_id"].startswith("local-tracker-") and env["time_left_s"] is None
                assert status["totals"] == {"episodes": 1, "instances": 1, "pending_ends": 0}
                tools = [(c["tool"], c["is_error"]) for c in status["recent_calls"]]
                assert tools[:2] == [("get_issue", True), ("create_issue", False)], tools
                assert status["provisioning"]["count"] >= 1 and status["provisioning"]["p50_s"] > 0
                assert sys.executable not in str(status) and "fleet_mcp_proxy.demo" not in str(status)
        # The session closed: the episode is gone from the live view and listed with how it ended.
        with anyio.fail_after(15):
            while True:
                _, after = await get_json(f"{base}/status")
                if not after["episodes"] and after["rewards"]:
                    break
                await anyio.sleep(0.05)
        assert after["rewards"][0]["episode_id"] == episode["id"]
        assert after["rewards"][0]["ended"] == "session closed" and after["rewards"][0]["calls"] == 2


async def test_with_auth_each_principal_sees_only_its_own_episodes() -> None:
    tokens = {"alice": "alice-token-0123456789", "bob": "bob-token-9876543210ab"}
    config = config_with(auth={"tokens": tokens}, record_episodes=False)
    async with proxy_http(config) as proxy:
        base = base_of(proxy.url)

        def bearer(who: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tokens[who]}"}

        with anyio.fail_after(60):
            async with (
                http_client(proxy.url, headers=bearer("alice")) as a,
                http_client(proxy.url, headers=bearer("bob")) as b,
            ):
                await a.call_tool("list_projects", {})
                await b.call_tool("list_projects", {})
                for who in ("alice", "bob"):
                    code, status = await get_json(f"{base}/status", headers=bearer(who))
                    assert code == 200 and status["principal"] == who
                    assert [e["principal"] for e in status["episodes"]] == [who], status["episodes"]
                async with httpx.AsyncClient(timeout=10) as http:
                    assert (await http.get(f"{base}/status")).status_code == 401
                    assert (await http.get(f"{base}/readyz")).status_code == 200  # probes carry no token
                    # The page is a shell a browser can load without a header; its data needs the token.
                    page = await http.get(f"{base}/dashboard")
                    assert page.status_code == 200
                    assert "alice" not in page.text and tokens["alice"] not in page.text
                    assert tokens["alice"] not in (await http.get(f"{base}/status", headers=bearer("bob"))).text


async def test_status_refuses_foreign_host_headers_but_probes_answer() -> None:
    async with proxy_http(config_with(record_episodes=False)) as proxy:
        base = base_of(proxy.url)
        async with httpx.AsyncClient(timeout=10) as http:
            for path in ("/status", "/dashboard"):
                refused = await http.get(f"{base}{path}", headers={"Host": "evil.example"})
                assert refused.status_code in (403, 421), (path, refused.status_code)
            ready = await http.get(f"{base}/readyz", headers={"Host": "10.1.2.3:8000"})
            assert ready.status_code == 200 and ready.json()["checks"]["store"] == "disabled"


async def test_readyz_fails_when_the_configured_store_cannot_be_opened(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    async with proxy_http(config_with(store_path=str(blocker / "episodes.sqlite3"))) as proxy:
        code, body = await get_json(f"{base_of(proxy.url)}/readyz")
        assert code == 503 and body["status"] == "not ready" and body["checks"]["store"] == "unavailable"
        code, health = await get_json(f"{base_of(proxy.url)}/healthz")
        assert code == 200, "liveness is not readiness: the process itself is fine"


async def test_status_shows_the_time_left_of_fleet_leases() -> None:
    key = "dash-fleet-key"
    async with running_emulator(key) as emu:
        fleet = {"run_id": f"dash-{uuid.uuid4().hex[:8]}", "api_key": key, "base_url": emu.base_url}
        config = load_config(
            overrides={"fleet": {**fleet, "heartbeat_interval": 30, "ttl_seconds": 600}, "record_episodes": False},
            env_args=("tracker=fleet:tracker",),
            environ={},
        )
        async with proxy_http(config) as proxy, http_client(proxy.url) as client:
            with anyio.fail_after(60):
                await client.list_tools()
                code, status = await get_json(f"{base_of(proxy.url)}/status")
            (env,) = status["episodes"][0]["environments"]
            assert env["provider"] == "fleet" and env["status"] == "ready"
            # Heartbeats every 30 s: the lease lapses two intervals after the last beat, well before the TTL.
            assert 0 < env["time_left_s"] <= 60, env
            assert key not in str(status)


# -- the dashboard in Chromium ------------------------------------------------------------------------------------
def _require_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: never skip silently there
        pytest.skip(message)


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver and browser: Selenium Manager has nothing to download.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


async def wait_for(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    """Poll the live page (in a worker thread) until `condition` holds; bounded."""
    wait = WebDriverWait(driver, WAIT, poll_frequency=0.1)
    try:
        return await anyio.to_thread.run_sync(wait.until, condition)
    except TimeoutException:
        pytest.fail(f"the dashboard did not show {what} within {WAIT:g} s")


def css(selector: str) -> Callable[[Any], Any]:
    return lambda driver: driver.find_elements(By.CSS_SELECTOR, selector)


def gone(selector: str) -> Callable[[Any], bool]:
    find = css(selector)
    return lambda driver: not find(driver)


async def test_dashboard_in_chromium_shows_live_episodes_and_follows_changes(tmp_path: Path) -> None:
    _require_chromium()
    config = config_with(store_path=str(tmp_path / "episodes.sqlite3"))
    async with proxy_http(config) as proxy:
        base = base_of(proxy.url)
        with chromium(tmp_path / "profile") as driver:
            with anyio.fail_after(90):
                async with http_client(f"{proxy.url}?task={JPY_TASK}") as graded:
                    async with http_client(proxy.url) as plain:
                        await plain.call_tool("list_projects", {})
                        _, status = await get_json(f"{base}/status")
                        (plain_id,) = [e["id"] for e in status["episodes"] if e["task"] is None]
                        await anyio.to_thread.run_sync(driver.get, f"{base}/dashboard")
                        row = f'#episodes tr[data-episode="{plain_id}"]'
                        (shown,) = await wait_for(driver, css(row), "the live episode")
                        assert "tracker" in shown.text and "ready" in shown.text and "anonymous" in shown.text
                        await wait_for(driver, css('#calls tr[data-tool="list_projects"]'), "the first call")
                        await wait_for(driver, css("#latency-chart rect.sample"), "a provisioning latency")
                        (me,) = await wait_for(driver, css('#replicas tr[data-this="true"]'), "this replica")
                        assert "this" in me.text and str(os.getpid()) in me.text, me.text

                        # A change: a new call appears, and a graded episode gets its reward.
                        await plain.call_tool("search_issues", {"query": "JPY"})
                        await wait_for(driver, css('#calls tr[data-tool="search_issues"]'), "a new tool call")
                        reporter = await jpy_reporter(graded)  # solve the task for real
                        answer = await graded.call_tool("submit_final_answer", {"answer": reporter})
                        assert not answer.is_error
                        _, status = await get_json(f"{base}/status")
                        (graded_id,) = [e["id"] for e in status["episodes"] if e["task"] == JPY_TASK]
                        final = f'#rewards tr[data-episode="{graded_id}"] .pill.final'
                        await wait_for(driver, css(final), "the graded episode's reward")
                        (reward_row,) = await wait_for(driver, css(f'#rewards tr[data-episode="{graded_id}"]'), "")
                        assert reward_row.text.split()[-2:] == ["1", "live"], reward_row.text
                        shot = tmp_path / "dashboard.png"
                        assert await anyio.to_thread.run_sync(driver.save_screenshot, str(shot))
                    # The plain session closed: its row leaves the live table.
                    await wait_for(driver, gone(row), "the end of the episode")
                    assert css(f'#episodes tr[data-episode="{graded_id}"]')(driver), "the other episode stays"
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    if keep := os.environ.get("FMP_DASHBOARD_SCREENSHOT"):  # refresh docs/dashboard.png on purpose only
        shutil.copyfile(shot, keep)
