"""The fast lane's SSE decoder: events come out whole however the bytes are split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_mcp_proxy.fastlane.sse import SseDecoder, encode_event

STREAM = (
    b"id: 0\r\ndata: \r\n\r\n"  # a resumability priming event: no data, not dispatched
    b": a comment\n\n"
    b'event: message\r\ndata: {"a":1}\r\n\r\n'
    b"retry: 100\n"
    b'data: {"b":\n'
    b"data: 2}\n\n"
    b'data:{"c":3}\n\n'
)
EVENTS = [b'{"a":1}', b'{"b":\n2}', b'{"c":3}']


def test_events_priming_and_comments() -> None:
    assert SseDecoder().feed(STREAM) == EVENTS


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    decoder, events, last = SseDecoder(), [], 0
    for cut in [*sorted(cuts), len(STREAM)]:
        events += decoder.feed(STREAM[last:cut])
        last = cut
    assert events == EVENTS


def test_a_ten_mebibyte_event_in_small_chunks_and_the_limit() -> None:
    payload = b'{"text":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    stream = encode_event(payload)
    decoder = SseDecoder()
    events = []
    for start in range(0, len(stream), 65536):
        events += decoder.feed(stream[start : start + 65536])
    assert events == [payload]
    with pytest.raises(ValueError):
        SseDecoder(limit=1024).feed(stream[:4096])
