"""Stream health: collect the figures (I/O), then judge them against thresholds (pure).

`collect()` asks Kafka, the registry and ClickHouse and returns plain JSON-able dicts;
`evaluate()` turns figures and `Thresholds` into checks with a status ``ok`` / ``warn`` /
``fail`` and is a pure function (unit-tested in tests/ops/test_health_unit.py). ``warn`` means
"cannot judge yet" (no probe has ever arrived, no rollup has ever run); ``fail`` means
unhealthy. `casestream health` exits 1 when any check fails, the status page
(services/ops/status_page.py) shows the same report.

| check | figures | fails when |
| --- | --- | --- |
| broker, registry, clickhouse | reachability and answer time | not reachable |
| lag | committed vs high watermark per group/topic/partition | a group is more than `max_lag` messages behind, or has no live member |
| throughput | events/s produced (offsets) and processed (agency_activity) | never (figures only) |
| dlq | dead letters by reason and agency (DLQ headers) | more than `max_dlq_per_minute` over the window |
| freshness | last event / ingest per agency (agency_freshness) | an agency silent for more than `max_silence_seconds`, or an expected one never seen |
| sequence_gaps | missing sequence numbers per agency (sequence_gaps) | more than `max_sequence_gaps` missing |
| latency | probe produced → row visible in ClickHouse (probe_latency) | p99 over the window above `max_p99_latency_seconds`, or newest probe older than `max_probe_age_seconds` |
| rollups | last run per flow (rollup_runs) | newest run older than `max_rollup_age_seconds` |
| integrity | facts breaking an authority rule (integrity_violations) | more than `max_integrity_violations` listed |
| verification | last `casestream verify` per scope (chain_verifications) | the last run found tampering (warns: never run, or the last full run older than `max_verification_age_seconds`) |
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from services.ops.probe import kafka_config
from services.settings import Settings

CHECKS = (
    "broker",
    "registry",
    "clickhouse",
    "lag",
    "throughput",
    "dlq",
    "freshness",
    "sequence_gaps",
    "latency",
    "rollups",
    "retention",
    "verification",
    "integrity",
)
# The figure each check reads (reachability checks read "reachability").
FIGURE_OF = {
    "broker": "reachability",
    "registry": "reachability",
    "clickhouse": "reachability",
    **{c: c for c in CHECKS[3:]},
}
SERIES_MINUTES = 30  # per-minute series for the status page charts

OK, WARN, FAIL = "ok", "warn", "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}


@dataclass(frozen=True)
class Thresholds:
    max_lag: int = 5000
    max_silence_seconds: float = 172800.0
    expected_agencies: tuple[str, ...] = ()
    max_p99_latency_seconds: float = 30.0
    max_probe_age_seconds: float = 120.0
    max_dlq_per_minute: float = 5.0
    max_sequence_gaps: int = 0
    max_rollup_age_seconds: float = 7200.0
    window_seconds: float = 900.0
    max_verification_age_seconds: float = 604800.0
    max_integrity_violations: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            max_lag=settings.health_max_lag,
            max_silence_seconds=settings.health_max_silence_seconds,
            expected_agencies=tuple(settings.health_expected_agencies),
            max_p99_latency_seconds=settings.health_max_p99_latency_seconds,
            max_probe_age_seconds=settings.health_max_probe_age_seconds,
            max_dlq_per_minute=settings.health_max_dlq_per_minute,
            max_sequence_gaps=settings.health_max_sequence_gaps,
            max_rollup_age_seconds=settings.health_max_rollup_age_seconds,
            window_seconds=settings.health_window_seconds,
            max_verification_age_seconds=settings.health_max_verification_age_seconds,
            max_integrity_violations=settings.health_max_integrity_violations,
        )


@dataclass
class Check:
    name: str
    status: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


# =========================================================================== evaluation (pure)


def _human(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _error(name: str, figure: dict[str, Any]) -> Check | None:
    if figure is None:
        return Check(name, FAIL, "not collected")
    if figure.get("error"):
        return Check(name, FAIL, f"could not collect: {figure['error']}")
    return None


def _reachability(name: str, figures: dict[str, Any]) -> Check:
    fig = (figures.get("reachability") or {}).get(name)
    if fig is None:
        return Check(name, FAIL, "not collected")
    if not fig.get("ok"):
        return Check(name, FAIL, f"unreachable: {fig.get('error') or 'no answer'}", fig)
    extra = f", {fig['detail']}" if fig.get("detail") else ""
    return Check(name, OK, f"reachable ({fig.get('ms', 0):.0f} ms{extra})", fig)


def _lag(fig: dict[str, Any], t: Thresholds) -> Check:
    problems, parts = [], []
    for g in fig.get("groups", []):
        name = g["group"]
        if g.get("error"):
            problems.append(f"{name}: {g['error']}")
            continue
        behind = [p for p in g.get("partitions", []) if p["lag"] > 0]
        worst = sorted(behind, key=lambda p: -p["lag"])[:3]
        where = ", ".join(f"{p['topic']}[{p['partition']}]={p['lag']}" for p in worst)
        parts.append(f"{name} {g['total_lag']} behind" + (f" ({where})" if where else ""))
        if g["total_lag"] > t.max_lag:
            problems.append(
                f"{name} is {g['total_lag']} messages behind (max {t.max_lag})"
                + (f": {where}" if where else "")
            )
        if g.get("members") == 0:
            problems.append(f"{name} has no live member (worker down?)")
    if not fig.get("groups"):
        return Check("lag", FAIL, "no consumer group to check", fig)
    if problems:
        return Check("lag", FAIL, "; ".join(problems), fig)
    return Check("lag", OK, "; ".join(parts) or "no lag", fig)


def _throughput(fig: dict[str, Any], t: Thresholds) -> Check:
    window = _human(fig.get("window_seconds"))
    return Check(
        "throughput",
        OK,
        f"last {window}: {fig.get('produced', 0)} events produced "
        f"({fig.get('produced_per_second', 0):.2f}/s), {fig.get('processed', 0)} processed "
        f"({fig.get('processed_per_second', 0):.2f}/s)",
        fig,
    )


def _dlq(fig: dict[str, Any], t: Thresholds) -> Check:
    recent = fig.get("recent", {})
    rate = float(fig.get("per_minute", 0.0))
    top = ", ".join(f"{k} {v}" for k, v in list(recent.get("by_agency_reason", {}).items())[:3])
    text = (
        f"{recent.get('total', 0)} in the last {_human(fig.get('window_seconds'))} "
        f"({rate:.2f}/min), {fig.get('total', 0)} in the topic"
    )
    if top:
        text += f"; recent: {top}"
    if rate > t.max_dlq_per_minute:
        return Check("dlq", FAIL, f"{text} (max {t.max_dlq_per_minute:g}/min)", fig)
    return Check("dlq", OK, text, fig)


def _freshness(fig: dict[str, Any], t: Thresholds) -> Check:
    agencies = fig.get("agencies", [])
    seen = {a["agency_id"] for a in agencies}
    silent = [
        a
        for a in agencies
        if a.get("silence_seconds") is not None and a["silence_seconds"] > t.max_silence_seconds
    ]
    never = [a for a in t.expected_agencies if a not in seen]
    details = {**fig, "silent": [a["agency_id"] for a in silent], "never_seen": never}
    if silent or never:
        words = [
            f"{a['agency_id']} silent for {_human(a['silence_seconds'])}"
            for a in sorted(silent, key=lambda a: -a["silence_seconds"])[:5]
        ]
        if len(silent) > 5:
            words.append(f"{len(silent) - 5} more silent")
        words += [f"{a} never seen" for a in never]
        return Check(
            "freshness",
            FAIL,
            f"{'; '.join(words)} (max silence {_human(t.max_silence_seconds)})",
            details,
        )
    if not agencies:
        return Check("freshness", OK, "no agency has published yet", details)
    newest = min(a["silence_seconds"] for a in agencies if a.get("silence_seconds") is not None)
    return Check(
        "freshness",
        OK,
        f"{len(agencies)} agenc{'y' if len(agencies) == 1 else 'ies'}, all heard within "
        f"{_human(t.max_silence_seconds)} "
        f"(latest {_human(newest)} ago)",
        details,
    )


def _gaps(fig: dict[str, Any], t: Thresholds) -> Check:
    over = [g for g in fig.get("agencies", []) if g["missing"] > t.max_sequence_gaps]
    if over:
        words = ", ".join(f"{g['agency_id']} missing {g['missing']}" for g in over[:5])
        return Check("sequence_gaps", FAIL, f"{words} (max {t.max_sequence_gaps})", fig)
    total = sum(g["missing"] for g in fig.get("agencies", []))
    return Check("sequence_gaps", OK, f"{total} missing sequence numbers", fig)


def _latency(fig: dict[str, Any], t: Thresholds) -> Check:
    age = fig.get("last_probe_age_seconds")
    if age is None:
        return Check("latency", WARN, "no latency probe has reached ClickHouse yet", fig)
    p99 = fig.get("p99_seconds")
    text = (
        f"p50 {_human(fig.get('p50_seconds'))} p99 {_human(p99)} over "
        f"{fig.get('probes', 0)} probes; newest {_human(age)} ago"
    )
    problems = []
    if p99 is not None and p99 > t.max_p99_latency_seconds:
        problems.append(f"p99 above {_human(t.max_p99_latency_seconds)}")
    if age > t.max_probe_age_seconds:
        problems.append(
            f"no probe for {_human(age)} (max {_human(t.max_probe_age_seconds)}): "
            f"pipeline stuck or worker down"
        )
    if problems:
        return Check("latency", FAIL, f"{text}; {'; '.join(problems)}", fig)
    return Check("latency", OK, text, fig)


def _rollups(fig: dict[str, Any], t: Thresholds) -> Check:
    flows = fig.get("flows", [])
    if not flows:
        return Check("rollups", WARN, "no rollup has run yet", fig)
    newest = min(f["age_seconds"] for f in flows)
    text = ", ".join(f"{f['flow']} {_human(f['age_seconds'])} ago" for f in flows)
    if newest > t.max_rollup_age_seconds:
        return Check(
            "rollups",
            FAIL,
            f"newest rollup run {_human(newest)} ago (max "
            f"{_human(t.max_rollup_age_seconds)}): {text}",
            fig,
        )
    return Check("rollups", OK, text, fig)


def _retention(fig: dict[str, Any], t: Thresholds) -> Check:
    """Any topic holding the record that would delete events fails: the record must last."""
    finite = fig.get("finite", [])
    if finite:
        shown = "; ".join(finite[:3]) + (f"; and {len(finite) - 3} more" if len(finite) > 3 else "")
        return Check(
            "retention",
            FAIL,
            f"{len(finite)} of {fig.get('topics', 0)} topics holding the record delete old events "
            f"({shown}); fix: casestream topics keep-forever",
            fig,
        )
    return Check("retention", OK, f"{fig.get('topics', 0)} record topics kept forever", fig)


def _verification(fig: dict[str, Any], t: Thresholds) -> Check:
    """The hash chains: tampering found by the latest run of a scope fails until a newer clean run
    of that agency or of all agencies; a full run that is missing or too old only warns."""
    runs = fig.get("runs", [])
    if not runs:
        return Check("verification", WARN, "never verified: run casestream verify", fig)
    full = next((r for r in runs if r["scope"] == "all"), None)
    current = [
        r for r in runs if full is None or r is full or r["age_seconds"] < full["age_seconds"]
    ]
    tampered = [r for r in current if not r["intact"]]
    if tampered:
        agencies = sorted({a for r in tampered for a in r.get("tampered", [])})
        newest = min(r["age_seconds"] for r in tampered)
        return Check(
            "verification",
            FAIL,
            f"tampering found {_human(newest)} ago: {sum(r['findings'] for r in tampered)} "
            f"finding(s) in {', '.join(agencies) or 'the record'}; "
            f"casestream verify --agency {agencies[0] if agencies else '<agency>'} lists them",
            fig,
        )
    if full is None:
        return Check(
            "verification", WARN, "only single agencies verified: run casestream verify", fig
        )
    text = (
        f"last full verification {_human(full['age_seconds'])} ago: {full['agencies']} "
        f"agencies, {full['messages']:,} messages intact"
    )
    if full["age_seconds"] > t.max_verification_age_seconds:
        return Check(
            "verification",
            WARN,
            f"{text} (older than {_human(t.max_verification_age_seconds)}): run casestream verify",
            fig,
        )
    return Check("verification", OK, text, fig)


def _integrity(fig: dict[str, Any], t: Thresholds) -> Check:
    """Facts an agency had no authority to emit: each is a forgery or a broken case system, and
    the figures are right only because they are left out; someone has to look at them."""
    total = int(fig.get("violations", 0))
    if total <= t.max_integrity_violations:
        return Check("integrity", OK, f"{total} fact(s) break an authority rule", fig)
    top = ", ".join(
        f"{g['agency_id']} {g['rule']} ×{g['count']}" for g in fig.get("by_agency_rule", [])[:5]
    )
    return Check(
        "integrity",
        FAIL,
        f"{total} fact(s) break an authority rule ({fig.get('recent', 0)} first seen in the "
        f"window): {top}; they count for nothing and are listed in integrity_violations",
        fig,
    )


_EVALUATORS: dict[str, Callable[[dict[str, Any], Thresholds], Check]] = {
    "lag": _lag,
    "throughput": _throughput,
    "dlq": _dlq,
    "freshness": _freshness,
    "sequence_gaps": _gaps,
    "latency": _latency,
    "rollups": _rollups,
    "retention": _retention,
    "verification": _verification,
    "integrity": _integrity,
}


def evaluate(
    figures: dict[str, Any], thresholds: Thresholds, only: Iterable[str] | None = None
) -> list[Check]:
    """Judge collected figures; pure (no I/O, no clock)."""
    checks = []
    for name in only or CHECKS:
        if name in ("broker", "registry", "clickhouse"):
            checks.append(_reachability(name, figures))
            continue
        fig = figures.get(FIGURE_OF[name])
        failed = _error(name, fig)
        checks.append(failed or _EVALUATORS[name](fig, thresholds))
    return checks


def overall(checks: Iterable[Check]) -> str:
    return max((c.status for c in checks), key=_RANK.__getitem__, default=OK)


# =========================================================================== collection (I/O)


def _timed(fn: Callable[[], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = fn()
        return {"ok": True, "ms": (time.perf_counter() - started) * 1000, "detail": detail}
    except Exception as exc:  # noqa: BLE001 - unreachable is a figure, not a crash
        return {
            "ok": False,
            "ms": (time.perf_counter() - started) * 1000,
            "error": f"{type(exc).__name__}: {exc}"[:500],
        }


def collect_reachability(settings: Settings, timeout: float = 5.0) -> dict[str, Any]:
    import httpx
    from confluent_kafka.admin import AdminClient

    def broker() -> str:
        admin = AdminClient(
            kafka_config(
                settings,
                **{
                    "socket.connection.setup.timeout.ms": int(timeout * 1000),
                    "log_level": 0,  # the error is the figure: no librdkafka noise on stderr
                },
            )
        )
        meta = admin.list_topics(timeout=timeout)
        return f"{len(meta.brokers)} broker(s), {len(meta.topics)} topics"

    def registry() -> str:
        response = httpx.get(f"{settings.registry_url.rstrip('/')}/subjects", timeout=timeout)
        response.raise_for_status()
        return f"{len(response.json())} subjects"

    def clickhouse() -> str:
        client = settings.clickhouse_client(connect_timeout=timeout, send_receive_timeout=timeout)
        return f"version {client.command('SELECT version()')}"

    return {
        "broker": _timed(broker),
        "registry": _timed(registry),
        "clickhouse": _timed(clickhouse),
    }


def _agency_topics(settings: Settings, timeout: float = 10.0) -> list[str]:
    from services.ops.consumer_lag import matching_topics
    from services.ops.topics import AGENCY_TOPIC_PATTERN

    return matching_topics(settings, AGENCY_TOPIC_PATTERN)


def collect_lag(settings: Settings, groups: Iterable[str] | None = None) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient

    from services.ops.consumer_lag import worker_lag

    groups = list(groups or [settings.worker_app_id])
    admin = AdminClient(kafka_config(settings))
    states: dict[str, tuple[str, int]] = {}
    try:
        described = admin.describe_consumer_groups(groups, request_timeout=10)
        for group, future in described.items():
            desc = future.result()
            states[group] = (str(getattr(desc.state, "name", desc.state)), len(desc.members))
    except Exception:  # noqa: BLE001 - state is extra information; lag is what counts
        pass
    out = []
    for group in groups:
        try:
            lags = worker_lag(settings, group, probes=True)  # both of the worker's groups
        except Exception as exc:  # noqa: BLE001
            out.append({"group": group, "error": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        state, members = states.get(group, ("unknown", None))
        out.append(
            {
                "group": group,
                "state": state,
                "members": members,
                "total_lag": sum(p.lag for p in lags),
                "partitions": [
                    {
                        "topic": p.topic,
                        "partition": p.partition,
                        "committed": p.committed,
                        "high_watermark": p.high_watermark,
                        "lag": p.lag,
                    }
                    for p in lags
                ],
            }
        )
    return {"groups": out}


def _produced_since(settings: Settings, since_ms: int, topics: list[str]) -> int:
    """Messages appended to `topics` since `since_ms` (offset at that time vs high watermark)."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    if not topics:
        return 0
    meta = AdminClient(kafka_config(settings)).list_topics(timeout=10)
    tps = [
        TopicPartition(t, p, since_ms)
        for t in topics
        if t in meta.topics
        for p in meta.topics[t].partitions
    ]
    if not tps:
        return 0
    consumer = Consumer(
        kafka_config(
            settings,
            **{
                "group.id": "casestream-ops-health",
                "enable.auto.commit": False,
            },
        )
    )
    try:
        total = 0
        for tp in consumer.offsets_for_times(tps, timeout=10):
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=10
            )
            if tp.offset >= 0:
                total += high - tp.offset
        return total
    finally:
        consumer.close()


