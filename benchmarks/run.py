"""Run the benchmark sections, print one table (baseline, proxy, ratio, target, verdict) and write JSON.

    .venv/bin/python -m benchmarks [--quick] [--json benchmarks/results.json] [--only NAME ...] [--keep]

Sections: sequential, throughput, stdio_throughput, large, setup, memory, warm_pool, scale, replicas, storm. A section
that fails is reported as a MISS row with its error and the others still run. Ratios (proxy / direct, same run)
are the figures that count; absolute times drift with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from . import large, memory, replicas, scale, sequential, setup_time, stdio_throughput, storm, throughput, warm_pool
from .common import describe
from .report import Context, Row, SectionResult, machine, markdown, render, rows_json

Section = Callable[[Context], Awaitable[SectionResult]]
SECTIONS: dict[str, Section] = {
    "sequential": sequential.run,
    "throughput": throughput.run,
    "stdio_throughput": stdio_throughput.run,
    "large": large.run,
    "setup": setup_time.run,
    "memory": memory.run,
    "warm_pool": warm_pool.run,
    "scale": scale.run,
    "replicas": replicas.run,
    "storm": storm.run,
}
SECTION_BUDGET = 900.0
BUDGETS = {"storm": storm.SECTION_BUDGET}  # 4,096 arrivals on 2 cores take several minutes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer calls and shorter windows (about 2 minutes)")
    p.add_argument("--json", type=Path, default=None, help="write raw results, rows and machine info here")
    p.add_argument("--only", nargs="+", choices=sorted(SECTIONS), metavar="NAME", help="run only these sections")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (process logs) and print it")
    return p


async def _run_section(name: str, ctx: Context) -> tuple[dict[str, Any], list[Row]]:
    start = time.perf_counter()
    print(f"[{name}] running ...", file=sys.stderr, flush=True)
    try:
        with anyio.fail_after(BUDGETS.get(name, SECTION_BUDGET)):
            result = await SECTIONS[name](ctx)
        raw, rows = result.raw, result.rows
    except Exception as exc:  # one broken section must not hide the others' figures
        detail = describe(exc)
        print(f"[{name}] FAILED: {detail}", file=sys.stderr, flush=True)
        traceback.print_exception(exc, file=sys.stderr)
        raw, rows = {"error": detail}, [Row(name, "section failed", "-", detail[:80].replace("\n", " "), ok=False)]
    raw["seconds"] = round(time.perf_counter() - start, 1)
    print(f"[{name}] done in {raw['seconds']} s", file=sys.stderr, flush=True)
    return raw, rows


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "quick": args.quick, "sections": {}, "rows": []}
    rows: list[Row] = []
    start = time.perf_counter()
    for name in args.only or list(SECTIONS):
        section_dir = workdir / name
        section_dir.mkdir()
        raw, section_rows = await _run_section(name, Context(quick=args.quick, workdir=section_dir))
        report["sections"][name] = raw
        rows += section_rows
        report["rows"] = rows_json(rows)
        if args.json is not None:  # after every section: a later failure keeps the earlier figures
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["rows"] = rows_json(rows)
    print(render(rows))
    if args.markdown:
        print("\n" + markdown(rows))
    print(f"\n{report['seconds']} s; load average at start {report['machine']['loadavg_start']}, end {os.getloadavg()}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fmp-bench-"))
    try:
        report = anyio.run(run, args, workdir)
    finally:
        if args.keep:
            print(f"process logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.json}", file=sys.stderr)
    return 0 if all(r["ok"] is not False for r in report["rows"]) else 1
