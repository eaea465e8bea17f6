"""A generated history through the real stack matches figures computed here from the file.

The expected values are computed in this test with plain Python, independently of the worker's
pairing code: if the worker and this test disagree, one of them misreads the contract.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, datetime

import pytest

from services.agency.generator import GeneratorOptions, write_jsonl
from services.agency.publisher import Publisher
from services.ops.consumer_lag import wait_caught_up
from tests.helpers import new_tag, retag, wait_for

pytestmark = pytest.mark.integration


def _ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso).timestamp() * 1000)


@pytest.fixture(scope="module")
def history(stack, worker, tmp_path_factory):
    path = tmp_path_factory.mktemp("history") / "history.jsonl"
    summary = write_jsonl(
        GeneratorOptions(
            seed=11,
            start=date(2021, 1, 1),
            end=date(2023, 12, 31),
            events=4000,
            provinces=("01", "20", "34", "79"),
            duplicates=0.02,
            out_of_order=0.05,
        ),
        path,
    )
    assert summary.duplicates > 0 and summary.out_of_order > 0
    tag = new_tag()
    lines = [retag(json.loads(line), tag) for line in path.read_text().splitlines()]
    with Publisher(None, stack) as operator:
        for start in range(0, len(lines), 1000):
            operator.publish_many(lines[start : start + 1000])
    unique = {e["event_id"]: e for e in lines}
    ch = stack.clickhouse_client()
    wait_caught_up(stack, timeout=300)
    wait_for(
        lambda: (
            ch.command(
                "SELECT count() FROM events FINAL WHERE case_id LIKE {p:String}",
                parameters={"p": f"{tag}:%"},
            )
            == len(unique)
        ),
        timeout=120,
        what="every unique event in ClickHouse",
    )
    return tag, list(unique.values())


def _expected_transfers(events: list[dict]) -> dict[str, tuple[str, float | None]]:
    sent: dict[str, int] = {}
    received: dict[str, int] = {}
    returned: dict[str, int] = {}
    for e in events:
        p, t = e["payload"], _ms(e["occurred_at"])
        if e["event_type"] == "case_transferred":
            sent[p["transfer_id"]] = min(t, sent.get(p["transfer_id"], t))
        elif e["event_type"] == "transfer_received":
            received[p["transfer_id"]] = min(t, received.get(p["transfer_id"], t))
        elif e["event_type"] == "transfer_returned":
            returned[p["transfer_id"]] = min(t, returned.get(p["transfer_id"], t))
    expected = {}
    for tid, t_sent in sent.items():
        t_recv, t_ret = received.get(tid), returned.get(tid)
        if t_ret is not None and (t_recv is None or t_ret >= t_recv):
            expected[tid] = ("returned", None if t_recv is None else (t_recv - t_sent) / 3.6e6)
        elif t_recv is not None:
            expected[tid] = ("received", (t_recv - t_sent) / 3.6e6)
        else:
            expected[tid] = ("pending", None)
    return expected


def test_transfer_lags_match_the_file(history, ch):
    tag, events = history
    expected = _expected_transfers(events)
    rows = ch.query(
        "SELECT transfer_id, status, lag_hours FROM transfers WHERE case_id LIKE {p:String}",
        parameters={"p": f"{tag}:%"},
    ).result_rows
    got = {tid: (status, lag) for tid, status, lag in rows}
    assert set(got) == set(expected)
    for tid, (status, lag) in expected.items():
        assert got[tid][0] == status, tid
        assert got[tid][1] == pytest.approx(lag), tid
    assert sum(1 for s, _ in expected.values() if s == "received") > 50


def test_event_and_case_counts_match_the_file(history, ch):
    tag, events = history
    by_type = Counter(e["event_type"] for e in events)
    rows = ch.query(
        "SELECT event_type, count() FROM events FINAL WHERE case_id LIKE {p:String} "
        "GROUP BY event_type",
        parameters={"p": f"{tag}:%"},
    ).result_rows
    assert dict(rows) == dict(by_type)

    last_status: dict[str, tuple[int, str, str]] = {}
    for e in events:
        if e["event_type"] in ("case_resolved", "case_reopened"):
            key = (_ms(e["occurred_at"]), e["event_id"], e["event_type"])
            last_status[e["case_id"]] = max(last_status.get(e["case_id"], key), key)
    resolved = sum(1 for *_, kind in last_status.values() if kind == "case_resolved")
    cases = {e["case_id"] for e in events}
    got = ch.query(
        "SELECT count(), countIf(status = 'resolved') FROM cases WHERE case_id LIKE {p:String}",
        parameters={"p": f"{tag}:%"},
    ).result_rows
    assert got == [(len(cases), resolved)]


def test_appraisal_lags_match_the_file(history, ch):
    tag, events = history
    requested, completed = {}, {}
    for e in events:
        if e["event_type"] == "appraisal_requested":
            requested[e["payload"]["appraisal_id"]] = _ms(e["occurred_at"])
        elif e["event_type"] == "appraisal_completed":
            completed[e["payload"]["appraisal_id"]] = _ms(e["occurred_at"])
    rows = ch.query(
        "SELECT appraisal_id, lag_hours FROM appraisals WHERE case_id LIKE "
        "{p:String} AND status = 'completed'",
        parameters={"p": f"{tag}:%"},
    )
    got = dict(rows.result_rows)
    expected = {a: (completed[a] - requested[a]) / 3.6e6 for a in completed if a in requested}
    assert got == pytest.approx(expected)
    assert expected, "the generated history should contain completed appraisals"
