"""The benchmark suite of issue 6: direct vs through the proxy, in one run. Run it with `python -m benchmarks`.

The suite reuses the test plumbing (tests/helpers.py, the kitchen backend, the Fleet API emulator), so the
`tests` directory goes on the import path here, once, before any section module is imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
