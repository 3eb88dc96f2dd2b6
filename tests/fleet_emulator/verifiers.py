"""Remote verifier execution: `/v1/verifiers/check` and `/v1/verifiers/execute` (fleet-contract.md §4.2 A).

Rules (the platform's runner is not public; these are chosen and documented here):
* A bundle is the SDK's zip (`requirements.txt`, `verifier.py`), stored under the sha256 of its bytes. An uploaded
  bundle whose stated `sha256` differs answers 400. `check` answers `success: true` once that sha was uploaded.
* An execute without a bundle names a stored sha, or answers 404 with an object detail (`bundle_not_found`);
  the SDK then retries once with the upload. `bundle_cache_hit` is true when the sha was stored before the request.
* `verifier.py` runs with the SDK's local-executor namespace and code cleaning (§4.1), `env` being the SDK's
  `LocalEnvironment` over consistent copies of the instance's `seed.sqlite` and `current.sqlite`, taken when the
  execution starts. The function is `function_name` (else the first one defined), called `f(env, *args, **kwargs)`
  with the SDK's leading `None` and trailing `{"env": id}` removed from the unpickled args (remote = keywords).
* An execution that was attempted answers 200: `success: false` with `error: {type, message, traceback}` when
  the instance is not running, the code does not load or raises, or it outlives the request's `timeout`.
  Executions run one at a time (stdout capture swaps the process-wide `sys.stdout`).
* Faults: `verifier_failure_rate` fails an execution without running it; `verifier_judge_error_rate` makes a
  successful one look like a judge brownout: a first stdout line `JUDGE ERROR: ...` and a fabricated grade 0 (B19).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import inspect
import io
import itertools
import json
import re
import sqlite3
import string
import tempfile
import threading
import time
import traceback
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import cloudpickle
from fleet.verifiers import local_executor as sdk
from fleet.verifiers.code import TASK_FAILED_SCORE, TASK_SUCCESSFUL_SCORE
from fleet.verifiers.db import DatabaseSnapshot, IgnoreConfig, SnapshotDiff
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .control import _body
from .models import ApiError

if TYPE_CHECKING:
    from .emulator import Emulator

JUDGE_ERROR_LINE = "JUDGE ERROR: judge LLM call failed (emulated brownout); the grade below is fabricated"
# The SDK local executor's cleaning (fleet/verifiers/local_executor.py): decorators and fleet imports go.
_CLEANING = (
    (r"@verifier\([^)]*\)\s*\n", 0),
    (r"^from fleet\.verifiers.*import.*$\n?", re.MULTILINE),
    (r"^from fleet import verifier.*$\n?", re.MULTILINE),
    (r"^import fleet\.verifiers.*$\n?", re.MULTILINE),
    (r"^import fleet$\n?", re.MULTILINE),
)
_RUN_LOCK = threading.Lock()


@dataclass
class Execution:
    execution_id: str
    key: str | None
    sha256: str
    instance_id: str | None
    uploaded: bool
    bundle_cache_hit: bool
    success: bool
    error_type: str | None


@dataclass
class BundleStore:
    """Uploaded bundles by sha256, and every execution the emulator answered."""

    bundles: dict[str, bytes] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> str:
        return f"exec_{next(self._seq):04d}"

    def to_state(self) -> dict[str, Any]:
        return {"bundles": sorted(self.bundles), "executions": [asdict(e) for e in self.executions]}


def _error(exc: BaseException, kind: str | None = None) -> dict[str, str]:
    text = "".join(traceback.format_exception(exc))
    return {"type": kind or type(exc).__name__, "message": str(exc), "traceback": text}


def _bad(message: str) -> ApiError:
    return ApiError(400, f"Invalid request: {message}")


def _bundle(store: BundleStore, body: dict[str, Any]) -> tuple[bytes, str, bool, bool]:
    """(zip bytes, sha256, uploaded, cache hit): an uploaded bundle is stored, a named one looked up."""
    stated = body.get("sha256")
    if stated is not None and not isinstance(stated, str):
        raise _bad("'sha256' must be a string")
    encoded = body.get("bundle")
    if encoded:
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise _bad("'bundle' is not base64") from None
        sha = hashlib.sha256(data).hexdigest()
        if stated and stated != sha:
            raise _bad(f"'sha256' {stated} does not match the bundle's {sha}")
        hit = sha in store.bundles
        store.bundles[sha] = data
        return data, sha, True, hit
    if not stated:
        raise _bad("give 'bundle' or the 'sha256' of an uploaded bundle")
    if stated not in store.bundles:
        detail = {"error": "bundle_not_found", "message": f"Bundle not found: {stated}", "sha256": stated}
        raise ApiError(404, detail)
    return store.bundles[stated], stated, False, True


def _source(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as bundle:
            return bundle.read("verifier.py").decode("utf-8")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
        raise _bad(f"the bundle has no readable verifier.py ({exc})") from None


def _call_arguments(body: dict[str, Any]) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """(instance id from `args_array[-1]["env"]`, positional args without the SDK's markers, kwargs)."""
    marker = body.get("args_array")
    if not isinstance(marker, list) or not marker or not isinstance(marker[-1], dict):
        raise _bad("'args_array' must end with {\"env\": instance_id}")
    instance_id = marker[-1].get("env")
    if not isinstance(instance_id, str) or not instance_id:
        raise _bad("'args_array' must end with {\"env\": instance_id}")
    try:
        unpickled = cloudpickle.loads(base64.b64decode(body.get("args") or "", validate=True))
        args, kwargs = tuple(unpickled["args"]), dict(unpickled["kwargs"])
    except Exception as exc:  # anything a bad pickle raises is the client's fault
        raise _bad(f"'args' is not a base64 cloudpickle of {{args, kwargs}} ({type(exc).__name__})") from None
    if args and args[0] is None:
        args = args[1:]  # the SDK's placeholder for env
    if args and args[-1] == {"env": instance_id}:
        args = args[:-1]  # the SDK appends the marker to args too
    return instance_id, args, kwargs


def _namespace(env: sdk.LocalEnvironment) -> dict[str, Any]:
    return {
        "TASK_SUCCESSFUL_SCORE": TASK_SUCCESSFUL_SCORE,
        "TASK_FAILED_SCORE": TASK_FAILED_SCORE,
        "normalized_contains": sdk.normalized_contains,
        "normalized_string_comparison": sdk.normalized_string_comparison,
        "extract_numbers": sdk.extract_numbers,
        "contains_number": sdk.contains_number,
        "DatabaseSnapshot": DatabaseSnapshot,
        "IgnoreConfig": IgnoreConfig,
        "SnapshotDiff": SnapshotDiff,
        "Environment": type(env),
        "json": json,
        "re": re,
        "string": string,
    }


def _snapshot(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite file (the tracker may be writing it); a missing file raises."""
    with (
        contextlib.closing(sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True, timeout=5.0)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def _run(code: str, function_name: str | None, data_dir: Path, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Load and call the verifier against copies of the instance's databases (a worker thread)."""
    for pattern, flags in _CLEANING:
        code = re.sub(pattern, "", code, flags=flags)
    with tempfile.TemporaryDirectory(prefix="fleet-emulator-verify-") as tmp:
        seed, current = Path(tmp) / "seed.sqlite", Path(tmp) / "current.sqlite"
        _snapshot(data_dir / "seed.sqlite", seed)
        _snapshot(data_dir / "current.sqlite", current)
        env = sdk.LocalEnvironment(str(seed), str(current))
        namespace = _namespace(env)
        exec(compile(code, "<string>", "exec"), namespace)  # running verifiers is the point
        defined = [
            obj for obj in namespace.values() if inspect.isfunction(obj) and obj.__code__.co_filename == "<string>"
        ]
        chosen = namespace.get(function_name or "")
        func = chosen if chosen in defined else (defined[0] if defined else None)
        if func is None:
            raise ValueError("No function found in verifier code")
        return func(env, *args, **kwargs)


def _timed_run(
    code: str, function_name: str | None, data_dir: Path, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, str, dict[str, str] | None]:
    """(result, stdout, error): whatever the verifier raises (even SystemExit) is its execution's error."""
    out = io.StringIO()
    with _RUN_LOCK, contextlib.redirect_stdout(out):
        try:
            return _run(code, function_name, data_dir, args, kwargs), out.getvalue(), None
        except BaseException as exc:  # a worker thread: no cancellation arrives here
            return None, out.getvalue(), _error(exc)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    score = getattr(value, "score", None)
    return float(score) if isinstance(score, int | float) else repr(value)


async def execute(emu: Emulator, body: Any) -> dict[str, Any]:
    """One `/v1/verifiers/execute`: a `VerifiersExecuteResponse` body, or an `ApiError`."""
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    timeout = body.get("timeout", 60)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 300:
        raise _bad("'timeout' must be whole seconds between 1 and 300")
    function_name = body.get("function_name")
    if function_name is not None and not isinstance(function_name, str):
        raise _bad("'function_name' must be a string")
    store = emu.bundles
    data, sha, uploaded, hit = _bundle(store, body)
    code = _source(data)
    instance_id, args, kwargs = _call_arguments(body)
    started = time.perf_counter()
    result: Any = None
    stdout = ""
    error: dict[str, str] | None = None
    record = emu.state.instances.get(instance_id)
    host = emu.host(instance_id)
    if record is None or not record.live or record.status != "running" or host is None or not host.serving:
        state = "unknown" if record is None else record.status
        error = _error(RuntimeError(f"Instance '{instance_id}' is not running ({state})"), "InstanceNotRunningError")
    elif emu.faults.roll(emu.faults.verifier_failure_rate):
        error = _error(RuntimeError("The runner lost its worker (emulated fault)"), "VerifierExecutionError")
    else:
        try:
            with anyio.fail_after(timeout):
                result, stdout, error = await anyio.to_thread.run_sync(
                    _timed_run, code, function_name, host.data_dir, args, kwargs, abandon_on_cancel=True
                )
        except TimeoutError:
            error = _error(TimeoutError(f"Verifier execution exceeded its timeout of {timeout} s"))
        if error is None and emu.faults.roll(emu.faults.verifier_judge_error_rate):
            stdout = f"{JUDGE_ERROR_LINE}\n{stdout}"
            result = TASK_FAILED_SCORE
    execution_id = store.next_id()
    success = error is None
    kind = None if error is None else error["type"]
    store.executions.append(Execution(execution_id, body.get("key"), sha, instance_id, uploaded, hit, success, kind))
    return {
        "key": body.get("key"),
        "success": success,
        "result": _jsonable(result) if success else None,
        "execution_id": execution_id,
        "execution_time_ms": int((time.perf_counter() - started) * 1000),
        "stdout": stdout,
        "error": error,
        "bundle_cache_hit": hit,
    }


def routes(emu: Emulator) -> list[Route]:
    async def check(request: Request) -> Response:
        sha = request.query_params.get("sha256")
        if not sha:
            raise _bad("query parameter 'sha256' is required")
        return JSONResponse({"success": sha in emu.bundles.bundles})

    async def run(request: Request) -> Response:
        return JSONResponse(await execute(emu, await _body(request)))

    return [
        Route("/v1/verifiers/check", check, methods=["GET"]),
        Route("/v1/verifiers/execute", run, methods=["POST"]),
    ]
