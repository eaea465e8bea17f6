"""Stream health without servers: threshold evaluation, probes, DLQ planning, metrics, page."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from services.ops import dlq, probe
from services.ops.health import (
    CHECKS,
    FAIL,
    OK,
    WARN,
    Thresholds,
    evaluate,
    format_text,
    overall,
)
from services.ops.metrics import WorkerMetrics, parse_addr
from services.ops.status_page import StatusCollector, make_server, render_page, sample
from services.processor.facts import Fact
from services.processor.ingest import Rejected
from services.settings import Settings

pytestmark = pytest.mark.unit

T = Thresholds(
    max_lag=100,
    max_silence_seconds=3600,
    expected_agencies=(),
    max_p99_latency_seconds=10,
    max_probe_age_seconds=60,
    max_dlq_per_minute=2,
    max_sequence_gaps=0,
    max_rollup_age_seconds=7200,
    window_seconds=600,
)


def reach(ok: bool = True) -> dict:
    return {
        n: (
            {"ok": True, "ms": 3.0, "detail": "x"}
            if ok
            else {"ok": False, "ms": 5000.0, "error": "timed out"}
        )
        for n in ("broker", "registry", "clickhouse")
    }


def healthy_figures() -> dict:
    return {
        "collected_at": 1_700_000_000.0,
        "reachability": reach(),
        "lag": {
            "groups": [
                {
                    "group": "w",
                    "state": "STABLE",
                    "members": 1,
                    "total_lag": 3,
                    "partitions": [
                        {
                            "topic": "agency.20-INSP.events",
                            "partition": 0,
                            "committed": 10,
                            "high_watermark": 13,
                            "lag": 3,
                        },
                        {
                            "topic": "casestream-worker-facts-by-case",
                            "partition": 1,
                            "committed": 5,
                            "high_watermark": 5,
                            "lag": 0,
                        },
                    ],
                }
            ]
        },
        "throughput": {
            "window_seconds": 600,
            "produced": 60,
            "processed": 60,
            "produced_per_second": 0.1,
            "processed_per_second": 0.1,
            "series": [],
        },
        "dlq": {
            "window_seconds": 600,
            "total": 4,
            "scanned": 4,
            "by_reason": {"invalid_event": 4},
            "by_agency": {"20-INSP": 4},
            "by_agency_reason": {"20-INSP/invalid_event": 4},
            "recent": {
                "total": 1,
                "by_reason": {"invalid_event": 1},
                "by_agency": {"20-INSP": 1},
                "by_agency_reason": {"20-INSP/invalid_event": 1},
            },
            "per_minute": 0.1,
            "latest": [],
            "series": [],
        },
        "freshness": {
            "agencies": [
                {
                    "agency_id": "20-INSP",
                    "last_event_at": 1.0,
                    "last_ingested_at": 2.0,
                    "events_ingested": 9,
                    "silence_seconds": 30.0,
                },
                {
                    "agency_id": "20-POLICE",
                    "last_event_at": 1.0,
                    "last_ingested_at": 2.0,
                    "events_ingested": 2,
                    "silence_seconds": 600.0,
                },
            ]
        },
        "sequence_gaps": {"agencies": []},
        "latency": {
            "window_seconds": 600,
            "probes": 50,
            "p50_seconds": 0.8,
            "p99_seconds": 2.5,
            "max_seconds": 3.0,
            "last_probe_age_seconds": 4.0,
            "series": [],
        },
        "rollups": {
            "flows": [
                {
                    "flow": "national",
                    "finished_at": 1.0,
                    "rows_written": 3,
                    "period_kind": "month",
                    "age_seconds": 900.0,
                }
            ]
        },
        "retention": {"topics": 12, "finite": []},
        "verification": {"runs": [verification_run("all", 3600.0)]},
        "integrity": {"violations": 0, "recent": 0, "by_agency_rule": []},
    }


def verification_run(scope: str, age: float, tampered: tuple[str, ...] = ()) -> dict:
    return {
        "scope": scope,
        "finished_at": 1.0,
        "intact": not tampered,
        "findings": 2 * len(tampered),
        "tampered": list(tampered),
        "agencies": 12,
        "messages": 34000,
        "age_seconds": age,
    }


def test_verification_warns_until_a_full_run_and_fails_on_tampering_until_a_clean_rerun():
    def judge(*runs):
        figs = healthy_figures()
        figs["verification"] = {"runs": list(runs)}
        return by_name(evaluate(figs, T, ["verification"]))["verification"]

    assert judge().status == WARN and "never verified" in judge().summary
    assert "12 agencies, 34,000 messages intact" in judge(verification_run("all", 60)).summary
    old = judge(verification_run("all", 30 * 86400.0))
    assert old.status == WARN and "older than" in old.summary
    assert judge(verification_run("20-INSP", 60)).status == WARN
    bad = judge(verification_run("all", 600, ("20-INSP",)))
    assert bad.status == FAIL and "2 finding(s) in 20-INSP" in bad.summary
    assert "casestream verify --agency 20-INSP" in bad.summary
    # a newer clean run of that agency does not clear the full run's finding; a newer full one does
    assert (
        judge(verification_run("all", 600, ("20-INSP",)), verification_run("20-INSP", 60)).status
        == FAIL
    )
    assert (
        judge(verification_run("20-INSP", 600, ("20-INSP",)), verification_run("all", 60)).status
        == OK
    )
    assert (
        judge(
            verification_run("all", 600), verification_run("20-POLICE", 60, ("20-POLICE",))
        ).status
        == FAIL
    )


def by_name(checks) -> dict:
    return {c.name: c for c in checks}


def test_healthy_figures_pass_every_check():
    checks = evaluate(healthy_figures(), T)
    assert [c.name for c in checks] == list(CHECKS)
    assert {c.name: c.status for c in checks} == dict.fromkeys(CHECKS, OK)
    assert overall(checks) == OK


def test_lag_above_the_threshold_fails_and_names_the_partition():
    figs = healthy_figures()
    group = figs["lag"]["groups"][0]
    group["partitions"][0].update(committed=10, high_watermark=510, lag=500)
    group["total_lag"] = 500
    check = by_name(evaluate(figs, T))["lag"]
    assert check.status == FAIL
    assert "500 messages behind (max 100)" in check.summary
    assert "agency.20-INSP.events[0]=500" in check.summary
    group["total_lag"] = 100  # equal to the maximum is still fine
    assert by_name(evaluate(figs, T, ["lag"]))["lag"].status == OK


def test_a_group_without_live_members_fails_even_without_lag():
    figs = healthy_figures()
    figs["lag"]["groups"][0].update(members=0, state="EMPTY")
    check = by_name(evaluate(figs, T))["lag"]
    assert check.status == FAIL and "no live member" in check.summary


def test_a_silent_agency_and_an_expected_one_never_seen_are_flagged():
    figs = healthy_figures()
    figs["freshness"]["agencies"][1]["silence_seconds"] = 7200.0
    t = Thresholds(**{**T.__dict__, "expected_agencies": ("79-COURT",)})
    check = by_name(evaluate(figs, t))["freshness"]
    assert check.status == FAIL
    assert check.details["silent"] == ["20-POLICE"]
    assert check.details["never_seen"] == ["79-COURT"]
    assert "20-POLICE silent for 2.0h" in check.summary and "79-COURT never seen" in check.summary


def test_dlq_rate_sequence_gaps_latency_and_rollups_thresholds():
    figs = healthy_figures()
    figs["dlq"]["per_minute"] = 2.5
    figs["sequence_gaps"]["agencies"] = [
        {"agency_id": "20-INSP", "first_sequence": 1, "last_sequence": 10, "missing": 2}
    ]
    figs["latency"]["p99_seconds"] = 12.0
    figs["rollups"]["flows"][0]["age_seconds"] = 9000.0
    checks = by_name(evaluate(figs, T))
    assert checks["dlq"].status == FAIL and "max 2/min" in checks["dlq"].summary
    assert (
        checks["sequence_gaps"].status == FAIL
        and "20-INSP missing 2" in checks["sequence_gaps"].summary
    )
    assert checks["latency"].status == FAIL and "p99 above" in checks["latency"].summary
    assert checks["rollups"].status == FAIL
    assert overall(checks.values()) == FAIL


def test_stale_probes_fail_and_missing_data_only_warns():
    figs = healthy_figures()
    figs["latency"]["last_probe_age_seconds"] = 300.0
    assert "worker down" in by_name(evaluate(figs, T))["latency"].summary
    figs["latency"] = {
        "probes": 0,
        "p50_seconds": None,
        "p99_seconds": None,
        "last_probe_age_seconds": None,
        "series": [],
    }
    figs["rollups"] = {"flows": []}
    checks = by_name(evaluate(figs, T))
    assert checks["latency"].status == WARN and checks["rollups"].status == WARN
    assert overall(checks.values()) == WARN


def test_unreachable_services_and_collection_errors_fail():
    figs = healthy_figures()
    figs["reachability"] = reach(ok=False)
    figs["freshness"] = {"error": "ConnectionError: refused"}
    del figs["latency"]
    checks = by_name(evaluate(figs, T))
    assert checks["broker"].status == FAIL and "timed out" in checks["broker"].summary
    assert checks["freshness"].status == FAIL and "refused" in checks["freshness"].summary
    assert checks["latency"].status == FAIL and checks["latency"].summary == "not collected"


def test_only_the_selected_checks_are_evaluated():
    assert [c.name for c in evaluate({"lag": {"groups": []}}, T, ["lag"])] == ["lag"]


def test_text_report_has_one_line_per_check():
    checks = evaluate(healthy_figures(), T)
    rep = {
        "status": overall(checks),
        "checked_at": 1_700_000_000.0,
        "checks": [{"name": c.name, "status": c.status, "summary": c.summary} for c in checks],
        "figures": healthy_figures(),
    }
    text = format_text(rep, verbose=True)
    assert text.splitlines()[0].endswith(": OK")
    assert sum(1 for line in text.splitlines() if line.startswith("  ok  ")) == len(CHECKS)
    assert "agency.20-INSP.events" in text and "20-INSP/invalid_event" in text


def test_thresholds_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CASESTREAM_HEALTH_MAX_LAG", "7")
    monkeypatch.setenv("CASESTREAM_HEALTH_MAX_SILENCE_SECONDS", "60")
    monkeypatch.setenv("CASESTREAM_HEALTH_EXPECTED_AGENCIES", "20-INSP, 79-COURT")
    monkeypatch.setenv("CASESTREAM_HEALTH_MAX_DLQ_PER_MINUTE", "0.5")
    monkeypatch.setenv("CASESTREAM_WORKER_METRICS_ADDR", "off")
    t = Thresholds.from_settings(Settings.from_env())
    assert (t.max_lag, t.max_silence_seconds, t.max_dlq_per_minute) == (7, 60.0, 0.5)
    assert t.expected_agencies == ("20-INSP", "79-COURT")
    assert parse_addr(Settings.from_env().worker_metrics_addr) is None


# --------------------------------------------------------------------------- probes


def _event(key: bytes | None, value: bytes | None):
    return SimpleNamespace(message=SimpleNamespace(key=key, value=value))


def test_probe_messages_round_trip_and_never_look_like_cases():
    key, value = probe.new_probe("worker", now_ms=1_700_000_000_123)
    row = probe.probe_row(value)
    assert row == [key.decode(), "worker", datetime(2023, 11, 14, 22, 13, 20, 123000, UTC)]
    assert probe.is_probe_key(probe.facts_key(key))
    assert not probe.is_probe_key(b"20-INSP/2024/0001") and not probe.is_probe_key(None)
    assert probe.probe_row(b"not json") is None and probe.probe_row(b'{"x": 1}') is None


def test_split_probes_keeps_facts_in_order_and_drops_broken_probes():
    _k, good = probe.new_probe("cli")
    events = [
        _event(b"case-1", b"[1]"),
        _event(probe.facts_key(b"p1"), good),
        _event(probe.facts_key(b"p2"), b"garbage"),
        _event(b"case-2", b"[2]"),
    ]
    facts, probes = probe.split_probes(events)
    assert [e.message.key for e in facts] == [b"case-1", b"case-2"]
    assert len(probes) == 1 and probes[0][1] == "cli"


# --------------------------------------------------------------------------- DLQ


def entry(
    offset: int,
    source_offset: int | None,
    reason: str = "invalid_event",
    topic: str = "agency.20-INSP.events",
    at_ms: int = 1000,
) -> dlq.DlqEntry:
    headers = [
        ("reason", reason.encode()),
        ("detail", b"d"),
        ("field", b"payload.x"),
        ("source_topic", topic.encode()),
        ("source_partition", b"2"),
        ("rejected_at_ms", str(at_ms).encode()),
    ]
    if source_offset is not None:
        headers.append(("source_offset", str(source_offset).encode()))
    return dlq.DlqEntry.from_parts(0, offset, at_ms, b"k", f"raw{source_offset}".encode(), headers)


def test_dlq_entries_are_parsed_from_headers():
    e = entry(7, 41)
    assert (e.id, e.agency, e.source, e.reason, e.field) == (
        "0:7",
        "20-INSP",
        ("agency.20-INSP.events", 2, 41),
        "invalid_event",
        "payload.x",
    )
    assert entry(8, 1, topic="casestream.probe").agency == "unknown"
    assert dlq.parse_id("3:12") == (3, 12) and dlq.parse_id("12") == (0, 12)
    with pytest.raises(ValueError):
        dlq.parse_id("a:b")
    assert e.summary()["value_bytes"] == len(b"raw41")


def test_dlq_counts_and_selection():
    entries = [
        entry(0, 1, at_ms=1000),
        entry(1, 2, "bad_wire_format", at_ms=5000),
        entry(2, 3, topic="agency.79-COURT.events", at_ms=6000),
    ]
    c = dlq.counts(entries)
    assert c["total"] == 3 and c["by_reason"] == {"invalid_event": 2, "bad_wire_format": 1}
    assert c["by_agency"] == {"20-INSP": 2, "79-COURT": 1}
    assert dlq.counts(entries, since_ms=5000)["total"] == 2
    assert [e.id for e in dlq.select(entries, agency="20-INSP", reason="invalid_event")] == ["0:0"]
    assert [e.id for e in dlq.select(entries, ids=["2"])] == ["0:2"]


def _validate(valid: dict[bytes, str]):
    def validate(raw, topic):
        if raw in valid:
            return SimpleNamespace(event_id=valid[raw])
        raise Rejected("invalid_event", "still unknown agency")

    return validate


def test_replay_plan_replays_each_source_and_event_once():
    entries = [
        entry(0, 10),  # valid now → replay
        entry(1, 10),  # same source dead-lettered by a second worker → duplicate
        entry(2, 11),  # still invalid
        entry(3, 12),  # already replayed in an earlier run
        entry(4, 90),  # a dead-lettered replayed copy → never again
        entry(5, 13),  # same event_id as entry 0, published twice → skipped
        entry(6, None),  # no source coordinates
    ]
    records = dlq.ReplayRecords(
        sources={("agency.20-INSP.events", 2, 12)},
        event_ids={"e-12"},
        copies={("agency.20-INSP.events", 2, 90)},
    )
    validate = _validate({b"raw10": "e-10", b"raw12": "e-12", b"raw90": "e-90", b"raw13": "e-10"})
    actions = [(d.entry.id, d.action) for d in dlq.plan(entries, records, validate)]
    assert actions == [
        ("0:0", "replay"),
        ("0:1", "duplicate"),
        ("0:2", "still_invalid"),
        ("0:3", "already_replayed"),
        ("0:4", "replayed_copy"),
        ("0:5", "already_replayed"),
        ("0:6", "no_source"),
    ]
    forced = {d.entry.id: d.action for d in dlq.plan(entries, records, validate, force=True)}
    assert forced["0:3"] == "replay" and forced["0:4"] == "replay"


# --------------------------------------------------------------------------- metrics


def test_worker_metrics_expose_the_figures():
    sink = SimpleNamespace(rows_written=42, failures=3)
    m = WorkerMetrics(sink)
    m.accepted("20-INSP")
    m.accepted("20-INSP")
    m.rejected("agency.20-INSP.events", "invalid_event")
    m.rejected("not-a-topic", "bad_topic")
    m.batch("ingest", 3, 0.02)
    fact = Fact("e1", "case_opened", "c1", "20-INSP", 1_700_000_000_000, 420, None, {})
    late = Fact("e2", "case_opened", "c2", "20-INSP", 1_600_000_000_000, 420, None, {})
    sent = datetime.fromtimestamp(1_700_000_100, UTC)
    m.written([fact], [["p", "worker", sent]], 0.05, now=1_700_000_101.5)
    m.written([late], [], 0.01, now=1_700_000_102.0)
    text = generate_latest(m.registry).decode()
    assert 'casestream_worker_events_ingested_total{agency="20-INSP"} 2.0' in text
    assert (
        'casestream_worker_events_dead_lettered_total{agency="20-INSP",reason="invalid_event"} 1.0'
    ) in text
    assert 'agency="unknown",reason="bad_topic"' in text
    assert 'casestream_worker_batch_size_count{agent="ingest"} 1.0' in text
    assert "casestream_worker_clickhouse_rows_written_total 42.0" in text
    assert "casestream_worker_clickhouse_write_failures_total 3.0" in text
    assert 'casestream_worker_last_event_time_seconds{agency="20-INSP"} 1.7e+09' in text
    assert 'casestream_worker_last_ingested_time_seconds{agency="20-INSP"} 1.700000102e+09' in text
    assert "casestream_worker_probe_latency_seconds_count 1.0" in text
    assert "casestream_worker_probe_latency_seconds_sum 1.5" in text


def test_metrics_address_parsing():
    assert parse_addr("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_addr(":9000") == ("127.0.0.1", 9000)
    assert parse_addr("off") is None and parse_addr("") is None and parse_addr("h:0") is None


# --------------------------------------------------------------------------- status page


def test_page_embeds_the_report_safely():
    html = render_page({"report": {"status": "ok", "note": "</script><b>"}}).decode()
    assert "/*INITIAL_DATA*/null" not in html
    assert "<\\/script><b>" in html and html.count("</script>") == 1


def test_status_server_answers_with_the_collected_report():
    rep = {
        "status": "fail",
        "checked_at": 1.0,
        "checks": [],
        "figures": healthy_figures(),
        "thresholds": T.__dict__,
    }
    collector = StatusCollector(None, interval=60, report_fn=lambda: rep)  # type: ignore[arg-type]
    server, _ = make_server(None, port=0, collector=collector)  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        data = json.loads(urllib.request.urlopen(base + "/api/status", timeout=10).read())
        assert data["report"]["status"] == "fail"
        assert data["history"] == [sample(rep)] and data["history"][0]["lag"] == 3
        page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        assert "stream health" in page and '"agency.20-INSP.events"' in page
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/nope", timeout=10)
    finally:
        server.shutdown()
        server.server_close()


def test_figures_of_an_unreachable_service_are_not_waited_for_again():
    from services.ops.health import _unreachable_dependency

    down = {"broker": {"ok": False}, "registry": {"ok": True}, "clickhouse": {"ok": True}}
    assert _unreachable_dependency("lag", down) == "broker"
    assert _unreachable_dependency("throughput", down) == "broker"
    assert _unreachable_dependency("freshness", down) is None
    assert _unreachable_dependency("lag", None) is None


def test_a_record_topic_that_deletes_fails_and_names_the_fix():
    figures = healthy_figures()
    figures["retention"] = {
        "topics": 12,
        "finite": [f"agency.2{i}-INSP.events: retention.ms=604800000 (7 days)" for i in range(5)],
    }
    check = by_name(evaluate(figures, T))["retention"]
    assert check.status == FAIL
    assert check.summary.startswith("5 of 12 topics holding the record delete old events")
    assert "agency.20-INSP.events: retention.ms=604800000 (7 days)" in check.summary
    assert "and 2 more" in check.summary and "casestream topics keep-forever" in check.summary


def test_any_fact_breaking_an_authority_rule_fails_integrity_and_names_who():
    figures = healthy_figures()
    figures["integrity"] = {
        "violations": 3,
        "recent": 1,
        "by_agency_rule": [
            {"agency_id": "20-INSP", "rule": "not_a_holder", "count": 2},
            {"agency_id": "20-COURT", "rule": "transfer_not_admitted", "count": 1},
        ],
    }
    (check,) = evaluate(figures, Thresholds(), ["integrity"])
    assert check.status == "fail"
    assert check.summary.startswith("3 fact(s) break an authority rule (1 first seen")
    assert "20-INSP not_a_holder ×2, 20-COURT transfer_not_admitted ×1" in check.summary
    (check,) = evaluate(figures, Thresholds(max_integrity_violations=3), ["integrity"])
    assert check.status == "ok"
