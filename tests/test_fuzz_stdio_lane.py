"""Differential fuzzing of the stdio lane: the same JSON-RPC lines written to two `serve --stdio` proxies (stdio lane
on and off, each in front of its own stdio kitchen) must get the same answers.

Hypothesis writes the traffic: valid and invalid ids, tool names, arguments and `_meta`, broken envelopes, lines that
are not JSON, and cancels of calls in flight. After each line a `ping` marks where its answers end (a tool call may
answer after the ping: its answer is then awaited by id). The example budget is fixed and derandomized for CI.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import stdio_proxy_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_stdio_lane import carried, proxy_toml

DEADLINE = 30.0  # seconds for one answer; they take milliseconds
LATE = 1.0  # seconds to wait for the answer to a request the ping overtook (a kitchen tool takes milliseconds)


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    buffer: bytes = b""
    sequence: int = field(default=0)

    def send(self, line: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + b"\n")
        self.process.stdin.flush()

    def read(self, until: float) -> dict[str, Any] | None:
        """The next message, or None when none came before `until`."""
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self.buffer:
            left = until - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                return None
            chunk = os.read(stdout.fileno(), 1 << 16)
            if not chunk:
                raise RuntimeError("the proxy closed its output")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    def exchange(self, line: bytes, wanted: Any, late: float = LATE) -> list[dict[str, Any]]:
        """Every message the proxy writes for `line` (the answer to request id `wanted`, if any, included)."""
        self.sequence += 1
        marker = f"ping-{self.sequence}"
        self.send(line)
        self.send(json.dumps({"jsonrpc": "2.0", "id": marker, "method": "ping"}).encode())
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + DEADLINE
        while (message := self.read(deadline)) is not None and message.get("id") != marker:
            got.append(message)
        assert message is not None, "the proxy did not answer a ping"
        answered = any(m.get("id") == wanted and "method" not in m for m in got)
        until = time.monotonic() + late
        while wanted is not None and not answered and (message := self.read(until)) is not None:
            got.append(message)
            answered = message.get("id") == wanted and "method" not in message
        return got


def _start(config: Path) -> Proxy:
    params = stdio_proxy_params([], "--config", str(config))
    env = {**os.environ, **(params.env or {})}
    command = [params.command, *params.args]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=params.cwd)
    proxy = Proxy(process)
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "0"}}
    proxy.send(json.dumps({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": init}).encode())
    assert proxy.read(time.monotonic() + DEADLINE) is not None
    proxy.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    echo = {"name": "echo", "arguments": {"text": "up"}}
    call = {"jsonrpc": "2.0", "id": "up", "method": "tools/call", "params": echo}
    answer = proxy.exchange(json.dumps(call).encode(), "up", DEADLINE)  # provisions: the lane can take over
    assert any(m.get("id") == "up" and "result" in m for m in answer), answer
    return proxy


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, Proxy]]:
    tmp = tmp_path_factory.mktemp("stdio-fuzz")
    started = {lane: _start(proxy_toml(tmp, f"fuzz-{lane}", lane=lane)) for lane in (True, False)}
    try:
        yield started
    finally:
        for proxy in started.values():
            assert proxy.process.stdin is not None
            proxy.process.stdin.close()
            try:
                proxy.process.wait(15)
            except subprocess.TimeoutExpired:
                proxy.process.kill()
                proxy.process.wait(5)
    lane, _ = carried(tmp, "fuzz-True")
    print(f"\nDIFFERENTIAL: the stdio lane carried {lane} of the fuzzed tool calls")
    assert lane > 1, "the lane carried none of the fuzzed calls: the comparison proved nothing"


json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
ids = st.integers(-(2**63), 2**63) | st.text(max_size=8) | json_values
tool_names = st.sampled_from(["echo", "add", "fail", "protocol_error", "media", "count", "nope", ""])
arguments = st.fixed_dictionaries(
    {}, optional={"text": json_values, "a": json_values, "b": json_values, "n": st.integers(0, 2)}
)
call_params = st.fixed_dictionaries(
    {"name": tool_names | json_values},
    optional={
        "arguments": arguments | json_values,
        "_meta": st.none() | st.fixed_dictionaries({"progressToken": st.integers(0, 9)}) | json_values,
    },
)
calls = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | json_values, "method": st.just("tools/call") | json_values},
    optional={"id": ids, "params": call_params | json_values},
)
cancels = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "method": st.just("notifications/cancelled")},
    optional={"params": st.fixed_dictionaries({"requestId": ids}) | json_values},
)
plain_calls = st.fixed_dictionaries(
    {
        "jsonrpc": st.just("2.0"),
        "method": st.just("tools/call"),
        "id": st.integers(0, 2**53) | st.text(min_size=1, max_size=8),
        "params": st.fixed_dictionaries({"name": tool_names, "arguments": arguments}),
    }
)
lines = (plain_calls | calls | cancels).map(lambda m: json.dumps(m).encode()) | st.binary(max_size=30)


def _wanted(line: bytes) -> Any:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message.get("id") if isinstance(message, dict) and isinstance(message.get("id"), str | int) else None


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(line=lines)
def test_the_stdio_lane_answers_every_line_as_the_sdk_path(proxies: dict[bool, Proxy], line: bytes) -> None:
    wanted = _wanted(line)
    answers = {lane: proxy.exchange(line, wanted) for lane, proxy in proxies.items()}
    assert answers[True] == answers[False]
