"""`python -m fleet_emulator` (cwd `tests`) or `python tests/fleet_emulator/__main__.py`: the emulator as a process.

Prints one line `FLEET_EMULATOR_READY http://127.0.0.1:PORT` on stdout once it accepts requests, then serves
until SIGINT/SIGTERM, when it stops every instance and removes their data.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as a file: import the package from its parent directory, not its own
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import anyio

from fleet_emulator.emulator import Emulator
from fleet_emulator.faults import Faults
from fleet_emulator.server import READY_PREFIX, bind_loopback, serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fleet_emulator", description="Serve a Fleet platform API emulator.")
    p.add_argument("--port", type=int, default=0, help="loopback port; 0 picks a free one (default)")
    p.add_argument("--api-key", default=os.environ.get("FLEET_API_KEY"), help="the accepted key ($FLEET_API_KEY)")
    p.add_argument("--instance-limit", type=int, default=10, help="live instances allowed (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="fault-injection seed (default: %(default)s)")
    p.add_argument("--provision-delay", type=float, default=0.0, help="seconds an instance stays pending")
    p.add_argument("--sweep-interval", type=float, default=0.25, help="seconds between expiry sweeps")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.api_key:
        _parser().error("--api-key (or $FLEET_API_KEY) is required")
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    sock = bind_loopback(args.port)

    def announce(base_url: str) -> None:
        print(f"{READY_PREFIX} {base_url}", flush=True)

    async def run() -> None:
        emu = Emulator(
            args.api_key,
            faults=Faults(seed=args.seed, provision_delay=args.provision_delay),
            instance_limit=args.instance_limit,
            sweep_interval=args.sweep_interval or None,
        )
        await serve(emu, sock, announce)

    try:
        anyio.run(run)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