def _client(settings: Settings):
    return settings.clickhouse_client(connect_timeout=5, send_receive_timeout=30)


def _series(client, sql: str, window_minutes: int = SERIES_MINUTES) -> list[list[float]]:
    rows = client.query(sql, parameters={"m": window_minutes}).result_rows
    return [[float(ts), float(v) if v is not None else None] for ts, v in rows]


def collect_throughput(settings: Settings, window: float) -> dict[str, Any]:
    client = _client(settings)
    processed = client.command(
        "SELECT sum(events) FROM agency_activity "
        "WHERE ingested_at >= now64(3) - toIntervalMillisecond({w:UInt64})",
        parameters={"w": int(window * 1000)},
    )
    processed = int(processed or 0)
    since_ms = int((time.time() - window) * 1000)
    produced = _produced_since(settings, since_ms, _agency_topics(settings))
    series = _series(
        client,
        (
            "SELECT toUnixTimestamp(toStartOfMinute(ingested_at)) AS m, sum(events) "
            "FROM agency_activity WHERE ingested_at >= now() - toIntervalMinute({m:UInt32}) "
            "GROUP BY m ORDER BY m"
        ),
    )
    return {
        "window_seconds": window,
        "produced": produced,
        "processed": processed,
        "produced_per_second": produced / window,
        "processed_per_second": processed / window,
        "series": series,
    }


