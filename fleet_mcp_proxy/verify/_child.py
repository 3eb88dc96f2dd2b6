"""One local verifier run in its own process: `python -m fleet_mcp_proxy.verify._child`.

Protocol: one JSON object on stdin (`code`, `seed_db`, `current_db`, `final_answer`, and `conversation` for a verifier
that takes one), one JSON object on stdout (the
SDK's `success`, `result`, `error`, `stdout`, or `import_error` when the SDK itself cannot be imported). Nothing else
is ever written to stdout, and the two database files are opened read-only.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from fleet_mcp_proxy.verify.conversation import with_conversation_entry
from fleet_mcp_proxy.verify.scoring import coerce_score

# Bounds on what goes back to the parent; the accumulators and verdicts that matter sit at the end of stdout.
MAX_STDOUT_CHARS = 4 * 1024 * 1024
MAX_RESULT_CHARS = 1024 * 1024
MAX_REPR_CHARS = 2000


def main() -> int:
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    # Whatever else reaches fd 1 (C code, subprocesses, sys.__stdout__) lands on stderr, never in the JSON channel.
    os.dup2(2, 1)
    stray = io.StringIO()
    sys.stdout = stray  # prints outside the verifier function (module level) are kept, ahead of its own output
    request = json.load(sys.stdin)
    code, conversation = request["code"], request.get("conversation")
    if isinstance(conversation, str):
        code = with_conversation_entry(code, conversation)
    response = run(code, request["seed_db"], request["current_db"], request.get("final_answer"))
    if "stdout" in response:
        response["stdout"] = _tail(stray.getvalue() + str(response["stdout"] or ""))
    channel.write(json.dumps(response, allow_nan=False))
    channel.close()
    return 0


def run(code: str, seed_db: str, current_db: str, final_answer: str | None) -> dict[str, Any]:
    for label, path in (("seed", seed_db), ("current", current_db)):
        if not os.path.isfile(path):
            return {"success": False, "result": None, "error": f"FileNotFoundError: {label} db {path}", "stdout": ""}
    _open_read_only({os.path.realpath(seed_db), os.path.realpath(current_db)})
    try:
        from fleet.verifiers.local_executor import execute_verifier_local
    except ImportError as exc:
        return {"import_error": f"{type(exc).__name__}: {exc}"}
    try:
        outcome: dict[str, Any] = execute_verifier_local(code, seed_db, current_db, final_answer)
    except (SystemExit, KeyboardInterrupt) as exc:  # they slip past the SDK's `except Exception`
        return {"success": False, "result": None, "error": f"{type(exc).__name__}: {exc}", "stdout": ""}
    return {**outcome, "result": _jsonable(outcome.get("result"))}


def _open_read_only(paths: set[str]) -> None:
    """The SDK opens snapshots with a plain, writable `sqlite3.connect`; make every connection to them read-only."""
    connect = sqlite3.connect

    def read_only_connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if isinstance(database, str | os.PathLike) and os.path.realpath(database) in paths:
            uri = Path(os.path.realpath(database)).as_uri() + "?mode=ro"
            database, kwargs = uri, {**kwargs, "uri": True}
        connection: sqlite3.Connection = connect(database, *args, **kwargs)
        return connection

    sqlite3.connect = read_only_connect  # type: ignore[assignment]


def _jsonable(result: Any) -> Any:
    """Results that do not survive JSON become `{"unserializable": repr}`, plus their score when one can be read."""
    try:
        text = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is not None and len(text) <= MAX_RESULT_CHARS:
        return result
    body: dict[str, Any] = {"unserializable": _repr(result)}
    if (value := coerce_score(result)) is not None:
        body["score"] = value
    return body


def _repr(value: Any) -> str:
    try:
        return repr(value)[:MAX_REPR_CHARS]
    except Exception:  # a verifier's own __repr__ may raise
        return f"<{type(value).__name__}>"


def _tail(text: str) -> str:
    if len(text) <= MAX_STDOUT_CHARS:
        return text
    return f"[... {len(text) - MAX_STDOUT_CHARS} characters cut ...]\n" + text[-MAX_STDOUT_CHARS:]


if __name__ == "__main__":
    sys.exit(main())
