"""logfire telemetry: spans and metrics for episodes, provisioning, leases, tool calls and verification.

Off unless configured (`[telemetry] enabled`, `--telemetry`, or LOGFIRE_TOKEN in the environment). Hot
paths test `telemetry.ON` first, so when it is off they pay one boolean check and build nothing; the other
helpers check it themselves and hand back a shared no-op step.

Export runs in logfire's background processors, and every helper here swallows its own failures: telemetry
never raises into a request. What goes into attributes is chosen, never dumped: ids, aliases, tool names,
outcomes and timings. Never the Fleet API key, a bearer token, a transport session id, an episode key, or
tool arguments and results. Attribute names avoid logfire's scrubbing patterns (key, token, secret, auth,
session, ...), so none is hidden.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

import anyio
import logfire
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import Span, Status, StatusCode

from .config import TelemetryConfig
from .toolerrors import is_tool_error

logger = logging.getLogger(__name__)

ON = False  # read on hot paths: `if telemetry.ON: ...`

# Values of these attributes are names the operator or a backend chose, never secrets; a tool called
# `create_session` should still show as such instead of being redacted by a pattern.
_PLAIN_VALUES = frozenset({"fmp.tool", "fmp.environment", "fmp.task"})


class _Instruments:
    def __init__(self) -> None:
        self.tracer = trace.get_tracer("fleet_mcp_proxy")
        self.provision_seconds = logfire.metric_histogram(
            "fmp.provision.duration", unit="s", description="Time to provision one environment instance"
        )
        self.call_ms = logfire.metric_histogram(
            "fmp.tool_call.duration", unit="ms", description="Tool call latency through the proxy"
        )
        self.errors = logfire.metric_counter("fmp.errors", unit="1", description="Failures by kind")
        self.episodes = logfire.metric_up_down_counter("fmp.episodes.live", unit="1", description="Live episodes")
        self.instances = logfire.metric_up_down_counter(
            "fmp.instances.live", unit="1", description="Environment instances held"
        )
        self.episode_spans: dict[str, Span] = {}


_inst: _Instruments | None = None


def requested(config: TelemetryConfig, environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return config.enabled if config.enabled is not None else bool(environ.get("LOGFIRE_TOKEN"))


def _keep_plain(match: logfire.ScrubMatch) -> Any:
    path = match.path
    if len(path) == 2 and path[0] == "attributes" and path[1] in _PLAIN_VALUES:
        return match.value
    return None


def setup(
    config: TelemetryConfig,
    *,
    environ: Mapping[str, str] | None = None,
    span_processors: Sequence[SpanProcessor] = (),
    metric_readers: Sequence[MetricReader] = (),
) -> bool:
    """Configure logfire and turn telemetry on if configured; True if it is on.

    Sends to Logfire only when a token is present (LOGFIRE_TOKEN); the OTEL_EXPORTER_OTLP_* variables, which
    logfire honours, send elsewhere. `span_processors` and `metric_readers` are extra sinks (tests).
    """
    global ON, _inst
    if not requested(config, environ):
        return False
    try:
        logfire.configure(
            send_to_logfire="if-token-present",
            service_name=config.service_name,
            environment=config.environment,
            console=logfire.ConsoleOptions(output=sys.stderr) if config.console else False,
            additional_span_processors=list(span_processors),
            metrics=logfire.MetricsOptions(additional_readers=list(metric_readers)),
            scrubbing=logfire.ScrubbingOptions(callback=_keep_plain),
            inspect_arguments=False,
            distributed_tracing=False,  # a client's trace context does not decide where the proxy's spans go
        )
        _inst = _Instruments()
    except Exception as exc:  # telemetry is worth a warning, never a refusal to serve
        logger.warning("telemetry is off: logfire could not be configured (%s)", type(exc).__name__)
        return False
    ON = True
    return True


def shutdown(timeout: float = 5.0) -> None:
    """Flush what is buffered (bounded) and turn telemetry off."""
    global ON, _inst
    if not ON:
        return
    ON = False
    inst, _inst = _inst, None
    try:
        if inst is not None:
            for span in inst.episode_spans.values():
                span.end()
        logfire.force_flush(timeout_millis=int(timeout * 1000))
    except Exception:
        logger.debug("telemetry flush failed", exc_info=True)


# -- steps: spans around work that is not on the hot path -----------------------------------------------------
class Step:
    """One span (or nothing, when telemetry is off); `set` adds attributes, `fail` marks a failure kind."""

    def __init__(
        self, name: str, attributes: dict[str, Any], parent: Span | None, root: bool, live: bool = True
    ) -> None:
        self._live = live
        self._name = name
        self._attributes = attributes
        self._parent = parent
        self._root = root
        self._span: Span | None = None
        self._token: Token[otel_context.Context] | None = None
        self.failed: str | None = None
        self._started = 0.0

    def __enter__(self) -> Step:
        inst = _inst
        if inst is None or not self._live:
            return self
        try:
            if self._parent is not None:
                ctx = trace.set_span_in_context(self._parent)
            elif self._root:
                ctx = otel_context.Context()
            else:
                ctx = None
            self._span = inst.tracer.start_span(
                self._name, context=ctx, attributes=self._attributes, record_exception=False
            )
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
            self._started = anyio.current_time()
        except Exception:
            logger.debug("telemetry span %s not started", self._name, exc_info=True)
        return self

    def set(self, **attributes: Any) -> None:
        if self._span is not None:
            self._attributes.update(attributes)
            try:
                self._span.set_attributes({_name(k): v for k, v in attributes.items() if v is not None})
            except Exception:
                logger.debug("telemetry attributes not set", exc_info=True)

    def fail(self, kind: str) -> None:
        self.failed = kind

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        span = self._span
        if span is None:
            return
        try:
            if exc_type is not None and self.failed is None:
                # The type only: exception text may carry what must not leave the process.
                cancelled = issubclass(exc_type, anyio.get_cancelled_exc_class())
                self.failed = "cancelled" if cancelled else exc_type.__name__
            outcome = "ok" if self.failed is None else "failed"
            span.set_attribute("fmp.outcome", outcome)
            if self.failed is not None:
                span.set_attribute("fmp.failure", self.failed)
                span.set_status(Status(StatusCode.ERROR))
                error(f"{self._name.replace(' ', '_')}")
            if self._token is not None:
                otel_context.detach(self._token)
            span.end()
        except Exception:
            logger.debug("telemetry span %s not ended", self._name, exc_info=True)

    def seconds(self) -> float:
        return anyio.current_time() - self._started


def _name(key: str) -> str:
    return key if key.startswith("fmp.") else f"fmp.{key}"


def _step(name: str, attributes: dict[str, Any], *, parent: Span | None = None, root: bool = False) -> Step:
    return Step(name, {_name(k): v for k, v in attributes.items() if v is not None}, parent, root)


_OFF = Step("off", {}, None, False, live=False)  # entered while off: nothing happens


def _episode_span(episode_id: str) -> Span | None:
    inst = _inst
    return inst.episode_spans.get(episode_id) if inst is not None else None


def provision(episode_id: str, alias: str, kind: str) -> Step:
    """Around provisioning one environment of an episode (a child of the episode's span)."""
    if not ON:
        return _OFF
    return _step(
        "provision", {"episode": episode_id, "environment": alias, "kind": kind}, parent=_episode_span(episode_id)
    )


def provisioned(step: Step, alias: str, provider: str, instance_id: str | None) -> None:
    """Record the provisioning latency of `step` (successful or not)."""
    inst = _inst
    if inst is None or step is _OFF:
        return
    outcome = "ok" if step.failed is None else "failed"
    step.set(instance=instance_id, provider=provider)
    try:
        attrs = {"fmp.environment": alias, "fmp.provider": provider, "fmp.outcome": outcome}
        inst.provision_seconds.record(step.seconds(), attrs)
    except Exception:
        logger.debug("provision metric not recorded", exc_info=True)


def fleet_step(name: str, env_key: str) -> Step:
    """A Fleet API phase of provisioning ("fleet create", "fleet ready"), under the provision span."""
    return _step(name, {"environment": env_key}) if ON else _OFF


def heartbeat(alias: str, instance_id: str) -> Step:
    """One lease heartbeat (its own trace: beats outlive the request that provisioned the instance)."""
    return _step("heartbeat", {"environment": alias, "instance": instance_id}, root=True) if ON else _OFF


def release(alias: str, instance_id: str, provider: str) -> Step:
    """Releasing one instance, retries included (its own trace: the lease keeper owns it)."""
    if not ON:
        return _OFF
    return _step("release", {"environment": alias, "instance": instance_id, "provider": provider}, root=True)


def verify(episode_id: str, trigger: str) -> Step:
    """One verification of an episode (a child of the episode's span)."""
    if not ON:
        return _OFF
    return _step("verify", {"episode": episode_id, "trigger": trigger}, parent=_episode_span(episode_id))


# -- events -----------------------------------------------------------------------------------------------------
def error(kind: str) -> None:
    inst = _inst
    if inst is not None:
        try:
            inst.errors.add(1, {"fmp.error_kind": kind})
        except Exception:
            logger.debug("error metric not recorded", exc_info=True)


def instances_changed(delta: int, provider: str) -> None:
    inst = _inst
    if inst is not None:
        try:
            inst.instances.add(delta, {"fmp.provider": provider})
        except Exception:
            logger.debug("instance metric not recorded", exc_info=True)


def episode_opened(episode_id: str, task: str | None, environments: Sequence[str]) -> None:
    """The episode's span starts (a trace of its own) and the live-episode count goes up."""
    inst = _inst
    if inst is None:
        return
    try:
        attrs: dict[str, Any] = {"fmp.episode": episode_id, "fmp.environments": list(environments)}
        if task is not None:
            attrs["fmp.task"] = task
        span = inst.tracer.start_span("episode", context=otel_context.Context(), attributes=attrs)
        inst.episode_spans[episode_id] = span
        inst.episodes.add(1)
    except Exception:
        logger.debug("episode span not started", exc_info=True)


def episode_ended(episode_id: str, reason: str, reward: float | None, reward_status: str | None) -> None:
    inst = _inst
    if inst is None:
        return
    span = inst.episode_spans.pop(episode_id, None)
    if span is None:
        return  # opened before telemetry was on
    try:
        span.set_attribute("fmp.end_reason", end_kind(reason))
        if reward_status is not None:
            span.set_attribute("fmp.reward_status", reward_status)
        if reward is not None:
            span.set_attribute("fmp.reward", reward)
        span.end()
        inst.episodes.add(-1)
    except Exception:
        logger.debug("episode span not ended", exc_info=True)


def end_kind(reason: str) -> str:
    """A short, fixed label for why an episode ended (the free text may name a transport session)."""
    for word, kind in (("idle", "idle"), ("client", "client"), ("session", "closed"), ("shutdown", "shutdown")):
        if word in reason:
            return kind
    return "eof" if "EOF" in reason or "eof" in reason else "other"


# How the proxy itself failed the current tool call, noted where the failure is mapped (per handler task).
_call_failure: ContextVar[str | None] = ContextVar("fmp_call_failure", default=None)


def note_call_failure(kind: str) -> None:
    """The current tool call failed in the proxy's hands ("timeout", "transport_error"): its span says so."""
    _call_failure.set(kind)


def tool_call(episode_id: str, alias: str | None, tool: str, result: Any, started: float) -> None:
    """One tool call, recorded after the fact: `result` is None when it raised a protocol error, `started`
    is `anyio.current_time()` at its start."""
    inst = _inst
    if inst is None:
        return
    try:
        noted = _call_failure.get()
        if noted is not None:
            _call_failure.set(None)
        if noted is not None and noted != "protocol_error":
            outcome = noted
        elif result is None:
            outcome = "protocol_error"
        else:
            failed = is_tool_error(result)  # as Fleet's harness counts failures, not only `isError`
            outcome = "is_error" if failed or getattr(result, "is_error", False) is True else "ok"
        elapsed = anyio.current_time() - started
        end_ns = time.time_ns()
        environment = alias or "proxy"
        attrs: dict[str, Any] = {
            "fmp.episode": episode_id,
            "fmp.environment": environment,
            "fmp.tool": tool,
            "fmp.outcome": outcome,
            "fmp.duration_ms": round(elapsed * 1000, 3),
            "logfire.msg": f"{tool} on {environment}: {outcome}",
        }
        span = inst.tracer.start_span("tool call", attributes=attrs, start_time=end_ns - int(elapsed * 1e9))
        if outcome != "ok":
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end_ns)
        inst.call_ms.record(elapsed * 1000, {"fmp.environment": environment, "fmp.outcome": outcome})
        if outcome != "ok":
            inst.errors.add(1, {"fmp.error_kind": f"tool_{outcome}"})
    except Exception:
        logger.debug("tool call span not recorded", exc_info=True)
