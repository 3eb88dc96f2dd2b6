"""Episodes by key, the idle reaper, and the orderly end of all of them at shutdown."""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
from mcp import MCPError
from mcp_types import INVALID_PARAMS

from . import telemetry
from .catalog import alias_from
from .catalog_cache import CatalogCache, default_cache_dir
from .config import EnvironmentConfig, ProxyConfig
from .episode import Episode
from .providers.base import Provider
from .recorder import Recorder, now
from .steps import StepBudget
from .synthetic.context import ContextSettings
from .tasks import Task, data_spec, fleet_spec, wants_submit_tool

logger = logging.getLogger(__name__)
_ENDED_SESSIONS_KEPT = 10_000


def task_environments(
    task: Task, configured: Sequence[EnvironmentConfig], config: ProxyConfig
) -> tuple[EnvironmentConfig, ...]:
    """What a task's episode provisions: the configured environment named like its env key, else Fleet.

    Raises:
        MCPError: neither is available.
    """
    alias = alias_from(task.env_key)
    for env in configured:
        if env.name in (task.env_key, alias):
            # The task's modality picks a Fleet instance's image and endpoints, whatever the operator's default.
            return (env.model_copy(update={"modality": task.modality}) if env.fleet else env,)
    if config.fleet.api_key:
        return (EnvironmentConfig(name=alias, fleet=fleet_spec(task), data=data_spec(task), modality=task.modality),)
    raise MCPError(
        INVALID_PARAMS,
        f"Task '{task.task_key}' needs environment '{task.env_key}', which is not configured here and "
        "Fleet is not available (FLEET_API_KEY is not set).",
    )


