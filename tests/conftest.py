import logging
import os
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import debootstrap_base
import pytest
from canaries import CANARIES
from pg_cluster import PgCluster, start_cluster

# Every proxy the tests start (in-process or as a child) records episodes here, never in the user's home.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="fmp-test-state-")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL server for the session (unix socket only); each test takes a fresh database."""
    try:
        cluster = start_cluster()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a store behaviour test opens its store: a fresh SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "e.sqlite3"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


class _CanaryWatch(logging.Handler):
    """Fails the test if a planted secret reaches any log record; cheap: one substring scan per record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot format itself is the logger's problem, not a leak
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += "".join(traceback.format_exception(record.exc_info[1]))
        for canary in CANARIES:
            if canary in text:
                self.leaks.append(f"{record.name} {record.levelname}: {text.replace(canary, '<CANARY>')[:500]}")


@pytest.fixture(autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """Every log record of every test, at DEBUG, from every logger that propagates to the root."""
    root = logging.getLogger()
    watch = _CanaryWatch()
    level = root.level
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(watch)
        root.setLevel(level)
    if watch.leaks:
        pytest.fail("a secret reached the log:\n" + "\n".join(watch.leaks[:5]), pytrace=False)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The image test's base image takes minutes of downloads: start it now, in the background, when it will run."""
    if any(
        item.path.name == "test_docker_image.py" and item.name.startswith("test_the_image") for item in session.items
    ):
        debootstrap_base.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    debootstrap_base.stop()
