"""Which heartbeat failures mean the instance is gone, judged by the SDK's exception types.

Terminal (the lease is lost; another beat would get the same answer):
* 404 or 410: the platform no longer knows the instance;
* 401 and every 403 of the permission family (`FleetPermissionError` and its subclasses, such as an
  environment the key may no longer use or a team that no longer exists): the key cannot keep it alive;
* 400 (`FleetBadRequestError` and its subclasses): the platform refuses this very request.

Everything else is transient and retried until a whole TTL passes without an accepted beat: timeouts,
429, 5xx, a network failure (no status), a 409 (a concurrent operation on the instance), the team's
instance limit (which concerns creates, not beats), and the SDK's own crashes on odd error bodies.
Both exception trees count: `AsyncFleet` raises `fleet._async.exceptions`, the top-level exports are the sync ones.
"""

from __future__ import annotations

from fleet import exceptions as sexc
from fleet._async import exceptions as aexc

_TERMINAL_TYPES: tuple[type[BaseException], ...] = (
    aexc.FleetAuthenticationError,
    aexc.FleetPermissionError,
    aexc.FleetBadRequestError,
    sexc.FleetAuthenticationError,
    sexc.FleetPermissionError,
    sexc.FleetBadRequestError,
)
_API_ERRORS: tuple[type[BaseException], ...] = (aexc.FleetAPIError, sexc.FleetAPIError)
_GONE = (404, 410)


def lease_lost(exc: BaseException) -> str | None:
    """Why a heartbeat failure means the instance is lost, or None when it is worth another beat."""
    if not isinstance(exc, _API_ERRORS):
        return None
    status = getattr(exc, "status_code", None)
    if status in _GONE:
        return f"Fleet answered {status} to a heartbeat: the instance is gone"
    if isinstance(exc, _TERMINAL_TYPES):
        shown = status if isinstance(status, int) else "a refusal"
        return f"Fleet answered {shown} to a heartbeat ({type(exc).__name__})"
    return None
