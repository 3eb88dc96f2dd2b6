"""Fleet instances through the official `fleet-python` SDK, behind one boundary.

The SDK's defaults (300 s timeouts, retries on POST and on 404) do not fit a proxy, so it gets our own
httpx client: bounded timeouts and transport retries only for what is safe to repeat. A create is safe to
repeat with the same `X-Request-ID`: the platform answers a duplicate with 409 and the SDK recovers the
instance it already made. Every SDK outcome is classified once (`fleet_errors`).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from typing import Any

import anyio
import httpx
import httpx2
import stamina
from fleet._async.client import AsyncFleet
from httpx_retries import Retry, RetryTransport
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .. import telemetry
from ..config import EnvironmentConfig, FleetSettings
from ..identifiers import is_instance_id, is_instance_url
from ..tls import client_context
from ..verify.remote import run_remote
from ..verify.scoring import VerifierRun
from .base import HttpTarget, Instance, Listed, ProvisionError
from .breaker import CircuitBreaker, FleetUnavailable, RetryBudget
from .fleet_errors import Kind, classify
from .fleet_leases import lease_lost
from .fleet_transport import GuardedTransport
from .leases import Beat, LeaseLost
from .origin import fleet_origin

logger = logging.getLogger(__name__)
CREATE_TAG = "FMP_CREATE_ID"  # marks which create made an instance, to reconcile lost responses
# Which proxy process (its owner id in the episode store) made an instance: the fleet-wide sweep never takes
# an instance whose maker still lives (it may be creating it, or holding it warm, before any row names it).
CREATOR_TAG = "FMP_CREATOR"


def _client(settings: FleetSettings, *, retries: int, timeout: float) -> AsyncFleet:
    transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport()
    if retries > 0:
        policy = Retry(
            total=retries,
            # 404 is an answer (the instance is gone), and 500 may be a real failure: neither is retried here.
            status_forcelist=[429, 502, 503, 504],
            allowed_methods=["GET", "POST", "DELETE"],
            backoff_factor=0.5,
            max_backoff_wait=10.0,
        )
        transport = RetryTransport(transport=transport, retry=policy)
    http = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout, connect=10.0))
    return AsyncFleet(api_key=settings.api_key, base_url=settings.base_url, httpx_client=http)


def _guarded_client(settings: FleetSettings, breaker: CircuitBreaker, budget: RetryBudget) -> AsyncFleet:
    """The provisioning client: the breaker and the retry budget sit under the SDK (see fleet_transport)."""
    transport = GuardedTransport(
        httpx.AsyncHTTPTransport(), breaker, budget, retries=settings.max_retries, backoff=settings.retry_backoff
    )
    timeout = httpx.Timeout(settings.request_timeout, connect=10.0)
    http = httpx.AsyncClient(transport=transport, timeout=timeout)
    return AsyncFleet(api_key=settings.api_key, base_url=settings.base_url, httpx_client=http)


async def _close(fleet: AsyncFleet) -> None:
    # AsyncFleet has no close of its own (its `close(id)` deletes an instance).
    await fleet.client.httpx_client.aclose()


def _split(spec: str) -> tuple[str, str | None]:
    key, _, version = spec.partition(":")
    return key, version or None


def _lease_ttl(interval: object) -> float | None:
    """The platform stops an instance two heartbeat intervals after its last beat."""
    return float(interval) * 2 if isinstance(interval, int | float) and interval > 0 else None


def endpoint_paths(modality: str) -> tuple[str, ...]:
    """The MCP paths under an instance's root, as Fleet's harness reads them (contract 2.1).

    `tool_use` unions the environment's own server and the aggregator (some images serve only the latter);
    `computer_use` reads exactly the aggregator, so its `computer` tool is never lost to a union.
    """
    return ("api/v1/mcp",) if modality == "computer_use" else ("mcp", "api/v1/mcp")


def _created(made: Any) -> float:
    """When the platform says it created the instance (epoch seconds); now, if it did not say."""
    stamp = getattr(made, "created_at", None)
    try:
        when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return time.time()
    return when.timestamp() if when.tzinfo is not None else time.time()


def _created_or_none(made: Any) -> float | None:
    """When the platform says it created the instance (epoch seconds); None if it did not say."""
    stamp = getattr(made, "created_at", None)
    if isinstance(stamp, datetime):
        return stamp.timestamp() if stamp.tzinfo is not None else None
    try:
        when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


class _NotReady(Exception):
    """Not ready yet; polled again until the deadline."""


class _Transient(ProvisionError):
    """A create failed in a way worth retrying as a new request."""


class FleetProvider:
    """Creates, probes, heartbeats and deletes Fleet instances."""

    name = "fleet"

    def __init__(self, settings: FleetSettings, *, creator: str | None = None) -> None:
        self.settings = settings
        self.creator = creator  # this process's owner id, tagged on every create (None: no episode store)
        self.origin = fleet_origin(settings.base_url, settings.api_key)  # recorded with every instance it makes
        if not settings.run_id:
            raise ValueError("FleetProvider needs the deployment's run_id (see pool.run_id_for)")
        self.run_id = settings.run_id
        self.breaker = CircuitBreaker(
            failures=settings.breaker_failures,
            open_for=settings.breaker_open_seconds,
            max_open_for=settings.breaker_max_open_seconds,
        )
        self.budget = RetryBudget(ratio=settings.retry_budget_ratio, minimum=settings.retry_budget_min)
        # Provisioning (create, readiness) goes through the breaker and the budget; clean-up (delete,
        # reconcile, sweep) and verifiers do not: they are few, bounded by their own retries, and must
        # still try while new provisions are refused.
        self._fleet = _guarded_client(settings, self.breaker, self.budget)
        self._ops = _client(settings, retries=settings.max_retries, timeout=settings.request_timeout)
        # Heartbeats: no transport retries (the lease keeper retries), short timeouts.
        self._beats = _client(settings, retries=0, timeout=10.0)

    # -- provisioning ----------------------------------------------------------------------------------------
    async def provision(self, env: EnvironmentConfig, episode_id: str) -> Instance:
        assert env.fleet is not None
        env_key, _ = _split(env.fleet)
        deadline = self.settings.provision_timeout
        try:
            with (
                self.budget.provisioning(),
                telemetry.fleet_step("fleet create", env.name),
                anyio.fail_after(deadline),
            ):
                made = await self._create(env, env_key)
        except TimeoutError:
            raise ProvisionError(f"Fleet did not provide '{env_key}' within {deadline:g} s.") from None
        try:
            return self._instance_of(env, made)
        except ProvisionError:  # the platform made it, but it cannot be used: nobody else would delete it
            instance_id = str(getattr(made, "instance_id", ""))
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.settings.request_timeout):
                try:
                    await self._delete_id(instance_id)
                except Exception as exc:
                    logger.warning("could not delete unusable instance: %s", classify(exc, env_key).message)
            raise

    async def _create(self, env: EnvironmentConfig, env_key: str) -> Any:
        """One create, retried as a new request while the failure is transient; at most one live instance."""
        async for attempt in stamina.retry_context(
            on=_Transient, attempts=5, timeout=None, wait_initial=4 * self.settings.retry_backoff, wait_max=16.0
        ):
            with attempt:
                return await self._make_once(env, env_key)
        raise AssertionError("unreachable: stamina re-raises the last failure")

    async def _make_once(self, env: EnvironmentConfig, env_key: str) -> Any:
        create_id = uuid.uuid4().hex
        try:
            made = await self._fleet.make(
                env.fleet or env_key,
                data_key=env.data,
                region=env.region,
                env_variables={**env.env_variables, CREATE_TAG: create_id, **self._creator_tag()},
                image_type="mcp" if env.modality == "computer_use" else None,
                ttl_seconds=env.ttl_seconds or self.settings.ttl_seconds,
                run_id=self.run_id,
                heartbeat_interval=env.heartbeat_interval or self.settings.heartbeat_interval,
                timeout=self.settings.request_timeout,
                max_wait_seconds=max(int(self.settings.request_timeout) - 5, 1),
            )
        except anyio.get_cancelled_exc_class():
            # Cancelled in flight (provision_timeout, shutdown): the platform may have made it all the same.
            with anyio.CancelScope(shield=True):
                await self._reconcile(create_id)
            raise
        except Exception as exc:
            outcome = classify(exc, env_key)
            if outcome.unknown_outcome:
                await self._reconcile(create_id)
            if outcome.kind is Kind.BUG:
                logger.error("Fleet SDK failure creating %s: %s", env_key, type(exc).__name__)
            refusal = self.breaker.refusal()
            if outcome.kind is Kind.TRANSIENT and refusal is not None:
                raise ProvisionError(str(refusal)) from None  # Fleet is down: fail fast, no backoff wait
            if outcome.kind is Kind.TRANSIENT:
                logger.warning("create of %s failed (%s); retrying as a new request", env_key, outcome.message)
                raise _Transient(outcome.message) from None
            raise ProvisionError(outcome.message) from None
        return made

    def _creator_tag(self) -> dict[str, str]:
        return {CREATOR_TAG: self.creator} if self.creator is not None else {}

    async def _reconcile(self, create_id: str) -> None:
        """A create whose answer was lost may still have made an instance: find it by its tag and delete it."""
        try:
            with anyio.fail_after(min(self.settings.request_timeout, 30.0)):
                for env in await self._ops.instances(run_id=self.run_id):
                    if (getattr(env, "env_variables", None) or {}).get(CREATE_TAG) == create_id:
                        logger.warning("deleting %s, made by a create whose answer was lost", env.instance_id)
                        await self._delete_id(env.instance_id)
        except Exception as exc:
            logger.warning("could not reconcile a lost create (%s); the shutdown sweep will", classify(exc, "").message)

    def _instance_of(self, env: EnvironmentConfig, made: Any) -> Instance:
        instance_id = str(made.instance_id)
        if not is_instance_id(instance_id):  # it goes into URL paths: never interpolate what is not a plain name
            raise ProvisionError("Fleet returned an instance id that is not a plain name; it was not used.")
        urls = getattr(made, "urls", None)
        root = getattr(urls, "root", None)
        if not isinstance(root, str) or not root:
            raise ProvisionError(f"Fleet returned instance {instance_id} without an address.")
        if not is_instance_url(root):  # used as given otherwise: never rewritten, never followed through redirects
            raise ProvisionError(f"Fleet returned instance {instance_id} with an address that is not an http(s) URL.")
        root = root if root.endswith("/") else root + "/"
        headers = {"Authorization": f"Bearer {self.settings.api_key}"}
        ttl = env.ttl_seconds or self.settings.ttl_seconds
        endpoints = [HttpTarget(root + path, headers) for path in endpoint_paths(env.modality)]
        return Instance(
            env.name,
            instance_id,
            self.name,
            endpoints[0],
            expires_at=_created(made) + ttl,  # the platform counts the TTL from the create
            union=tuple(endpoints[1:]),
            origin=self.origin,
        )

    def reattached(self, env: EnvironmentConfig, instance_id: str, url: str, expires_at: float | None) -> Instance:
        """An instance another replica created, rebuilt from the address it recorded (no call to Fleet).

        Raises:
            ProvisionError: the record does not hold a usable address.
        """
        paths = endpoint_paths(env.modality)
        root = url[: -len(paths[0])] if url.endswith("/" + paths[0]) else ""
        if not is_instance_id(instance_id) or not is_instance_url(root):
            raise ProvisionError(f"the store holds no usable address for instance {instance_id}")
        headers = {"Authorization": f"Bearer {self.settings.api_key}"}
        endpoints = [HttpTarget(root + path, headers) for path in paths]
        return Instance(
            env.name,
            instance_id,
            self.name,
            endpoints[0],
            expires_at=expires_at,
            union=tuple(endpoints[1:]),
            origin=self.origin,
        )

    async def ready(self, instance: Instance, deadline: float) -> None:
        """Ready: status `running`, and initialize + tools/list answers with at least one tool."""
        assert isinstance(instance.target, HttpTarget)
        try:
            with self.budget.provisioning(), telemetry.fleet_step("fleet ready", instance.alias) as step:
                async for attempt in stamina.retry_context(
                    on=_NotReady, attempts=None, timeout=deadline, wait_initial=0.5, wait_max=5.0
                ):
                    with attempt:
                        step.set(polls=attempt.num)
                        await self._check_ready(instance)
        except _NotReady as exc:
            raise ProvisionError(
                f"Fleet instance {instance.instance_id} did not become ready within {deadline:g} s ({exc})."
            ) from None

    async def _check_ready(self, instance: Instance) -> None:
        try:
            status = (await self._fleet.instance(instance.instance_id)).status
        except FleetUnavailable as exc:
            raise ProvisionError(str(exc)) from None  # no point polling while Fleet is down
        except Exception as exc:
            raise _NotReady(classify(exc, instance.alias).message) from None
        if status in ("error", "stopped"):
            raise ProvisionError(f"Fleet instance {instance.instance_id} is '{status}'.")
        if status != "running":
            raise _NotReady(f"status '{status}'")
        for target in (instance.target, *instance.union):  # ready when any endpoint lists a tool
            assert isinstance(target, HttpTarget)
            if await self._probe(target):
                return
        raise _NotReady("none of its MCP endpoints lists a tool yet")

    async def _probe(self, target: HttpTarget) -> bool:
        try:
            with anyio.fail_after(15):
                async with (
                    httpx2.AsyncClient(headers=dict(target.headers), timeout=10.0, verify=client_context()) as http,
                    Client(streamable_http_client(target.url, http_client=http), mode="legacy", cache=None) as c,
                ):
                    return bool((await c.list_tools()).tools)
        except Exception:  # not ready yet, whatever the reason
            return False

    # -- leases ----------------------------------------------------------------------------------------------
    def ttl_of(self, env: EnvironmentConfig) -> float | None:
        return _lease_ttl(env.heartbeat_interval or self.settings.heartbeat_interval)

    def ttl_of_default(self) -> float | None:
        return _lease_ttl(self.settings.heartbeat_interval)

    async def heartbeat(self, instance: Instance) -> Beat:
        try:
            reply = await self._beats.heartbeat(instance.instance_id)
        except Exception as exc:
            reason = lease_lost(exc)
            if reason is not None:
                raise LeaseLost(reason) from None
            raise
        if not getattr(reply, "success", True):
            raise LeaseLost("Fleet refused the heartbeat")
        deadline = getattr(reply, "deadline_timestamp", None)
        if isinstance(deadline, int | float):
            return Beat(ttl=max(1.0, deadline - datetime.now().timestamp()))
        return Beat(ttl=_lease_ttl(getattr(reply, "interval_seconds", None)))

    async def delete(self, instance: Instance) -> None:
        await self._delete_id(instance.instance_id)

    async def _delete_id(self, instance_id: str) -> None:
        if not is_instance_id(instance_id):  # never interpolated; the run's TTL and batch delete reclaim it
            logger.warning("not deleting Fleet instance %r by id: not a plain name", instance_id[:80])
            return
        try:
            await self._ops.delete(instance_id)
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                return  # already gone: released
            raise

    async def orphans(self) -> list[str]:
        """Ids of live instances carrying this deployment's run_id."""
        found = await self._ops.instances(run_id=self.run_id)
        live = [str(env.instance_id) for env in found if getattr(env, "status", "") in ("pending", "running")]
        return [instance_id for instance_id in live if is_instance_id(instance_id)]

    async def listing(self) -> list[Listed]:
        """Live instances carrying this deployment's run_id, with when and by which process each was made."""
        found = await self._ops.instances(run_id=self.run_id)
        listed = []
        for env in found:
            instance_id = str(env.instance_id)
            if getattr(env, "status", "") not in ("pending", "running") or not is_instance_id(instance_id):
                continue
            creator = (getattr(env, "env_variables", None) or {}).get(CREATOR_TAG)
            listed.append(Listed(instance_id, _created_or_none(env), creator if isinstance(creator, str) else None))
        return listed

    async def verify_remote(
        self,
        instance: Instance,
        task: Any,
        code: str,
        final_answer: str | None,
        timeout: float,
        conversation: str | None = None,
    ) -> VerifierRun:
        """The platform's verifier executor, through the SDK's async path."""
        return await run_remote(
            self._ops,
            instance.instance_id,
            task_key=task.task_key,
            prompt=task.prompt,
            env_key=task.env_key,
            code=code,
            final_answer=final_answer,
            timeout=timeout,
            conversation=conversation,
        )

    async def aclose(self) -> None:
        await _close(self._fleet)
        await _close(self._ops)
        await _close(self._beats)

    # -- operator checks (`doctor`) --------------------------------------------------------------------------
    async def account(self) -> Any:
        """The team's account (`team_name`, `instance_limit`, `instance_count`): a cheap authenticated call."""
        return await self._fleet.account()

    async def environment(self, env_key: str) -> Any:
        """The Fleet environment `env_key` (raises what `classify` maps to 'no such environment')."""
        return await self._fleet.environment(env_key)

    async def delete_run(self) -> int:
        """The last backstop: batch-delete everything tagged with this deployment's run_id."""
        return len(await self._ops.close_all(run_id=self.run_id))