def collect_dlq(settings: Settings, window: float, limit: int = 100_000) -> dict[str, Any]:
    from services.ops import dlq

    entries = dlq.read_entries(settings, limit=limit)
    marks = dlq.watermarks(settings)
    now_ms = int(time.time() * 1000)
    since = now_ms - int(window * 1000)
    recent = dlq.counts(entries, since_ms=since)
    per_minute: dict[int, int] = {}
    for e in entries:
        if e.at_ms >= now_ms - SERIES_MINUTES * 60_000:
            minute = e.at_ms // 60_000 * 60
            per_minute[minute] = per_minute.get(minute, 0) + 1
    return {
        "window_seconds": window,
        "total": sum(high - low for low, high in marks.values()),
        "scanned": len(entries),
        **{k: v for k, v in dlq.counts(entries).items() if k != "total"},
        "recent": recent,
        "per_minute": recent["total"] / (window / 60),
        "latest": [e.summary() for e in entries[-10:]][::-1],
        "series": [[float(m), float(c)] for m, c in sorted(per_minute.items())],
    }


def collect_freshness(settings: Settings) -> dict[str, Any]:
    client = _client(settings)
    rows = client.query(
        "SELECT agency_id, toUnixTimestamp64Milli(last_event_at), "
        "toUnixTimestamp64Milli(last_ingested_at), events_ingested, "
        "dateDiff('millisecond', last_ingested_at, now64(3)) / 1000.0 "
        "FROM agency_freshness ORDER BY agency_id"
    ).result_rows
    return {
        "agencies": [
            {
                "agency_id": a,
                "last_event_at": ev / 1000,
                "last_ingested_at": ing / 1000,
                "events_ingested": int(n),
                "silence_seconds": max(float(s), 0.0),
            }
            for a, ev, ing, n, s in rows
        ]
    }


