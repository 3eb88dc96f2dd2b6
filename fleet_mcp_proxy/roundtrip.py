"""Backend requests to 2026-07-28 clients, which have no back-channel: input-required round trips.

The backend call keeps running in the proxy's task group while the client answers. When the backend asks
(sampling, elicitation, roots), the waiting `tools/call` handler returns `InputRequiredResult`; the client's
retry carries the answer and the `request_state` token that finds this call again.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import mcp_types as t
from mcp import MCPError

if TYPE_CHECKING:
    from .forwarding import Caller

_INPUT_KEY = "backend"


@dataclass
class _Ask:
    request: t.CreateMessageRequest | t.ListRootsRequest | t.ElicitRequest
    result_type: type[Any]
    answered: anyio.Event
    answer: Any = None


@dataclass
class _Done:
    result: dict[str, Any] | None = None
    error: BaseException | None = None


class PendingCall:
    """One backend call that may outlive the request that started it."""

    def __init__(self, token_owner: str, timeout: float, caller: Caller) -> None:
        self.caller = caller
        self.token = f"{token_owner}.{secrets.token_urlsafe(16)}"
        self._timeout = timeout
        self._send, self._receive = anyio.create_memory_object_stream[_Ask | _Done](8)
        self._asking: _Ask | None = None
        self.scope = anyio.CancelScope()

    async def run(self, call: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """Run the backend call to the end and post its outcome (in the proxy's task group)."""
        outcome = _Done()
        with self.scope:
            try:
                outcome.result = await call()
            except Exception as exc:  # handed to the waiting handler, which maps it for the agent
                outcome.error = exc
        if self.scope.cancelled_caught:
            outcome.error = MCPError(t.REQUEST_TIMEOUT, "cancelled")
        with anyio.move_on_after(1):
            await self._send.send(outcome)

    async def ask(self, request: t.ServerRequest, result_type: type[Any]) -> Any:
        """Called from the backend's callback: park the request until the client's retry answers it."""
        if isinstance(request, t.PingRequest):
            return t.EmptyResult()  # answered here: a ping cannot ride an input-required round trip
        ask = _Ask(request, result_type, anyio.Event())
        await self._send.send(ask)
        with anyio.move_on_after(self._timeout) as scope:
            await ask.answered.wait()
        if scope.cancelled_caught:
            self.scope.cancel()
            raise MCPError(t.REQUEST_TIMEOUT, "The client did not answer in time.")
        return ask.answer

    def answer(self, responses: Any) -> None:
        """Deliver the client's answer (raw `inputResponses`) to the parked request."""
        ask = self._asking
        if ask is None:
            raise MCPError(t.INVALID_PARAMS, "This call is not waiting for input.")
        raw = responses.get(_INPUT_KEY) if isinstance(responses, dict) else None
        if raw is None:
            raise MCPError(t.INVALID_PARAMS, f"inputResponses must answer '{_INPUT_KEY}'.")
        ask.answer = ask.result_type.model_validate(raw, by_name=False)
        self._asking = None
        ask.answered.set()

    async def next(self) -> dict[str, Any]:
        """Wait for the call to finish (its raw result) or to need input (an `InputRequiredResult`).

        Raises:
            Exception: whatever the backend call raised.
        """
        item = await self._receive.receive()
        if isinstance(item, _Ask):
            self._asking = item
            result = t.InputRequiredResult(input_requests={_INPUT_KEY: item.request}, request_state=self.token)
            return result.model_dump(by_alias=True, mode="json", exclude_none=True)
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result
