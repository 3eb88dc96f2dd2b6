import os
import tempfile

import pytest

# Every proxy the tests start (in-process or as a child) records episodes here, never in the user's home.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="fmp-test-state-")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
