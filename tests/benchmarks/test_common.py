"""The benchmark arithmetic that every reported figure goes through."""

from __future__ import annotations

import pytest

from benchmarks import SCENARIOS
from benchmarks.common import (
    Result,
    Sizes,
    machine_cpu,
    percentile,
    process_cpu_seconds,
    results_table,
    steady_rate,
    summarize_profile,
)
from benchmarks.latency import _schedule
from benchmarks.process import median_index
from benchmarks.query import replicate_sql

pytestmark = pytest.mark.unit


def test_the_process_row_is_the_run_of_median_ratio_the_lower_of_two_middles():
    assert median_index([0.44, 0.52, 0.47]) == 2
    assert median_index([0.50, 0.40]) == 1  # two runs: the worse one, never the better half
    assert median_index([0.48, 0.46, 0.49, 0.47]) == 3
    assert median_index([0.45]) == 0


def test_percentile_interpolates_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0


def test_steady_rate_leaves_out_the_first_write():
    # Three writes over 2 s; the first write's 100 rows were processed before the clock starts.
    rate, span = steady_rate([(10.0, 100), (11.0, 50), (12.0, 150)])
    assert span == 2.0 and rate == 100.0
    assert steady_rate([(10.0, 100)]) == (None, 0.0)


def test_the_latency_schedule_sends_the_rate_and_no_more():
    ticks = list(_schedule(total=1000, rate=1000))
    assert ticks[0] == (0.01, 10)
    assert ticks[-1][1] == 1000
    assert ticks[-1][0] == pytest.approx(1.0)
    dues = [due for _, due in ticks]
    assert dues == sorted(dues)


def test_results_table_escapes_pipes_and_shows_misses():
    row = Result(
        scenario="process (worker)",
        result="3,000 events/s",
        baseline="bare decode 50,000 events/s",
        ratio=0.06,
        ratio_label="of ceiling",
        target=">= 50% of ceiling",
        met=False,
        numbers={"messages": 200_000, "seconds": 61.8},
        memory={"worker": 439.4},
        notes="a|b",
        command="casestream bench --scenario process",
    )
    table = results_table([row])
    lines = table.splitlines()
    assert lines[0].startswith("| scenario | result | baseline (same run) | ratio |")
    assert "| 0.06 of ceiling |" in lines[2] and "| MISSED |" in lines[2]
    assert "worker 439 MB" in lines[2] and "messages=200,000" in lines[2]
    assert "a\\|b" in lines[2]  # a pipe in a cell must not split the row
    assert lines[2].count(" | ") == len(lines[0].split(" | ")) - 1


def test_profile_summary_counts_self_and_inclusive_time(tmp_path):
    raw = tmp_path / "worker.raw"
    raw.write_text(
        "worker_run (w.py:1);decode (/work/main/services/contracts/codec.py:10) 3\n"
        "worker_run (w.py:1);select (lib/python3.11/selectors.py:5) 1\n"
        "garbage line\n"
    )
    profile = summarize_profile(raw)
    assert profile.samples == 4
    assert profile.self_top[0] == ("decode (services/contracts/codec.py)", 75.0)
    assert dict(profile.by_area)["Avro decode/encode (codec + fastavro)"] == 75.0
    assert dict(profile.inclusive_top)["worker_run (w.py)"] == 100.0


def test_replicated_copies_get_ids_of_their_own():
    sql = replicate_sql("cases_state", "src", 3)
    assert "numbers(3)" in sql and "FINAL" in sql
    assert "concat(s.case_id, '~', toString(r.number)) AS case_id" in sql


def test_every_scenario_can_be_chosen_on_the_command_line():
    from services.ops.bench_command import CHOICES

    assert CHOICES[-1] == "all" and CHOICES[:-1] == SCENARIOS


def test_quick_restart_state_is_at_least_100k_facts():
    assert min(Sizes.quick().restart_facts) >= 100_000
    assert list(Sizes().restart_facts) == sorted(Sizes().restart_facts)  # grown, never shrunk


def test_cpu_counters_count_this_process_and_the_machine():
    import os

    before, (busy0, total0) = process_cpu_seconds(os.getpid()), machine_cpu()
    deadline = process_cpu_seconds(os.getpid()) + 0.2
    while process_cpu_seconds(os.getpid()) < deadline:  # burn 0.2 s of CPU
        pass
    after, (busy1, total1) = process_cpu_seconds(os.getpid()), machine_cpu()
    assert after - before >= 0.2 - 1e-9  # tick-rounded seconds
    assert 0 < busy1 - busy0 <= total1 - total0 + 1e-6  # equal on a saturated machine
    assert process_cpu_seconds(2**22 + 1) is None  # no such process


def test_changelog_records_read_sums_each_recovery_from_faust_tables():
    from benchmarks.restart import changelog_records_read

    log = """[t] [1] [INFO] [^---Recovery]: Highwater for active changelog partitions:
+Highwater - Active-----+-----------+-----------+
| topic                | partition | highwater |
+----------------------+-----------+-----------+
| app-case-changelog   | 0         | 99        |
| 〃                   | 1         | 500       |
| 〃                   | 2         | -1        |
+----------------------+-----------+-----------+
[t] [1] [INFO] [^---Recovery]: active offsets at start of reading:
| topic                | partition | offset |
| app-case-changelog   | 0         | 89     |
| 〃                   | 1         | -1     |
| 〃                   | 2         | -1     |
[t] [1] [INFO] [^---Recovery]: standby offsets at start of reading:
| app-case-changelog   | 3         | 7      |
[t] [1] [INFO] [^---Recovery]: Highwater for active changelog partitions:
| app-case-changelog   | 3         | 9      |
[t] [1] [INFO] [^---Recovery]: active offsets at start of reading:
| app-case-changelog   | 3         | 7      |
[t] [1] [INFO] [^Worker]: Ready
"""
    # 10 (tail of partition 0) + 501 (partition 1 from the start) + 0 + 2 (second recovery)
    assert changelog_records_read(log) == 513


def test_faust_span_reads_the_log_timestamps():
    from benchmarks.restart import faust_span

    log = (
        "[2026-12-04 11:25:15,754] [6019] [INFO] [^Worker]: Starting... \n"
        "[2026-12-04 11:25:20,444] [6019] [INFO] [^Worker]: Ready \n"
    )
    assert faust_span(log) == 4.7
    assert faust_span(log.splitlines()[0]) is None  # never ready
