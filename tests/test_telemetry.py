"""logfire telemetry through a real proxy and real MCP clients, captured with logfire's test exporter.

Spans and metric points are asserted by name and attribute; every exported byte is scanned for planted
secrets (the Fleet key, a tool argument, transport session ids); and an exporter that fails on every
export must not disturb a single request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import logfire
import pytest
from canaries import CANARIES, FLEET_KEY
from fleet_emulator import running_emulator
from helpers import config_with, http_client, kitchen_cmd, proxy_http, wait_until
from logfire._internal.scrubbing import DEFAULT_PATTERNS
from logfire.testing import TestExporter
from mcp import MCPError
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult

from fleet_mcp_proxy import telemetry
from fleet_mcp_proxy.config import EnvironmentConfig, ProxyConfig, TelemetryConfig, load_config
from fleet_mcp_proxy.demo import DEMO_TASKS
from fleet_mcp_proxy.providers.base import HttpTarget, Instance
from fleet_mcp_proxy.providers.leases import Beat, LeaseKeeper, LeaseLost
from fleet_mcp_proxy.tasks import load_tasks

pytestmark = pytest.mark.anyio
ARGUMENT_CANARY = "argument-canary-41c9e07b"
SCRUBBED = re.compile("|".join(DEFAULT_PATTERNS), re.IGNORECASE)


@dataclass
class Captured:
    exporter: TestExporter
    reader: InMemoryMetricReader

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        # logfire also exports a "pending" copy of each span when it starts: only finished spans count here.
        finished = [
            s for s in self.exporter.exported_spans if (s.attributes or {}).get("logfire.span_type") != "pending_span"
        ]
        return [s for s in finished if name is None or s.name == name]

    def attrs(self, name: str) -> list[dict[str, Any]]:
        return [dict(s.attributes or {}) for s in self.spans(name)]

    def metrics(self) -> dict[str, list[dict[str, Any]]]:
        data = self.reader.get_metrics_data()
        assert data is not None
        found: dict[str, list[dict[str, Any]]] = {}
        for resource in json.loads(data.to_json())["resource_metrics"]:
            for scope in resource["scope_metrics"]:
                for metric in scope["metrics"]:
                    found.setdefault(metric["name"], []).extend(metric["data"]["data_points"])
        return found

    def everything(self) -> str:
        """Every exported span (names, attributes, events, status) and metric point, as one text."""
        spans = json.dumps(self.exporter.exported_spans_as_dict(), default=str)
        data = self.reader.get_metrics_data()
        return spans + (data.to_json() if data is not None else "")


def _start(processors: Sequence[Any], readers: Sequence[Any]) -> None:
    assert telemetry.setup(
        TelemetryConfig(enabled=True), environ={}, span_processors=processors, metric_readers=readers
    )
    assert telemetry.ON


def _stop() -> None:
    telemetry.shutdown()
    # Later tests export nowhere, and extract no trace context (logfire would warn, and warnings fail tests).
    logfire.configure(send_to_logfire=False, console=False, metrics=False, distributed_tracing=False)


@pytest.fixture
def capture() -> Iterator[Captured]:
    exporter, reader = TestExporter(), InMemoryMetricReader()
    _start([SimpleSpanProcessor(exporter)], [reader])
    try:
        yield Captured(exporter, reader)
    finally:
        _stop()
    assert not telemetry.ON


def point_attrs(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(p["attributes"]) for p in points]


def test_off_unless_configured() -> None:
    assert not telemetry.requested(TelemetryConfig(), {})
    assert telemetry.requested(TelemetryConfig(), {"LOGFIRE_TOKEN": "x"})
    assert not telemetry.requested(TelemetryConfig(enabled=False), {"LOGFIRE_TOKEN": "x"})
    assert telemetry.requested(TelemetryConfig(enabled=True), {})
    assert not telemetry.setup(TelemetryConfig(), environ={})
    assert not telemetry.ON


def test_telemetry_section_and_flag_reach_the_config(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[telemetry]\nenabled = true\nservice_name = "fmp-test"\nenvironment = "ci"\n')
    config = load_config(path, environ={})
    assert config.telemetry == TelemetryConfig(enabled=True, service_name="fmp-test", environment="ci")
    path.write_text("[telemetry]\nsend = 1\n")
    with pytest.raises(Exception, match="telemetry.send"):
        load_config(path, environ={})


async def test_a_fleet_episode_is_traced_and_measured_without_secrets(capture: Captured) -> None:
    async with running_emulator(FLEET_KEY) as emu:
        settings = {"run_id": "telemetry-test", "api_key": FLEET_KEY, "base_url": emu.base_url}
        config = load_config(overrides={"fleet": settings}, env_args=("tracker=fleet:tracker",), environ={})
        async with proxy_http(config) as proxy:
            async with http_client(proxy.url) as c:
                with anyio.fail_after(60):
                    await c.list_tools()
                    ok = await c.call_tool("list_projects", {})
                    bad = await c.call_tool("get_issue", {"key": ARGUMENT_CANARY})
                sessions = {s for e in proxy.state.registry.episodes.values() for s in e.session_ids}
            await wait_until(lambda: capture.spans("release") and capture.spans("episode"), 30, "the episode's end")
    assert not ok.is_error and bad.is_error
    (episode,) = capture.attrs("episode")
    (provision,) = capture.attrs("provision")
    assert provision["fmp.environment"] == "tracker" and provision["fmp.kind"] == "fleet"
    assert provision["fmp.outcome"] == "ok" and provision["fmp.episode"] == episode["fmp.episode"]
    assert provision["fmp.provider"] == "fleet" and provision["fmp.instance"]
    assert [a["fmp.outcome"] for a in capture.attrs("fleet create") + capture.attrs("fleet ready")] == ["ok", "ok"]
    calls = {a["fmp.tool"]: a for a in capture.attrs("tool call")}
    assert calls["list_projects"]["fmp.outcome"] == "ok" and calls["get_issue"]["fmp.outcome"] == "is_error"
    assert calls["list_projects"]["fmp.environment"] == "tracker" and calls["list_projects"]["fmp.duration_ms"] > 0
    (release,) = capture.attrs("release")
    assert release["fmp.instance"] == provision["fmp.instance"] and release["fmp.outcome"] == "ok"
    assert episode["fmp.end_reason"] == "closed"
    # The provision span is a child of the episode's span, in the episode's own trace.
    (ep_span,), (prov_span,) = capture.spans("episode"), capture.spans("provision")
    assert prov_span.parent is not None and prov_span.parent.span_id == ep_span.context.span_id

    metrics = capture.metrics()
    assert point_attrs(metrics["fmp.provision.duration"]) == [
        {"fmp.environment": "tracker", "fmp.provider": "fleet", "fmp.outcome": "ok"}
    ]
    outcomes = {a["fmp.outcome"] for a in point_attrs(metrics["fmp.tool_call.duration"])}
    assert outcomes == {"ok", "is_error"}
    assert {a["fmp.error_kind"] for a in point_attrs(metrics["fmp.errors"])} == {"tool_is_error"}
    assert [p["value"] for p in metrics["fmp.episodes.live"]] == [0]  # one opened, one ended
    assert [p["value"] for p in metrics["fmp.instances.live"]] == [0]

    exported = capture.everything()
    for secret in (*CANARIES, ARGUMENT_CANARY, *sessions):
        assert secret not in exported
    for span in capture.spans():
        for name, value in (span.attributes or {}).items():
            if name.startswith("fmp."):
                assert not SCRUBBED.search(name), name  # the scrubber would hide it
                assert "Scrubbed" not in str(value), (name, value)


async def test_tool_call_outcomes_from_kitchen(capture: Captured) -> None:
    config = ProxyConfig(environments=(EnvironmentConfig(name="k", command=kitchen_cmd("k"), call_timeout=0.5),))
    async with proxy_http(config) as proxy, http_client(proxy.url) as c:
        with anyio.fail_after(60):
            await c.list_tools()
            assert not (await c.call_tool("echo", {"text": ARGUMENT_CANARY})).is_error
            assert (await c.call_tool("fail", {})).is_error
            with pytest.raises(MCPError):
                await c.call_tool("protocol_error", {})
            assert (await c.call_tool("nap", {"seconds": 5})).is_error  # over the 0.5 s call timeout
            assert (await c.call_tool("crash", {})).is_error
    outcomes = {a["fmp.tool"]: a["fmp.outcome"] for a in capture.attrs("tool call")}
    assert outcomes == {
        "echo": "ok",
        "fail": "is_error",
        "protocol_error": "protocol_error",
        "nap": "timeout",
        "crash": "transport_error",
    }
    kinds = {a["fmp.error_kind"] for a in point_attrs(capture.metrics()["fmp.errors"])}
    assert {"tool_is_error", "tool_protocol_error", "tool_timeout", "tool_transport_error"} <= kinds
    assert ARGUMENT_CANARY not in capture.everything()


class Failing(SpanExporter):
    """An exporter whose backend is down: every export raises."""

    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        raise ConnectionError("the telemetry backend is down")


async def test_a_failing_exporter_never_affects_a_request() -> None:
    inline, batched = Failing(), Failing()
    _start([SimpleSpanProcessor(inline), BatchSpanProcessor(batched, schedule_delay_millis=50)], [])
    try:
        async with proxy_http(config_with(f"k={kitchen_cmd('k')}")) as proxy, http_client(proxy.url) as c:
            with anyio.fail_after(60):
                for i in range(20):
                    result = await c.call_tool("echo", {"text": str(i)})
                    assert not result.is_error and result.content[0].text == str(i)  # type: ignore[union-attr]
        logfire.force_flush()
        assert inline.calls > 20 and batched.calls >= 1
    finally:
        _stop()


async def test_a_task_episode_traces_its_verification(capture: Captured) -> None:
    key = next(iter(load_tasks(DEMO_TASKS)))
    async with proxy_http(load_config(environ={})) as proxy:
        async with http_client(f"{proxy.url}?task={key}") as c:
            with anyio.fail_after(60):
                await c.list_tools()
        await wait_until(lambda: capture.spans("episode"), 60, "verify-on-close and the end")
    (verify,) = capture.attrs("verify")
    (episode,) = capture.attrs("episode")
    assert verify["fmp.trigger"] == "close" and verify["fmp.episode"] == episode["fmp.episode"]
    assert verify["fmp.reward_status"] == episode["fmp.reward_status"]
    assert episode["fmp.task"] == key


async def test_heartbeat_and_release_spans_from_the_lease_keeper(capture: Captured) -> None:
    instance = Instance(
        "tracker", "inst-1", "fleet", HttpTarget("http://127.0.0.1:9/mcp", {"Authorization": FLEET_KEY})
    )
    beats: list[int] = []
    lost = anyio.Event()
    deletes: list[int] = []

    async def heartbeat(_: Instance) -> Beat:
        beats.append(1)
        if len(beats) >= 2:
            raise LeaseLost("Fleet answered 404 to a heartbeat")
        return Beat(ttl=2.0)

    async def delete(_: Instance) -> None:
        deletes.append(1)
        if len(deletes) == 1:
            raise ConnectionError("flaky")

    async with anyio.create_task_group() as tg:
        keeper = LeaseKeeper(tg, release_timeout=10)
        keeper.hold(instance, heartbeat=heartbeat, ttl=2.0, on_lost=lambda _: lost.set())
        with anyio.fail_after(10):
            await lost.wait()
        keeper.release(instance, delete)
        assert await keeper.drain(15)
    first, second = capture.attrs("heartbeat")
    assert (first["fmp.outcome"], second["fmp.outcome"], second["fmp.failure"]) == ("ok", "failed", "LeaseLost")
    (release,) = capture.attrs("release")
    assert release["fmp.outcome"] == "ok" and release["fmp.attempts"] == 2
    assert {a["fmp.error_kind"] for a in point_attrs(capture.metrics()["fmp.errors"])} == {"heartbeat", "instance_lost"}
    assert FLEET_KEY not in capture.everything()
