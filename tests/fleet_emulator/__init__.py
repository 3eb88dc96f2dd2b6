"""A Fleet platform API emulator for tests: the REST contract the `fleet` SDK speaks, with real MCP instances.

In-process::

    async with running_emulator(api_key="k", faults=Faults(seed=1), clock=Clock(frozen=True)) as emu:
        fleet = AsyncFleet(api_key="k", base_url=emu.base_url)

As a process (it outlives a killed proxy)::

    python tests/fleet_emulator --port 0 --api-key KEY [--instance-limit N] [--seed S]
    # prints: FLEET_EMULATOR_READY http://127.0.0.1:PORT
"""

from .clock import Clock
from .emulator import Emulator
from .faults import Faults
from .models import DEFAULT_CATALOG, HEARTBEAT_GRACE, ApiError, EnvSpec, InstanceRecord
from .server import READY_PREFIX, bind_loopback, running_emulator, serve
from .state import EmulatorState

__all__ = [
    "DEFAULT_CATALOG",
    "HEARTBEAT_GRACE",
    "READY_PREFIX",
    "ApiError",
    "Clock",
    "Emulator",
    "EmulatorState",
    "EnvSpec",
    "Faults",
    "InstanceRecord",
    "bind_loopback",
    "running_emulator",
    "serve",
]