def collect_sequence_gaps(settings: Settings) -> dict[str, Any]:
    rows = (
        _client(settings)
        .query(
            "SELECT agency_id, first_sequence, last_sequence, missing FROM sequence_gaps "
            "ORDER BY missing DESC, agency_id"
        )
        .result_rows
    )
    return {
        "agencies": [
            {"agency_id": a, "first_sequence": int(f), "last_sequence": int(la), "missing": int(m)}
            for a, f, la, m in rows
        ]
    }


def collect_latency(settings: Settings, window: float) -> dict[str, Any]:
    client = _client(settings)
    count, p50, p99, worst = client.query(
        "SELECT count(), quantileExact(0.5)(latency_seconds), quantileExact(0.99)(latency_seconds), "
        "max(latency_seconds) FROM probe_latency "
        "WHERE visible_at >= now64(3) - toIntervalMillisecond({w:UInt64})",
        parameters={"w": int(window * 1000)},
    ).result_rows[0]
    newest = client.query(
        "SELECT count(), dateDiff('millisecond', max(visible_at), now64(3)) / 1000.0 FROM probes"
    ).result_rows[0]
    series = _series(
        client,
        (
            "SELECT toUnixTimestamp(toStartOfMinute(visible_at)) AS m, "
            "quantileExact(0.99)(latency_seconds) FROM probe_latency "
            "WHERE visible_at >= now() - toIntervalMinute({m:UInt32}) GROUP BY m ORDER BY m"
        ),
    )
    count = int(count)
    return {
        "window_seconds": window,
        "probes": count,
        "p50_seconds": float(p50) if count else None,
        "p99_seconds": float(p99) if count else None,
        "max_seconds": float(worst) if count else None,
        "last_probe_age_seconds": max(float(newest[1]), 0.0) if newest[0] else None,
        "series": series,
    }


