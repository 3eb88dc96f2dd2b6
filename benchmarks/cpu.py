"""CPU time of processes (user + sys, from /proc on Linux) and what it costs per 1,000 calls.

A PostgreSQL server is a tree: the postmaster forks one backend per connection plus its helpers, so its CPU is
the postmaster's own, what it has reaped from exited children, and every live child's.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(text: str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3, `state`, comes first).

    The name sits in parentheses and may itself hold spaces or parentheses: split after the last ')'.
    """
    return text[text.rindex(")") + 2 :].split()


def parse_cpu(text: str, reaped: bool = False) -> tuple[int, float]:
    """(parent pid, user + sys seconds) of one /proc/PID/stat line; `reaped` adds its waited-for children's."""
    fields = stat_fields(text)
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14), in clock ticks.
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return int(fields[1]), ticks / TICKS


def _read(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
        return None


def cpu_seconds(pid: int) -> float:
    """User + sys seconds a live process has used (all its threads); 0.0 once it is gone."""
    text = _read(pid)
    return 0.0 if text is None else parse_cpu(text)[1]


def tree_cpu_seconds(root: int) -> float:
    """A parent's CPU with its reaped children's, plus its live children's (one level: PostgreSQL's shape)."""
    text = _read(root)
    if text is None:
        return 0.0
    total = parse_cpu(text, reaped=True)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (child := _read(int(entry.name))) is not None:
            parent, seconds = parse_cpu(child)
            if parent == root:
                total += seconds
    return total


def parse_machine(text: str) -> float:
    """Busy seconds of all cores together from /proc/stat's first line: everything but idle and iowait."""
    fields = [int(v) for v in text.splitlines()[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(fields) - fields[3] - fields[4]) / TICKS


def machine_busy_seconds() -> float:
    """What every process on the machine used (other tenants included): how busy the cores really were."""
    return parse_machine(Path("/proc/stat").read_text())


def own_cpu_seconds() -> float:
    """This process (the load generator): user + sys of every thread."""
    times = os.times()
    return times.user + times.system


def per_thousand(seconds: float, calls: int) -> float | None:
    """CPU seconds per 1,000 calls; None when nothing was called (unknown, not zero)."""
    return None if calls <= 0 else round(seconds * 1000 / calls, 3)


def deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-process CPU used between two readings of the same processes."""
    return {name: round(after[name] - before[name], 3) for name in before}
