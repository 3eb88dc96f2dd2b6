"""The emulator: state, faults, clock and the instances' MCP servers, with one lifespan that owns them."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup
from starlette.types import ASGIApp

from .clock import Clock
from .faults import Faults
from .images import IMAGES, Image, ImageHost
from .instances import HostPool, InstanceHost
from .models import DEFAULT_CATALOG, ApiError, EnvSpec, InstanceRecord
from .state import DEFAULT_REGIONS, EmulatorState
from .verifiers import BundleStore

log = logging.getLogger(__name__)


class Emulator:
    """A Fleet platform API emulator (control plane + one in-process MCP server per instance).

    Serve `emulator.app` with uvicorn (see `server.running_emulator` / `server.serve`); its lifespan starts
    the task group the instances' MCP servers and the expiry sweeper run in, and stops them all at exit.
    Construct it inside the event loop.

    Args:
        api_key: the only key accepted (`Authorization: Bearer <api_key>`), on the control plane and on MCP.
        faults: fault knobs (default: none). Kept by reference: changing it changes the running emulator.
        clock: time source for TTLs, heartbeats and provisioning (default: real time).
        instance_limit: live instances allowed at once; the create beyond it answers 403.
        catalog: environments offered; every one serves the demo tracker.
        regions: accepted `region` values; the first one is the default.
        sweep_interval: real seconds between background expiry sweeps; None leaves expiry to requests.
        require_runner_token: answer 404 on instance-manager paths without `X-Runner-Token` (gated router).
        data_root: parent of the instances' data directories (default: a temporary directory).
    """

    def __init__(
        self,
        api_key: str,
        *,
        faults: Faults | None = None,
        clock: Clock | None = None,
        instance_limit: int = 10,
        catalog: Iterable[EnvSpec] = DEFAULT_CATALOG,
        regions: Iterable[str] = DEFAULT_REGIONS,
        sweep_interval: float | None = 0.25,
        require_runner_token: bool = False,
        data_root: Path | None = None,
    ) -> None:
        self.api_key = api_key
        self.faults = faults or Faults()
        self.clock = clock or Clock()
        self.state = EmulatorState(catalog=catalog, instance_limit=instance_limit, regions=regions)
        self.sweep_interval = sweep_interval
        self.require_runner_token = require_runner_token
        self.runner_token = f"runner-{uuid.uuid4().hex}"
        self._base_url: str | None = None
        self._data_root = data_root
        self.hosts = HostPool()
        self.bundles = BundleStore()  # verifier bundles and executions (verifiers.py)
        self.started = anyio.Event()
        self.images: dict[str, Image] = dict(IMAGES)  # per-endpoint toolsets by env key (images.py)
        self.misbehaving: dict[str, str] = {}  # instance id -> "hang" | "garbage" (front.py)
        self._tg: TaskGroup | None = None

        from .app import build_app  # app.py imports this module for typing only

        self.app: ASGIApp = build_app(self)

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, no trailing slash (set by whoever binds the socket)."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not bound to a socket yet")
        return self._base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self._base_url = value.rstrip("/")

    # -- lifespan --------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        owned = self._data_root is None
        root = Path(tempfile.mkdtemp(prefix="fleet-emulator-")) if owned else self._data_root
        assert root is not None
        root.mkdir(parents=True, exist_ok=True)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self.hosts.attach(tg, root)
                if self.sweep_interval:
                    tg.start_soon(self._sweeper, self.sweep_interval, name="fleet-emulator sweeper")
                self.started.set()
                try:
                    yield
                finally:
                    self.hosts.attach(None)
                    with anyio.CancelScope(shield=True):
                        await self.hosts.stop_all()
                    tg.cancel_scope.cancel()
        finally:
            self._tg = None
            if owned:
                shutil.rmtree(root, ignore_errors=True)

    async def _sweeper(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            self.sweep()

    # -- rules applied ---------------------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Apply the clock now: expired instances stop and their MCP servers go down."""
        stopped = self.state.advance(self.clock.now())
        # Also catches instances ended by calling `state` directly (e.g. `emu.state.kill(...)` in a test).
        for instance_id in list(self.hosts.hosts):
            record = self.state.instances.get(instance_id)
            if record is None or not record.live:
                self.hosts.stop(instance_id)
        return stopped

    async def advance(self, seconds: float) -> list[str]:
        """Move the clock forward and sweep; returns the ids that stopped. Their servers are down on return."""
        self.clock.advance(seconds)
        stopped = self.sweep()
        await self._wait_down(stopped)
        return stopped

    async def _wait_down(self, instance_ids: Iterable[str]) -> None:
        for instance_id in instance_ids:
            host = self.hosts.stopping.get(instance_id)
            if host is not None:
                await host.wait_stopped()

    async def create(self, body: Any, request_id: str | None) -> tuple[InstanceRecord, bool]:
        """Validate, de-duplicate, check the limit, roll the create faults, insert, start the server.

        Returns the record and whether to cut the connection instead of answering (drop after commit).
        """
        spec = self.state.check_create(body)
        self.state.check_duplicate(request_id)
        self.state.check_limit()
        if self.faults.roll(self.faults.create_health_check_failure_rate):
            raise ApiError(self.faults.create_health_check_status, "Instance health check failed")
        now = self.clock.now()
        record = self.state.commit(spec, request_id, now, self.faults.provision_delay)
        try:
            image = self.images.get(record.env_key)
            if image is None:
                await self.hosts.start(record.instance_id)
            else:
                await self.hosts.start(record.instance_id, partial(ImageHost, image=image))
        except Exception:
            log.exception("instance %s failed to start", record.instance_id)
            self.state.kill(record.instance_id, self.clock.now(), "error")
            raise ApiError(500, "Instance health check failed") from None
        return record, self.faults.roll(self.faults.create_drop_after_commit_rate)

    async def delete(self, instance_id: str) -> InstanceRecord:
        record = self.state.delete(instance_id, self.clock.now())
        await self._down(instance_id)
        return record

    async def delete_batch(self, *, run_id: str | None, profile_id: str | None) -> list[InstanceRecord]:
        records = self.state.delete_batch(self.clock.now(), run_id=run_id, profile_id=profile_id)
        for record in records:
            await self._down(record.instance_id)
        return records

    async def kill_instance(self, instance_id: str, status: str = "error") -> InstanceRecord:
        """The instance dies mid-episode: status `error` (or `stopped`) and its MCP endpoint goes dead."""
        record = self.state.kill(instance_id, self.clock.now(), status)
        await self._down(instance_id)
        return record

    async def _down(self, instance_id: str) -> None:
        """Stop the instance's server (if it still runs) and wait until it and its directory are gone."""
        self.hosts.stop(instance_id)
        await self._wait_down([instance_id])

    # -- lookups ---------------------------------------------------------------------------------------
    def host(self, instance_id: str) -> InstanceHost | None:
        return self.hosts.get(instance_id)

    def data_dir(self, instance_id: str) -> Path:
        assert self.hosts.data_root is not None, "the emulator has not started"
        return self.hosts.data_root / instance_id

    def requests(self, method: str, path: str) -> int:
        """How many requests `METHOD /path` the emulator received (control plane and instances)."""
        return self.state.request_counts[f"{method.upper()} {path}"]

    def to_state(self) -> dict[str, Any]:
        return {
            "now": self.clock.now(),
            "base_url": self._base_url,
            "data_root": None if self.hosts.data_root is None else str(self.hosts.data_root),
            "faults": self.faults.to_dict(),
            "serving": sorted(i for i, h in self.hosts.hosts.items() if h.serving),
            **self.state.to_state(),
            "verifiers": self.bundles.to_state(),
        }