def collect_retention(settings: Settings) -> dict[str, Any]:
    from services.ops.topics import record_retention

    found = record_retention(settings, timeout=10)
    return {"topics": len(found), "finite": [r.describe() for r in found if r.finite]}


def collect_rollups(settings: Settings) -> dict[str, Any]:
    rows = (
        _client(settings)
        .query(
            "SELECT flow, toUnixTimestamp64Milli(max(finished_at)), "
            "argMax(rows_written, finished_at), argMax(period_kind, finished_at), "
            "dateDiff('millisecond', max(finished_at), now64(3)) / 1000.0 "
            "FROM rollup_runs GROUP BY flow ORDER BY flow"
        )
        .result_rows
    )
    return {
        "flows": [
            {
                "flow": f,
                "finished_at": at / 1000,
                "rows_written": int(n),
                "period_kind": k,
                "age_seconds": max(float(age), 0.0),
            }
            for f, at, n, k, age in rows
        ]
    }


def collect_verification(settings: Settings) -> dict[str, Any]:
    """The latest `casestream verify` run of each scope (all, or one agency)."""
    rows = (
        _client(settings)
        .query(
            "SELECT scope, toUnixTimestamp64Milli(max(finished_at)), argMax(intact, finished_at), "
            "argMax(findings, finished_at), argMax(tampered, finished_at), "
            "argMax(agencies, finished_at), argMax(messages, finished_at), "
            "dateDiff('millisecond', max(finished_at), now64(3)) / 1000.0 "
            "FROM chain_verifications GROUP BY scope ORDER BY scope"
        )
        .result_rows
    )
    return {
        "runs": [
            {
                "scope": scope,
                "finished_at": at / 1000,
                "intact": bool(intact),
                "findings": int(findings),
                "tampered": list(tampered),
                "agencies": int(agencies),
                "messages": int(messages),
                "age_seconds": max(float(age), 0.0),
            }
            for scope, at, intact, findings, tampered, agencies, messages, age in rows
        ]
    }


