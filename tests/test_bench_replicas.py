"""The pure pieces of the benchmark's `replicas` section (benchmarks/replicas.py, benchmarks/cpu.py): reading CPU
time from /proc, CPU per 1,000 calls, ABBA order, and the rows a reader sees."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.cpu import (
    TICKS,
    cpu_seconds,
    deltas,
    parse_cpu,
    parse_machine,
    per_thousand,
    stat_fields,
    tree_cpu_seconds,
)
from benchmarks.replicas import Tally, abba, by_part, cores_busy, rate, rows

# /proc/PID/stat of a process whose name holds a space and a parenthesis; utime 250, stime 50, cutime 100,
# cstime 20 ticks; parent 4242.
STAT = "777 (odd) name) S 4242 777 777 0 -1 4194560 1 0 0 0 250 50 100 20 20 0 1 0 100 0 0"


def test_stat_fields_start_after_the_last_parenthesis_of_the_name() -> None:
    assert stat_fields(STAT)[:2] == ["S", "4242"]


def test_parse_cpu_adds_user_and_sys_and_reaped_children_only_when_asked() -> None:
    assert parse_cpu(STAT) == (4242, 300 / TICKS)
    assert parse_cpu(STAT, reaped=True) == (4242, 420 / TICKS)


def test_parse_machine_counts_everything_but_idle_and_iowait() -> None:
    text = "cpu  100 5 40 1000 30 2 3 0 0 0\ncpu0 50 2 20 500 15 1 1 0 0 0\n"
    assert parse_machine(text) == 150 / TICKS


def test_cpu_of_this_process_matches_what_it_reports_itself() -> None:
    own = os.times()
    assert abs(cpu_seconds(os.getpid()) - (own.user + own.system)) < 0.1


def test_a_reaped_childs_cpu_counts_in_its_parents_tree() -> None:
    before = tree_cpu_seconds(os.getpid())
    burn = "import os\nwhile sum(os.times()[:2]) < 0.3: pass"
    subprocess.run([sys.executable, "-c", burn], check=True, timeout=60)
    # Compared in whole clock ticks: 103.87 - 103.57 is 0.2999... in floating point.
    assert round((tree_cpu_seconds(os.getpid()) - before) * TICKS) >= round(0.3 * TICKS)


def test_cpu_of_a_process_gone_is_zero_not_an_error() -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    gone = int(done.stdout)
    assert cpu_seconds(gone) == 0.0 and tree_cpu_seconds(gone) == 0.0


def test_per_thousand_and_unknown_when_nothing_was_called() -> None:
    assert per_thousand(1.5, 750) == 2.0
    assert per_thousand(1.5, 0) is None
    assert deltas({"a": 1.0, "b": 2.0}, {"a": 1.25, "b": 2.0, "c": 9.0}) == {"a": 0.25, "b": 0.0}


def test_abba_order_rate_and_cores() -> None:
    assert abba(3, ["a", "b"]) == ["a", "b", "b", "a", "a", "b"]
    assert rate(300, 2.0) == 150.0 and rate(5, 0.0) == 0.0
    assert cores_busy({"r1": 1.5, "pg": 0.5}, 2.0) == {"r1": 0.75, "pg": 0.25}


def test_tally_counts_only_the_replicas_a_path_reaches_as_replica_cpu() -> None:
    tally = Tally(calls=500, seconds=2.0, samples=[3.0, 1.0, 2.0], cpu={"r1": 0.5, "r2": 0.25, "haproxy": 0.1})
    figures = tally.figures(["r1"])
    assert figures["calls_per_s"] == 250.0 and figures["p50_ms"] == 2.0
    assert figures["replica_cpu_s_per_1000_calls"] == 1.0
    assert tally.figures(["r1", "r2"])["replica_cpu_s_per_1000_calls"] == 1.5
    assert figures["cpu_s_per_1000_calls"]["haproxy"] == 0.2
    assert Tally().figures(["r1"])["replica_cpu_s_per_1000_calls"] is None  # no call: unknown, not zero


def test_by_part_is_unknown_for_replicas_when_one_reading_is_missing() -> None:
    assert by_part({"r1": 1.0, "r2": 0.5, "haproxy": 0.1}, 2)["replicas"] == 1.5
    assert by_part({"r1": 1.0, "haproxy": 0.1}, 2)["replicas"] is None


def _path(calls_per_s: float, p50: float, cpu: float) -> dict[str, object]:
    busy = {"r1": 0.3, "r2": 0.2, "haproxy": 0.05, "postgres": 0.1, "backends": 0.4, "load generator": 0.5}
    return {
        "calls_per_s": calls_per_s,
        "p50_ms": p50,
        "replica_cpu_s_per_1000_calls": cpu,
        "cores_busy": {**busy, "machine": 1.9},
        "cpu_s_per_1000_calls": {k: v * 4 for k, v in busy.items()},
    }


def test_rows_put_each_comparison_in_one_line_with_its_ratio_and_no_invented_verdict() -> None:
    summary = {"p50": 100.0, "mean": 120.0}
    raw = {
        "episodes": {
            "sqlite": {**summary, "cpu": {"replica_ms": 50.0, "postgres_ms": 0.0}},
            "postgres": {"p50": 150.0, "mean": 180.0, "cpu": {"replica_ms": 50.0, "postgres_ms": 25.0}},
        },
        "hop": {"owner": {"p50": 5.0}, "forwarded": {"p50": 7.5}},
        "levels": {
            "sqlite_vs_postgres": {"sqlite": _path(200, 100, 2.0), "direct": _path(150, 120, 2.5)},
            "haproxy_1": {"direct": _path(150, 120, 2.0), "haproxy": _path(120, 150, 2.2)},
            "haproxy_2": {"direct": _path(150, 120, 2.0), "haproxy": _path(180, 100, 2.0)},
        },
    }
    table = {row.metric: row for row in rows(raw)}
    assert all(row.ok is None and row.verdict == "" for row in table.values())
    assert table["episode open + call + end, p50 (SQLite -> PostgreSQL)"].ratio == 1.5
    assert table["CPU per episode, replica (+ PostgreSQL server)"].ratio == 1.5
    assert table["echo p50, owner -> via another replica (1 hop)"].ratio == 1.5
    two = table["calls/s, 32 sessions, direct to r1 -> HAProxy + 2 replicas"]
    assert (two.baseline, two.proxy, two.ratio) == ("150/s, p50 120.00 ms", "180/s, p50 100.00 ms", 1.2)
    assert "HAProxy + 3 replicas" not in " ".join(table)  # only the levels measured
    caveat = table["cores busy, HAProxy + 2 (caveat: bounded by the 2 cores)"]
    assert caveat.baseline == f"machine 1.90 of {os.cpu_count()}"
    assert caveat.proxy.startswith("ours 1.55: replicas 0.50, HAProxy 0.05")
