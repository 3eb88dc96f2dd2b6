"""The result table (one row per figure: baseline, proxy, ratio, target, verdict) and the machine description."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Context:
    """What a section gets: run size and a scratch directory of its own."""

    quick: bool
    workdir: Path


@dataclass
class Row:
    """One line of the table. `baseline` is the direct path unless the metric says otherwise."""

    section: str
    metric: str
    baseline: str
    proxy: str
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None  # None: informational, no target

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("pass" if self.ok else "MISS")


@dataclass
class SectionResult:
    raw: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def at_most(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit


def at_least(value: float | None, limit: float) -> bool:
    return value is not None and value >= limit


HEADERS = ("section", "metric", "baseline", "proxy", "ratio", "target", "result")


def render(rows: list[Row]) -> str:
    """A plain-text table with aligned columns."""
    cells = [HEADERS] + [
        (r.section, r.metric, r.baseline, r.proxy, "-" if r.ratio is None else f"{r.ratio:.2f}", r.target, r.verdict)
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown(rows: list[Row]) -> str:
    """The same table for docs/benchmarks.md."""
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        out.append(f"| {r.section} | {r.metric} | {r.baseline} | {r.proxy} | {ratio} | {r.target} | {r.verdict} |")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    mem_kb = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "loadavg_start": os.getloadavg(),
    }


def rows_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [{**asdict(r), "verdict": r.verdict} for r in rows]