def collect_integrity(settings: Settings, window: float) -> dict[str, Any]:
    """Violations of the authority rules, by agency and rule, and how many are new."""
    rows = (
        _client(settings)
        .query(
            "SELECT agency_id, rule, count(), "
            "countIf(first_seen > now64(3) - toIntervalMillisecond({w:UInt64})) "
            "FROM integrity_violations GROUP BY agency_id, rule ORDER BY count() DESC, agency_id",
            parameters={"w": int(window * 1000)},
        )
        .result_rows
    )
    return {
        "violations": sum(int(r[2]) for r in rows),
        "recent": sum(int(r[3]) for r in rows),
        "by_agency_rule": [
            {"agency_id": a, "rule": rule, "count": int(n)} for a, rule, n, _ in rows
        ],
    }


# Which service each figure is read from (reachability is collected first when needed).
NEEDS = {
    "retention": ("broker",),
    "lag": ("broker",),
    "dlq": ("broker",),
    "throughput": ("broker", "clickhouse"),
    "freshness": ("clickhouse",),
    "sequence_gaps": ("clickhouse",),
    "latency": ("clickhouse",),
    "rollups": ("clickhouse",),
    "verification": ("clickhouse",),
    "integrity": ("clickhouse",),
}


def _unreachable_dependency(name: str, reachability: dict[str, Any] | None) -> str | None:
    if not reachability:
        return None
    for service in NEEDS.get(name, ()):
        if service in reachability and not reachability[service].get("ok"):
            return service
    return None


