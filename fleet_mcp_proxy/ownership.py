"""Which process holds which unfinished episodes of a store, and whether that process still lives.

Every process that opens the store for serving or finishing registers an owner row with a lease and renews it
in one statement per interval, for all its episodes at once. An owner is gone when its lease ran out, or at
once when it ran on this host and its pid is no longer there (a `kill -9`), so the next start need not wait.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import anyio

from .recorder import now
from .store import EpisodeStore
from .store.records import OwnerRecord

logger = logging.getLogger(__name__)
LEASE_SECONDS = 15.0
RENEW_SECONDS = 5.0


def host_name() -> str:
    return socket.gethostname()


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def owner_alive(owner: OwnerRecord, *, at: float, me: Me) -> bool:
    """Pure but for the pid probe: a live lease, and on this host a running pid that is not ours."""
    if owner.owner_id == me.owner_id:
        return True
    if owner.lease_until <= at:
        return False
    if owner.host == me.host:
        return owner.pid != me.pid and pid_running(owner.pid)
    return True


@dataclass(frozen=True)
class Me:
    owner_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    host: str = field(default_factory=host_name)
    pid: int = field(default_factory=os.getpid)


class Membership:
    """This process's owner row: registered, renewed while it runs, dropped when it is done."""

    def __init__(self, store: EpisodeStore, me: Me | None = None, address: str | None = None) -> None:
        self.store = store
        self.me = me or Me()
        self.address = address  # where other replicas reach this one, registered with its row

    async def join(self) -> None:
        record = OwnerRecord(
            owner_id=self.me.owner_id,
            host=self.me.host,
            pid=self.me.pid,
            started_at=now(),
            lease_until=time.time() + LEASE_SECONDS,
            address=self.address,
        )
        await self.store.register_owner(record)

    async def renew_forever(self) -> None:
        while True:
            await anyio.sleep(RENEW_SECONDS)
            try:
                with anyio.fail_after(RENEW_SECONDS):
                    await self.store.renew_owner(self.me.owner_id, time.time() + LEASE_SECONDS)
            except Exception:  # the store is busy or gone: the next renewal tries again
                logger.warning("could not renew this process's lease in the episode store")

    async def others_alive(self) -> bool:
        at = time.time()
        return any(
            o.owner_id != self.me.owner_id and owner_alive(o, at=at, me=self.me) for o in await self.store.owners()
        )

    async def alive_ids(self) -> set[str]:
        """The owner ids of the processes on this store that still live (this one included)."""
        at = time.time()
        alive = {o.owner_id for o in await self.store.owners() if owner_alive(o, at=at, me=self.me)}
        return alive | {self.me.owner_id}

    async def dead_or_none(self, owner: str | None) -> bool:
        """True when rows held by `owner` may be taken: no owner, or one that is gone."""
        if owner is None:
            return True
        if owner == self.me.owner_id:
            return False
        at = time.time()
        for record in await self.store.owners():
            if record.owner_id == owner:
                return not owner_alive(record, at=at, me=self.me)
        return True  # dropped its row without disowning: gone

    async def prune(self) -> None:
        """Drop the rows of owners that are gone and hold nothing unfinished (one per crashed process)."""
        held = {end.owner for end in await self.store.unfinished()}
        at = time.time()
        for owner in await self.store.owners():
            if owner.owner_id not in held and not owner_alive(owner, at=at, me=self.me):
                await self.store.drop_owner(owner.owner_id)

    async def leave(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self.store.drop_owner(self.me.owner_id)
