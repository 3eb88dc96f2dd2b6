"""The episode: one agent's world. Lazy provisioning, routing, relays, and an orderly end."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.abc
import mcp_types as t
from mcp import MCPError
from mcp.server.connection import Connection
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ToolsListChanged,
)

from . import chatlog, ending, telemetry
from .backends import BackendGone, BackendLink
from .catalog import (
    PromptCatalog,
    ResourceCatalog,
    ToolCatalog,
)
from .catalog_cache import CatalogCache, cache_key
from .catalog_memo import prompt_catalog, resource_catalog, tool_catalog
from .config import GRADING_MARGIN, EnvironmentConfig, FleetSettings, Modality
from .forwarding import Upstream, origin_among
from .outcome import Execute, Outcome
from .providers.base import HttpTarget, Instance, Provider, ProvisionError
from .provision_latency import PROVISIONING
from .recorder import Recorder, now
from .resources import EPISODE_PREFIX
from .roundtrip import PendingCall
from .steps import StepBudget
from .synthetic.context import CallLog, ContextSettings, OutputStore, tool_definitions
from .synthetic.submit import SUBMIT_TOOL
from .tasks import Task
from .union import link_for
from .verify.scoring import unknown

logger = logging.getLogger(__name__)


class EpisodeEnded(Exception):
    """The episode is over; `str()` says why, for the agent."""


@dataclass
class _Flight:
    """One provisioning attempt shared by every caller that arrives while it runs."""

    done: anyio.Event = field(default_factory=anyio.Event)
    error: str | None = None


class Episode:
    """Backends, catalogs and upstream channels of one episode."""

    def __init__(
        self,
        key: str,
        principal: str,
        environments: Sequence[EnvironmentConfig],
        provider: Provider,
        task_group: anyio.abc.TaskGroup,
        *,
        modality: Modality | None,
        end_timeout: float,
        task: Task | None = None,
        submit_tool: bool = False,
        partial_reward: bool = False,
        verify_timeout: float = 300.0,
        recorder: Recorder | None = None,
        context: ContextSettings | None = None,
        progress_interval: float = 3.0,
        keepalive_interval: float = 15.0,
        catalog_cache: CatalogCache | None = None,
        fleet: FleetSettings | None = None,
        provision_on_list: bool = False,
        episode_id: str | None = None,  # given when adopting the episode of a replica that is gone
    ) -> None:
        self.key = key
        self.provision_on_list = provision_on_list
        self.progress_interval = progress_interval  # reports to a request waiting for provisioning
        self._catalog_cache = catalog_cache
        self._cache_keys = (
            {env.name: cache_key(env, modality, fleet) for env in environments} if catalog_cache is not None else {}
        )
        self._served_from_cache = False
        self._cached_view: list[dict[str, Any]] = []
        self.keepalive_interval = keepalive_interval  # progress beats on a silent tool call
        self.task = task
        self.context = context
        self.outputs = OutputStore.for_settings(context) if context is not None else None
        self.call_log = CallLog() if context is not None else None
        # Kept only for a judge whose `verify` takes `conversation` (B22): nobody else reads it.
        self.chat = chatlog.for_task(task)
        self.steps = StepBudget()  # the registry sets the limit and what happens at it
        synthetic = [SUBMIT_TOOL] if submit_tool else []
        synthetic += tool_definitions(context) if context is not None else []
        self._synthetic: tuple[dict[str, Any], ...] = tuple(synthetic)
        self._partial_reward = partial_reward
        self._verify_timeout = verify_timeout
        self.outcome = Outcome(on_change=self.resource_changed)
        self.recorder = recorder or Recorder(None)
        self.subscribed: set[str] = set()
        self.principal = principal
        self.id = episode_id or uuid.uuid4().hex[:16]
        self.environments = {env.name: env for env in environments}
        self._provider = provider
        self._tg = task_group
        self._modality = modality
        self._end_timeout = end_timeout
        self.links: dict[str, BackendLink] = {}
        self.instances: dict[str, Instance] = {}
        self._flight: _Flight | None = None
        self.tools: ToolCatalog = tool_catalog({}, self._synthetic, modality)
        self.prompts: PromptCatalog = prompt_catalog({})
        self.resources: ResourceCatalog = resource_catalog({}, {})
        self.connections: list[Connection] = []
        self.session_ids: set[str] = set()
        self.bus = InMemorySubscriptionBus()
        self.listen = ListenHandler(self.bus)
        self.callers: dict[str, list[Upstream]] = {}
        self.pending: dict[str, PendingCall] = {}
        self.lost: dict[str, str] = {}
        self.inflight = 0
        self.last_active = anyio.current_time()
        self.ended: str | None = None
        self.end_state = "live"  # mirrors the store's row: live, ending, verifying, releasing, closed or pending
        self._end_done = anyio.Event()
        self._end_started = False
        self._unreleased = 0

    # -- activity --------------------------------------------------------------------------------------------
    def touch(self) -> None:
        self.last_active = anyio.current_time()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """A request is being served: the idle reaper leaves the episode alone until it is done."""
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
            self.touch()

    def attach(self, conn: Connection) -> None:
        """Send this connection the episode's standalone notifications."""
        if conn not in self.connections:
            self.connections.append(conn)

    def detach(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)

    # -- provisioning ----------------------------------------------------------------------------------------
    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        return self._tg

    @property
    def provisioned(self) -> bool:
        # A link that died later stays in `links`: its calls report the loss, the other environments
        # keep working, and the episode never silently swaps in a fresh instance with other state.
        return all(alias in self.links for alias in self.environments)

    async def ready(self) -> None:
        """Provision every environment not yet up; concurrent callers share one attempt.

        Raises:
            EpisodeEnded: the episode is over.
            ProvisionError: the attempt failed (the next call tries again).
        """
        if self.ended is not None:
            raise EpisodeEnded(self._ended_message())
        if self.provisioned:
            return
        flight = self._start_flight()
        with self.busy():  # a request waiting on provisioning is not idle
            await flight.done.wait()
        if self.ended is not None:
            raise EpisodeEnded(self._ended_message())
        if flight.error is not None:
            raise ProvisionError(flight.error)

    def _start_flight(self) -> _Flight:
        flight = self._flight
        if flight is None or flight.done.is_set():
            flight = self._flight = _Flight()
            self._tg.start_soon(self._provision, flight)
        return flight

    async def tools_before_ready(self) -> bool:
        """Serve the tool list from the catalog cache and provision in the background; False on a miss."""
        if self._catalog_cache is None or self.ended is not None:
            return False
        lists: dict[str, list[dict[str, Any]]] = {}
        for alias, key in self._cache_keys.items():
            tools = self.links[alias].lists["tools"] if alias in self.links else await self._catalog_cache.get(key)
            if tools is None:
                return False
            lists[alias] = tools
        if not self.provisioned:
            self.tools = tool_catalog(lists, self._synthetic, self._modality)
            self._served_from_cache = True
            if self.provision_on_list:  # opted in: an episode that only lists tools then costs an instance
                self._start_flight()
        return True

    async def _remember_catalog(self) -> None:
        """The live lists replace the cached ones; clients served a stale list are told to re-list."""
        if self._catalog_cache is None:
            return
        for alias, key in self._cache_keys.items():
            link = self.links.get(alias)
            if link is not None:
                label = f"{alias} ({self.environments[alias].kind})"
                await self._catalog_cache.put(key, link.lists["tools"], label)
        if self._served_from_cache and list(self.tools.tools) != self._cached_view:
            await self._broadcast("notifications/tools/list_changed", None, ToolsListChanged())

    async def _provision(self, flight: _Flight) -> None:
        errors: list[str] = []
        try:
            async with anyio.create_task_group() as tg:
                for alias, env in self.environments.items():
                    if alias not in self.links:
                        tg.start_soon(self._provision_one, env, errors)
            if not errors:
                self._cached_view = list(self.tools.tools)
                self._rebuild()
                await self._remember_catalog()
        except Exception:  # top of a background task: report, never crash the proxy
            logger.exception("provisioning episode %s failed", self.id)
            errors.append("the proxy failed while provisioning")
        finally:
            flight.error = "; ".join(errors) if errors else None
            flight.done.set()

    async def _provision_one(self, env: EnvironmentConfig, errors: list[str]) -> None:
        if not telemetry.ON:
            await self._start_one(env, errors)
            return
        mine: list[str] = []
        with telemetry.provision(self.id, env.name, env.kind) as step:
            await self._start_one(env, mine)
            if mine:
                step.fail("provision")
            instance = self.instances.get(env.name)
            provider = instance.provider if instance is not None else env.kind
            telemetry.provisioned(step, env.name, provider, instance.instance_id if instance else None)
        errors.extend(mine)

    async def _start_one(self, env: EnvironmentConfig, errors: list[str]) -> None:
        started = anyio.current_time()
        try:
            instance = await self._provider.provision(env, self.id, partial(self._lost, env.name))
        except ProvisionError as exc:
            errors.append(f"environment '{env.name}' could not be provisioned: {exc}")
            return
        self.instances[env.name] = instance
        link = await self._open_link(env, instance)
        if isinstance(link, str):
            errors.append(f"environment '{env.name}' {link}")
            self.instances.pop(env.name, None)
            await ending.release_instance(
                self, instance, recorded=False
            )  # never recorded as added: no release to record
            return
        self.links[env.name] = link
        PROVISIONING.record(env.name, instance.provider, anyio.current_time() - started)
        spec = env.fleet if env.fleet is not None else env.kind  # never a command line: it may hold secrets
        url = instance.target.url if isinstance(instance.target, HttpTarget) else None
        data_dir = str(instance.data_dir) if instance.data_dir is not None else None
        self.recorder.emit(
            "add_instance",
            self.id,
            env.name,
            instance.instance_id,
            instance.provider,
            spec,
            now(),
            url=url,
            data_dir=data_dir,
            expires_at=instance.expires_at,
            origin=instance.origin,
        )
        if self.end_state in ("releasing", "closed", "pending"):  # too late to use: it must not outlive the episode
            await link.stop(self._end_timeout)
            await ending.release_instance(self, instance)

    async def _open_link(self, env: EnvironmentConfig, instance: Instance) -> BackendLink | str:
        """A running link to the instance's MCP server, or why it cannot be used (the link is stopped then)."""
        link = link_for(instance, self, startup_timeout=env.startup_timeout, call_timeout=env.call_timeout)
        await self._tg.start(link.run)
        failure = link.failure if link.failure is not None else self._missing_computer(link)
        if failure is not None and link.failure is None:
            await link.stop(self._end_timeout)
        return link if failure is None else failure

    async def adopt(self, instances: Sequence[Instance]) -> None:
        """Links to the instances a replica that is gone provisioned for this episode (`adoption.py`).

        One that cannot be reached counts as lost, its link kept: its calls say so and no fresh instance with
        other state is swapped in.
        """
        for instance in instances:
            env = self.environments[instance.alias]
            self.instances[instance.alias] = instance
            link = link_for(instance, self, startup_timeout=env.startup_timeout, call_timeout=env.call_timeout)
            await self._tg.start(link.run)
            self.links[instance.alias] = link
            if link.failure is not None:
                self.lost[instance.alias] = f"unreachable after its proxy replica stopped: {link.failure}"
        self._rebuild()

    def on_lost(self, alias: str) -> Callable[[str], None]:
        return partial(self._lost, alias)

    def _missing_computer(self, link: BackendLink) -> str | None:
        """A computer_use task needs the `computer` tool: an instance without one is a failed provisioning."""
        if self.task is None or self._modality != "computer_use":
            return None
        if any(tool.get("name") == "computer" for tool in link.lists["tools"]):
            return None
        return (
            f"(instance {link.instance.instance_id}) serves no 'computer' tool, which this computer_use task "
            "needs; check the task's environment and version"
        )

    def _lost(self, alias: str, reason: str) -> None:
        """The platform lost the instance: stop routing to it; callers get a clear error, not a hang."""
        self.lost[alias] = reason
        link = self.links.get(alias)
        if link is not None:
            link.failure = f"instance lost: {reason}"
            self._tg.start_soon(link.stop, self._end_timeout)

    def _rebuild(self) -> None:
        lists = {alias: link.lists for alias, link in sorted(self.links.items())}
        self.tools = tool_catalog({a: ls["tools"] for a, ls in lists.items()}, self._synthetic, self._modality)
        self.prompts = prompt_catalog({a: ls["prompts"] for a, ls in lists.items()})
        self.resources = resource_catalog(
            {a: ls["resources"] for a, ls in lists.items()},
            {a: ls["resourceTemplates"] for a, ls in lists.items()},
        )
        for warning in self.tools.warnings:
            logger.warning("episode %s: %s", self.id, warning)

    def time_left(self) -> float | None:
        """Seconds until the first of this episode's instances reaches its TTL; None when none has one."""
        left = [inst.expires_at - time.time() for inst in self.instances.values() if inst.expires_at is not None]
        return round(max(0.0, min(left)), 1) if left else None

    def link(self, alias: str) -> BackendLink:
        link = self.links.get(alias)
        if link is None:
            raise BackendGone(f"The environment '{alias}' is not available.")
        return link

    # -- traffic backends start (LinkEvents) ---------------------------------------------------------------
    async def relay_request(self, alias: str, request: t.ServerRequest, result_type: type[Any]) -> Any:
        caller = origin_among(self.callers.get(alias, ()))
        timeout = self.environments[alias].call_timeout
        if caller is not None:
            return await caller.ask(request, result_type, timeout)
        if self.connections:
            with anyio.fail_after(timeout):
                return await self.connections[-1].send_request(request)
        raise MCPError(t.INVALID_REQUEST, "No client is connected to answer this request.")

    async def relay_notification(self, alias: str, notification: t.ServerNotification) -> None:
        if isinstance(notification, t.LoggingMessageNotification):
            caller = origin_among(self.callers.get(alias, ()))
            if caller is not None:
                await caller.log(notification.params)
            else:
                params = notification.params.model_dump(by_alias=True, exclude_none=True)
                for conn in list(self.connections):
                    await conn.notify("notifications/message", params)
            return
        if isinstance(notification, t.ToolListChangedNotification):
            await self._relist(alias, "tools")
            await self._broadcast("notifications/tools/list_changed", None, ToolsListChanged())
        elif isinstance(notification, t.PromptListChangedNotification):
            await self._relist(alias, "prompts")
            await self._broadcast("notifications/prompts/list_changed", None, PromptsListChanged())
        elif isinstance(notification, t.ResourceListChangedNotification):
            await self._relist(alias, "resources", "resourceTemplates")
            await self._broadcast("notifications/resources/list_changed", None, ResourcesListChanged())
        elif isinstance(notification, t.ResourceUpdatedNotification):
            uri = self.resources.exposed_uri(alias, str(notification.params.uri))
            await self._broadcast("notifications/resources/updated", {"uri": uri}, ResourceUpdated(uri=uri))
        else:
            data = notification.model_dump(by_alias=True, exclude_none=True)
            await self._broadcast(data["method"], data.get("params"), None)

    async def _relist(self, alias: str, *keys: str) -> None:
        link = self.links.get(alias)
        if link is None or not link.alive:
            return
        try:
            await link.refresh(keys)
        except (MCPError, BackendGone):
            logger.warning("episode %s: could not re-list %s of %s", self.id, "/".join(keys), alias)
            return
        self._rebuild()

    async def _broadcast(self, method: str, params: Mapping[str, Any] | None, event: Any) -> None:
        for conn in list(self.connections):
            await conn.notify(method, params)
        if event is not None:
            await self.bus.publish(event)

    # -- outcome ---------------------------------------------------------------------------------------------
    async def resource_changed(self, name: str) -> None:
        uri = EPISODE_PREFIX + name
        submission = self.outcome.submission
        if name == "submission" and submission is not None:
            # Durable before the agent hears it was taken: a crash right after must still grade this answer.
            await self.recorder.commit("set_submission", self.id, submission.answer, submission.at)
        elif name == "reward":
            self.recorder.emit("set_result", self.id, self.outcome.reward_json(), self.outcome.verifier_json())
        if uri in self.subscribed:
            for conn in list(self.connections):
                await conn.send_resource_updated(uri)
        await self.bus.publish(ResourceUpdated(uri=uri))

    def _verifier(self) -> tuple[Execute | None, str]:
        """How to verify this episode now, or why it cannot be."""
        task = self.task
        if task is None or not task.verifier_code:
            return None, "no_verifier"
        alias = next(iter(self.environments))
        if alias in self.lost:
            return None, "instance_lost"
        instance = self.instances.get(alias)
        if instance is None:
            return None, "not_provisioned"
        answer = self.outcome.submission.answer if self.outcome.submission else None
        conversation = self.chat.encoded(answer) if self.chat is not None else None
        return self._provider.verifier(instance, task, answer, self._verify_timeout, conversation=conversation), ""

    async def verify(self, trigger: str) -> None:
        """Verify once (submit, close or explicit) within `verify_timeout` in all; the reward resource is updated."""
        execute, reason = self._verifier()
        with telemetry.verify(self.id, trigger) as step, anyio.move_on_after(self._verify_timeout) as scope:
            reward = await self.outcome.verify(
                execute, trigger=trigger, reason_if_none=reason, partial=self._partial_reward
            )
            step.set(reward_status=reward.status, reward=reward.reward, failure_reason=reward.failure_reason)
            if reward.reward is None:
                step.fail(reward.failure_reason or "unknown")
        if scope.cancelled_caught:
            logger.warning("episode %s: verification did not finish within %g s", self.id, self._verify_timeout)
            await self.outcome.conclude(unknown("verifier_timeout", trigger))

    def must_end_for_expiry(self) -> bool:
        """Grade while the instance lives: its TTL runs from creation and heartbeats do not extend it."""
        left = self.time_left()
        return left is not None and left <= self._verify_timeout + GRADING_MARGIN

    # -- the end ---------------------------------------------------------------------------------------------
    def _ended_message(self) -> str:
        return f"This episode has ended ({self.ended}). Start a new session to get fresh environments."

    async def end(self, reason: str) -> None:
        """The durable end (`ending.end_episode`): each transition written before it is acted on."""
        await ending.end_episode(self, reason)
