"""The pure pieces of the benchmark's `storm` and `memory` sections: how episodes are spread over generator
processes, how their reports merge, how errors are grouped, the rows a reader sees, and the whole-system sum."""

from __future__ import annotations

from typing import Any

from benchmarks.memory import system_per_episode_kb
from benchmarks.storm import error_counts, listen_overflows, merge, rows, shares


def test_shares_spread_evenly_and_never_leave_a_generator_empty() -> None:
    assert shares(4096, 4) == [1024] * 4
    assert shares(10, 4) == [3, 3, 2, 2]
    assert shares(3, 8) == [1, 1, 1]
    assert shares(5, 0) == [5]
    assert sum(shares(4097, 3)) == 4097


def test_errors_are_grouped_by_stage_and_text_most_frequent_first() -> None:
    errors = [
        {"stage": "tools/list", "error": "timeout"},
        {"stage": "initialize", "error": "refused"},
        {"stage": "tools/list", "error": "timeout"},
        {"stage": "initialize", "error": "timeout"},
    ]
    grouped = error_counts(errors)
    assert grouped[0] == {"stage": "tools/list", "error": "timeout", "count": 2}
    assert sorted((g["stage"], g["error"], g["count"]) for g in grouped[1:]) == [
        ("initialize", "refused", 1),
        ("initialize", "timeout", 1),
    ]


def test_merge_joins_every_workers_latencies_and_errors() -> None:
    reports: list[dict[str, Any]] = [
        {"latencies_ms": [1.0, 2.0], "errors": [], "seconds": 3.0, "cpu_s": 0.5},
        {"latencies_ms": [4.0], "errors": [{"stage": "tools/call", "error": "x"}], "seconds": 5.0, "cpu_s": 0.7},
    ]
    figures = merge(4, reports)
    assert figures.latencies_ms == [1.0, 2.0, 4.0] and len(figures.errors) == 1
    assert figures.worker_seconds == [3.0, 5.0] and figures.worker_cpu_s == [0.5, 0.7]


def _raw(errors: int, lane: int | None, answered: int) -> dict[str, Any]:
    first = {"n": answered, "p50": 1500.0, "p99": 2500.0} if answered else {"n": 0}
    return {
        "episodes": 8,
        "errors": errors,
        "first_echo_ms": first,
        "proxy_rss_peak_kb": 200 * 1024,
        "seconds": 3.2,
        "lane_served": lane,
    }


def test_rows_pass_only_with_no_error_and_every_echo_on_the_lane() -> None:
    storm, lane = rows(_raw(0, 8, 8))
    assert storm.ok and lane.ok
    assert "0 errors" in storm.proxy and "p50 1.5 s, p99 2.5 s" in storm.proxy and "200 MB" in storm.proxy
    assert lane.proxy == "8 of 8"
    storm, lane = rows(_raw(2, 5, 6))
    assert storm.ok is False and lane.ok is False and "2 errors" in storm.proxy


def test_rows_say_unknown_when_status_could_not_be_read_or_nothing_answered() -> None:
    storm, lane = rows(_raw(8, None, 0))
    assert lane.proxy == "-" and lane.ok is False
    assert "p50 -, p99 -" in storm.proxy and storm.ok is False


def test_whole_system_memory_adds_the_environment_behind_the_proxy() -> None:
    assert system_per_episode_kb(241.0, 147.4) == 388.4
    assert system_per_episode_kb(100.0, -3.0) == 97.0  # a backend that shrank counts as less, not as zero


def test_the_kernels_listen_queue_overflows_are_read_and_reported() -> None:
    before = listen_overflows()
    assert before is not None and before >= 0  # Linux counts them in /proc/net/netstat (TcpExt)
    storm, _ = rows({**_raw(0, 8, 8), "listen_overflows": 12})
    assert storm.proxy.endswith("; listen-queue overflows 12"), storm.proxy
    storm, _ = rows(_raw(0, 8, 8))
    assert "overflows" not in storm.proxy  # not measured: not shown