def collect(
    settings: Settings,
    *,
    only: Iterable[str] | None = None,
    groups: Iterable[str] | None = None,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """Every figure the selected checks need; a figure that cannot be had holds ``error``."""
    t = thresholds or Thresholds.from_settings(settings)
    needed = {FIGURE_OF[c] for c in (only or CHECKS)}
    collectors: dict[str, Callable[[], dict[str, Any]]] = {
        "reachability": lambda: collect_reachability(settings),
        "lag": lambda: collect_lag(settings, groups),
        "throughput": lambda: collect_throughput(settings, t.window_seconds),
        "dlq": lambda: collect_dlq(settings, t.window_seconds),
        "freshness": lambda: collect_freshness(settings),
        "sequence_gaps": lambda: collect_sequence_gaps(settings),
        "latency": lambda: collect_latency(settings, t.window_seconds),
        "rollups": lambda: collect_rollups(settings),
        "retention": lambda: collect_retention(settings),
        "verification": lambda: collect_verification(settings),
        "integrity": lambda: collect_integrity(settings, t.window_seconds),
    }
    figures: dict[str, Any] = {"collected_at": time.time()}
    for name, fn in collectors.items():
        if name not in needed:
            continue
        down = _unreachable_dependency(name, figures.get("reachability"))
        if down:  # do not wait for the same timeout again, once per figure
            figures[name] = {"error": f"{down} unreachable"}
            continue
        try:
            figures[name] = fn()
        except Exception as exc:  # noqa: BLE001 - e.g. ClickHouse down: the check fails
            figures[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return figures


def report(
    settings: Settings, *, only: Iterable[str] | None = None, groups: Iterable[str] | None = None
) -> dict[str, Any]:
    """Figures, checks and overall status as one JSON-able dict (CLI --json, status page)."""
    thresholds = Thresholds.from_settings(settings)
    only = list(only) if only else None
    figures = collect(settings, only=only, groups=groups, thresholds=thresholds)
    checks = evaluate(figures, thresholds, only)
    return {
        "status": overall(checks),
        "checked_at": figures["collected_at"],
        "checks": [{k: v for k, v in asdict(c).items() if k != "details"} for c in checks],
        "figures": figures,
        "thresholds": asdict(thresholds),
    }


_MARK = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL"}


def format_text(rep: dict[str, Any], verbose: bool = False) -> str:
    """The human form of a report: one line per check, figures below with --verbose."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rep["checked_at"]))
    lines = [f"casestream health at {when}: {rep['status'].upper()}"]
    for c in rep["checks"]:
        lines.append(f"  {_MARK[c['status']]}  {c['name']:<14} {c['summary']}")
    if verbose:
        figs = rep["figures"]
        for g in (figs.get("lag") or {}).get("groups", []):
            lines.append(
                f"\n  lag of group {g['group']} (state {g.get('state')}, "
                f"{g.get('members')} members):"
            )
            behind = [p for p in g.get("partitions", []) if p["lag"]]
            for p in behind:
                lines.append(
                    f"    {p['topic']:<40} [{p['partition']}] committed "
                    f"{p['committed']:>8} high {p['high_watermark']:>8} "
                    f"lag {p['lag']:>6}"
                )
            caught_up = len(g.get("partitions", [])) - len(behind)
            lines.append(f"    {caught_up} other partitions caught up")
        dlq = figs.get("dlq") or {}
        if dlq.get("by_agency_reason"):
            lines.append("\n  dead letters by agency/reason:")
            lines += [f"    {k:<40} {v}" for k, v in dlq["by_agency_reason"].items()]
        fresh = figs.get("freshness") or {}
        if fresh.get("agencies"):
            lines.append("\n  agency freshness (silence = time since last ingest):")
            for a in fresh["agencies"]:
                lines.append(
                    f"    {a['agency_id']:<14} silence {_human(a['silence_seconds']):>7}"
                    f"  events {a['events_ingested']}"
                )
    return "\n".join(lines)