class Registry:
    """Owns every live episode; episodes end here, never in a request handler's scope."""

    def __init__(
        self,
        config: ProxyConfig,
        environments: Sequence[EnvironmentConfig],
        provider: Provider,
        task_group: anyio.abc.TaskGroup,
        tasks: Mapping[str, Task] | None = None,
        recorder: Recorder | None = None,
        owner: str | None = None,
    ) -> None:
        self.recorder = recorder or Recorder(None)
        self.owner = owner  # this process's owner id in the store: its rows are not another finisher's
        self.config = config
        # Replicas sharing a store find an episode's owner by its routes; the embedded default writes none.
        self.shares_routes = config.store.url is not None and self.recorder.store is not None
        self.environments = tuple(environments)
        self.provider = provider
        self._tg = task_group
        self.episodes: dict[str, Episode] = {}
        # Transport sessions whose episode ended while the client stayed connected: they answer 404.
        self.ended_sessions: OrderedDict[str, None] = OrderedDict()
        self.on_end: list[Callable[[Episode], Awaitable[None]]] = []
        self.closing = False
        self.draining = False  # SIGTERM on a replica: readiness fails, live episodes are handed over at the end
        self.adoptions = 0  # episodes taken over from replicas that are gone
        # Keys a drain gave up, each with the event of its row's release: answered "handed over" from then on.
        self.handed_over: dict[str, anyio.Event] = {}
        self.requests: Counter[str] = Counter()  # requests being served, by key (replicas sharing a store only)
        self._ending = 0  # episode ends in progress, awaited at shutdown before the store closes
        self._end_scopes: set[anyio.CancelScope] = set()
        self.pending: list[Episode] = []  # ends the shutdown grace cut short: graded by whoever finishes them
        self._ends_done = anyio.Event()
        self.tasks: dict[str, Task] = dict(tasks or {})
        cache_dir = Path(config.catalog_cache_dir) if config.catalog_cache_dir else default_cache_dir()
        self.catalog_cache = CatalogCache(cache_dir) if config.catalog_cache else None
        ctx = config.context
        self._context = ContextSettings(
            budget_chars=ctx.budget_chars,
            max_outputs=ctx.max_outputs,
            max_bytes=ctx.max_bytes,
            page_size=ctx.page_size,
            max_page_size=max(ctx.page_size, 50_000),
            tools=frozenset(ctx.tools),
        )

    def open(self, key: str, principal: str, task_key: str | None = None) -> Episode:
        """The live episode for `key`, created (nothing provisioned) on first use, bound to `task_key`.

        Raises:
            MCPError: an unknown task, or a task other than the one the episode is bound to.
        """
        episode = self.episodes.get(key)
        if episode is not None:
            if task_key is not None and (episode.task is None or episode.task.task_key != task_key):
                bound = f"task '{episode.task.task_key}'" if episode.task else "no task"
                raise MCPError(INVALID_PARAMS, f"This episode is bound to {bound}; start a new one for '{task_key}'.")
            return episode
        task = self._task(task_key) if task_key is not None else None
        episode = self.build(key, principal, task)
        self.episodes[key] = episode
        if telemetry.ON:
            telemetry.episode_opened(episode.id, task.task_key if task else None, list(episode.environments))
        task_json = task.model_dump(mode="json") if task else None
        self.recorder.emit(
            "open_episode", episode.id, principal, task.task_key if task else None, now(), self.owner, task_json
        )
        if self.shares_routes and key.startswith("key:"):  # session routes carry their handshake (episodes.py)
            self.recorder.emit("add_route", key, episode.id)  # how another replica finds it to forward to
        logger.info("episode %s opened%s", episode.id, f" for task {task.task_key}" if task else "")
        return episode

    def build(self, key: str, principal: str, task: Task | None, episode_id: str | None = None) -> Episode:
        """A new episode object (nothing recorded, nothing registered); `episode_id` when adopting one.

        Raises:
            MCPError: the task's environment is not available here.
        """
        environments = task_environments(task, self.environments, self.config) if task else self.environments
        episode = Episode(
            key,
            principal,
            environments,
            self.provider,
            self._tg,
            # A bound task decides what its episode shows; the proxy-wide setting is the default for the rest.
            modality=task.modality if task is not None else self.config.modality,
            end_timeout=self.config.end_timeout,
            task=task,
            submit_tool=task is not None and wants_submit_tool(task, self.config.submit_tool),
            partial_reward=self.config.partial_reward,
            verify_timeout=self.config.verify_timeout,
            recorder=self.recorder,
            context=self._context_for(task),
            progress_interval=self.config.progress_interval,
            keepalive_interval=self.config.keepalive_interval,
            catalog_cache=self.catalog_cache,
            fleet=self.config.fleet,
            provision_on_list=self.config.provision_on_list,
            episode_id=episode_id,
        )
        limit = task.max_steps if task is not None and task.max_steps is not None else self.config.max_steps
        if limit is not None:
            episode.steps = StepBudget(limit, on_limit=partial(self._tg.start_soon, self.end_at_step_limit, episode))
        return episode

    def _context_for(self, task: Task | None) -> ContextSettings | None:
        """Large-output handling and the context tools: for task episodes unless configured otherwise."""
        enabled = self.config.context.enabled
        return None if enabled == "never" or (enabled == "auto" and task is None) else self._context

    def _task(self, task_key: str) -> Task:
        task = self.tasks.get(task_key)
        if task is None:
            known = ", ".join(sorted(self.tasks)[:10]) or "none are loaded (serve --tasks FILE)"
            raise MCPError(INVALID_PARAMS, f"Unknown task '{task_key}'. Known tasks: {known}.")
        return task

    @contextmanager
    def serving(self, key: str | None) -> Iterator[None]:
        if key is None:
            yield
            return
        self.requests[key] += 1
        try:
            yield
        finally:
            self.requests[key] -= 1
            if not self.requests[key]:
                del self.requests[key]

    @property
    def ends_in_progress(self) -> int:
        return self._ending

    def schedule_end(self, key: str, reason: str) -> None:
        """End an episode in the background (safe from a 5 s teardown budget or a cancelled request)."""
        episode = self.episodes.pop(key, None)
        if episode is not None:
            self._tg.start_soon(self._end, episode, reason)

    async def end(self, key: str, reason: str) -> None:
        episode = self.episodes.pop(key, None)
        if episode is not None:
            await self._end(episode, reason)

    async def _end(self, episode: Episode, reason: str) -> None:
        self._ending += 1
        scope = anyio.CancelScope()  # cancelled only when the shutdown grace runs out
        self._end_scopes.add(scope)
        try:
            with scope:
                await self._finish(episode, reason)
        finally:
            self._end_scopes.discard(scope)
            if episode.end_state == "pending":
                self.pending.append(episode)
            self._ending -= 1
            if not self._ending:
                self._ends_done.set()
                self._ends_done = anyio.Event()

    async def end_at_step_limit(self, episode: Episode) -> None:
        """THE max_steps hook: grade with trigger "max_steps", then end the episode with reason "max_steps".

        The episode stays registered (its session open) until the client leaves: the agent's next call is refused
        with the step-limit message rather than a vanished session, and the harness can still read the reward. Its
        instances are released now; the registry's own end (session close, idle, shutdown) finishes the rest.
        """
        self._ending += 1
        try:
            with anyio.CancelScope(shield=True):  # bounded: verify by its own deadline, end by end_timeout
                await episode.verify("max_steps")
                await episode.end("max_steps")
        finally:
            self._ending -= 1
            if not self._ending:
                self._ends_done.set()
                self._ends_done = anyio.Event()

    async def _finish(self, episode: Episode, reason: str) -> None:
        for session_id in episode.session_ids:
            self.ended_sessions[session_id] = None
            while len(self.ended_sessions) > _ENDED_SESSIONS_KEPT:
                self.ended_sessions.popitem(last=False)
        await episode.end(reason)  # writes each state of the end itself; an earlier end's reason stays
        for hook in self.on_end:
            try:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.end_timeout):
                    await hook(episode)
            except Exception:
                logger.exception("end hook failed for episode %s", episode.id)

    async def reap_idle(self) -> None:
        """End episodes with no call in flight and no request for `idle_timeout` seconds."""
        idle = self.config.idle_timeout
        interval = max(0.05, min(idle / 4, 5.0))
        while True:
            await anyio.sleep(interval)
            now = anyio.current_time()
            # Comprehensions, so no loop variable keeps the last episode looked at alive until the next tick.
            idle_keys = [k for k, e in self.episodes.items() if e.inflight == 0 and now - e.last_active >= idle]
            for key in idle_keys:
                self.schedule_end(key, f"idle for {idle:g} s")
            expiring = [k for k, e in self.episodes.items() if e.task is not None and e.must_end_for_expiry()]
            for key in expiring:
                self.schedule_end(key, "instance expiring: graded while it lives")

    async def shutdown(self, grace: float) -> set[str]:
        """End every episode concurrently within `grace` seconds; returns the instances pending ends still need.

        An end cut short by the grace is left pending (its row ungraded, its instances alive) for whoever
        finishes it next; every other episode is closed and its instances released.
        """
        self.closing = True
        episodes = list(self.episodes.values())
        self.episodes.clear()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(grace):
                async with anyio.create_task_group() as tg:
                    for episode in episodes:
                        tg.start_soon(self._end, episode, "proxy shutdown")
                    while self._ending:  # ends scheduled earlier (a closed session, the idle reaper) finish too
                        await self._ends_done.wait()
            for scope in list(self._end_scopes):  # still grading: left pending, instances alive
                scope.cancel()
            with anyio.move_on_after(max(1.0, self.config.end_timeout / 4)):
                while self._ending:
                    await self._ends_done.wait()
        return {i.instance_id for e in self.pending for i in e.instances.values()}
