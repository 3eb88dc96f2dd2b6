"""`python -m benchmarks [--quick] [--json PATH] [--only NAME ...]` from the repository root."""

from benchmarks.run import main

raise SystemExit(main())
