"""An incremental decoder for the `text/event-stream` bodies MCP servers answer a POST with (pure)."""

from __future__ import annotations


class SseDecoder:
    """Feed bytes as they arrive; get back the `data` of each complete event (the MCP message JSON)."""

    __slots__ = ("_buffer", "_data", "_limit", "_scanned", "last_id", "retry_ms")

    def __init__(self, limit: int | None = None) -> None:
        self._buffer = bytearray()
        self._data: list[bytes] = []
        self._limit = limit
        self._scanned = 0  # bytes of the buffer known to hold no newline: a 10 MiB line is scanned once
        self.last_id: bytes | None = None  # the last event id seen: where a resumed stream picks up
        self.retry_ms: int | None = None  # the server's reconnection delay, if it gave one

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete events' data, in order. Comments and empty events are dropped; the last id and retry hint
        are kept in `last_id` and `retry_ms`.

        Raises:
            ValueError: one event grew past the limit.
        """
        self._buffer += chunk
        events: list[bytes] = []
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buffer)
                if self._limit is not None and len(self._buffer) > self._limit:
                    raise ValueError("an event exceeded the size limit")
                return events
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            self._scanned = 0
            if not line:
                data = b"\n".join(self._data)
                self._data = []
                if data:  # an empty data buffer (a resumability priming event) is not dispatched
                    events.append(data)
                continue
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                self._data.append(value)
                if self._limit is not None and sum(map(len, self._data)) > self._limit:
                    raise ValueError("an event exceeded the size limit")
            elif field == b"id" and b"\0" not in value:
                self.last_id = value
            elif field == b"retry" and value.isdigit():
                self.retry_ms = int(value)


def encode_event(data: bytes) -> bytes:
    """One `message` event carrying a single-line JSON payload."""
    return b"event: message\r\ndata: " + data + b"\r\n\r\n"
