"""The one verifying TLS client context of the process.

Building a context loads the CA bundle: tens of milliseconds of CPU during which the event loop serves
nobody (heartbeats included). An httpx client built without `verify=` builds its own, so every client the
proxy makes per instance, link or poll takes this one instead.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def client_context() -> ssl.SSLContext:
    return ssl.create_default_context()
