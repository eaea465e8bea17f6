"""Data-quality checks over what agencies delivered, stored in `data_quality_checks` (0004).

`check_data_quality` runs every check, writes one row per check for the whole platform
(scope ``all``) plus one row per agency the check found something for, creates a Prefect table
artifact (key ``data-quality``) and returns a dict (see the function). A row's status is ``warn``
when its value exceeds its threshold, else ``ok``.

What each check measures, with the tables available:

* ``duplicate_deliveries`` — events delivered more than once: Σ ``agency_activity.events``
  (every event the worker consumed, duplicates included) − distinct ``event_id`` in ``events``.
  Duplicates are normal (dedup by event_id makes them harmless): warn only when they exceed
  ``duplicate_warn_ratio`` of the deliveries. ``agency_activity`` keeps 90 days (TTL): once
  older batches expire the figure is a lower bound (never below 0).
* ``sequence_gaps`` — sequence numbers never seen between an agency's smallest and largest one
  (the ``sequence_gaps`` view): events lost on the agency's side. Threshold 0.
* ``stale_transfers`` — transfers still pending (neither received nor returned) whose
  ``sent_at`` is more than ``stale_transfer_days`` before the latest event time on the platform
  (max ``occurred_at`` not in the future; event time, so a replay of history gives the same
  answer). Attributed to the sending agency. Threshold 0.
* ``orphan_receipts`` — ``transfer_received`` / ``transfer_returned`` events whose
  ``transfer_id`` has no ``case_transferred`` at all. A receipt may legitimately arrive before its
  transfer, so a fresh orphan can resolve itself; one that stays means the sender's event was
  lost or carries another id. Attributed to the receiving agency. Threshold 0.
* ``late_arrivals`` — events ingested within the last ``recent_days`` days whose event time was
  more than ``late_arrival_days`` before their first ingestion (``events.ingested_at``, migration
  0005). Late events change past periods (rollups are rebuilt by ``refresh_recent``); a bulk
  import of digitised historical records shows up here by design. Without ``events.ingested_at``
  the check falls back to ``agency_activity`` batches whose *newest* event was already older than
  ``late_arrival_days`` when ingested (a lower bound). Threshold 0.
* ``cases_without_opening`` — cases that have events but no ``case_opened`` (they count in no
  "opened" figure and no backlog). Attributed to the agency of the case's earliest event.
  Threshold 0.
* ``integrity_violations`` — facts an agency had no authority to emit (the authority rules,
  ``services/processor/authority.py``: a case opened by another agency than its id names, an
  act on a case the agency never held, a receipt of a transfer addressed to someone else…). They
  count in no figure of this report; the ``integrity_violations`` table lists each with the rule
  and why. Attributed to the emitting agency. Threshold 0.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from services.settings import Settings

CHECKS = (
    "duplicate_deliveries",
    "sequence_gaps",
    "stale_transfers",
    "orphan_receipts",
    "late_arrivals",
    "cases_without_opening",
    "integrity_violations",
)
COLUMNS = ["run_id", "checked_at", "check_name", "scope", "value", "threshold", "status", "detail"]
DETAIL_EXAMPLES = 3  # offending ids written into `detail`

# Per agency: deliveries seen by the worker vs distinct events stored.
DUPLICATES_SQL = """
SELECT a.agency_id AS agency_id, a.delivered AS delivered, u.unique_events AS unique_events
FROM (SELECT agency_id, sum(events) AS delivered FROM agency_activity GROUP BY agency_id) AS a
LEFT JOIN (SELECT agency_id, uniqExact(event_id) AS unique_events FROM events GROUP BY agency_id)
    AS u ON u.agency_id = a.agency_id
ORDER BY agency_id
"""

GAPS_SQL = """
SELECT agency_id, first_sequence, last_sequence, missing
FROM sequence_gaps WHERE missing > 0 ORDER BY agency_id
"""

# Latest event time that is not in the future: the clock of the stale-transfer check.
LATEST_EVENT_SQL = "SELECT max(occurred_at) FROM events WHERE occurred_at <= now64(3)"

STALE_SQL = """
SELECT from_agency_id AS agency_id, transfer_id, case_id, to_agency_id, sent_at,
    dateDiff('second', sent_at, toDateTime64({latest:String}, 3, 'UTC')) / 86400 AS age_days
FROM transfers
WHERE status = 'pending'
  AND sent_at < toDateTime64({latest:String}, 3, 'UTC') - toIntervalDay({days:UInt32})
ORDER BY sent_at, transfer_id
"""

ORPHANS_SQL = """
SELECT agency_id, transfer_id, case_id, event_type, occurred_at
FROM events FINAL
WHERE event_type IN ('transfer_received', 'transfer_returned')
  AND transfer_id NOT IN (SELECT transfer_id FROM events WHERE event_type = 'case_transferred')
ORDER BY occurred_at, transfer_id
"""

HAS_INGESTED_AT_SQL = """
SELECT count() FROM system.columns
WHERE database = currentDatabase() AND table = 'events' AND name = 'ingested_at'
"""

# First ingestion of each event (a duplicate delivery inserts a later copy) vs its event time.
LATE_SQL = """
SELECT agency_id, event_id, case_id, occurred_at, first_ingested_at,
    dateDiff('second', occurred_at, first_ingested_at) / 86400 AS delay_days
FROM (
    SELECT event_id, any(agency_id) AS agency_id, any(case_id) AS case_id,
        any(occurred_at) AS occurred_at, min(ingested_at) AS first_ingested_at
    FROM events GROUP BY event_id
)
WHERE first_ingested_at >= now64(3) - toIntervalDay({recent:UInt32})
  AND first_ingested_at > occurred_at + toIntervalDay({days:UInt32})
ORDER BY delay_days DESC, event_id
"""

LATE_FALLBACK_SQL = """
SELECT agency_id, sum(events) AS late_events,
    max(dateDiff('second', last_occurred_at, ingested_at)) / 86400 AS max_delay_days
FROM agency_activity
WHERE ingested_at >= now64(3) - toIntervalDay({recent:UInt32})
  AND ingested_at > last_occurred_at + toIntervalDay({days:UInt32})
GROUP BY agency_id ORDER BY agency_id
"""

NO_OPENING_SQL = """
SELECT argMin(agency_id, occurred_at) AS agency_id, case_id, min(occurred_at) AS first_event_at,
    count() AS events
FROM events FINAL
GROUP BY case_id
HAVING countIf(event_type = 'case_opened') = 0
ORDER BY first_event_at, case_id
"""


VIOLATIONS_SQL = """
SELECT agency_id, rule, event_id FROM integrity_violations ORDER BY occurred_at, event_id
"""


def _status(value: float, threshold: float) -> str:
    return "warn" if value > threshold else "ok"


class _Check:
    """Accumulates one check's per-agency values, examples and platform-wide total."""

    def __init__(self, name: str, threshold: float, max_examples: int) -> None:
        self.name = name
        self.threshold = threshold
        self.max_examples = max_examples
        self.by_scope: dict[str, float] = {}
        self.examples: list[str] = []
        self.scope_examples: dict[str, list[str]] = {}
        self.total: float = 0.0
        self.total_threshold = threshold
        self.scope_thresholds: dict[str, float] = {}  # overrides `threshold` per scope
        self.note = ""

    def threshold_for(self, scope: str) -> float:
        return self.scope_thresholds.get(scope, self.threshold)

    def add(self, scope: str, value: float, example: str | None = None) -> None:
        self.by_scope[scope] = self.by_scope.get(scope, 0.0) + value
        self.total += value
        if example is not None:
            if len(self.examples) < self.max_examples:
                self.examples.append(example)
            shown = self.scope_examples.setdefault(scope, [])
            if len(shown) < DETAIL_EXAMPLES:
                shown.append(example)

    def rows(self, run_id: str, checked_at: datetime) -> list[list[Any]]:
        head = ", ".join(self.examples[:DETAIL_EXAMPLES])
        detail = "; ".join(x for x in (self.note, f"e.g. {head}" if head else "") if x)
        rows = [
            [
                run_id,
                checked_at,
                self.name,
                "all",
                float(self.total),
                float(self.total_threshold),
                _status(self.total, self.total_threshold),
                detail,
            ]
        ]
        for scope, value in sorted(self.by_scope.items()):
            if value <= 0:
                continue
            shown = ", ".join(self.scope_examples.get(scope, []))
            threshold = self.threshold_for(scope)
            rows.append(
                [
                    run_id,
                    checked_at,
                    self.name,
                    scope,
                    float(value),
                    float(threshold),
                    _status(value, threshold),
                    f"e.g. {shown}" if shown else "",
                ]
            )
        return rows

    def summary(self) -> dict[str, Any]:
        return {
            "value": self.total,
            "threshold": self.total_threshold,
            "status": _status(self.total, self.total_threshold),
            "by_scope": {k: v for k, v in sorted(self.by_scope.items()) if v > 0},
            "examples": list(self.examples),
            "note": self.note,
        }


@task
def run_checks(
    stale_transfer_days: int,
    late_arrival_days: int,
    recent_days: int,
    duplicate_warn_ratio: float,
    max_examples: int,
) -> list[_Check]:
    client = Settings.from_env().clickhouse_client()
    checks = []

    dup = _Check("duplicate_deliveries", 0.0, max_examples)
    delivered_total = 0
    for agency_id, delivered, unique_events in client.query(DUPLICATES_SQL).result_rows:
        delivered_total += int(delivered)
        dup.add(agency_id, max(0, int(delivered) - int(unique_events or 0)))
        dup.scope_thresholds[agency_id] = duplicate_warn_ratio * int(delivered)
    dup.total_threshold = duplicate_warn_ratio * delivered_total
    dup.note = (
        f"{int(dup.total)} of {delivered_total} deliveries were repeats "
        f"(warn above {duplicate_warn_ratio:.0%} of deliveries)"
    )
    checks.append(dup)

    gaps = _Check("sequence_gaps", 0.0, max_examples)
    for agency_id, first_seq, last_seq, missing in client.query(GAPS_SQL).result_rows:
        gaps.add(agency_id, int(missing), f"{agency_id} {first_seq}..{last_seq}")
    checks.append(gaps)

    stale = _Check("stale_transfers", 0.0, max_examples)
    latest = client.command(LATEST_EVENT_SQL)
    latest_text = str(latest)
    if latest and not latest_text.startswith("1970"):
        rows = client.query(
            STALE_SQL, parameters={"latest": latest_text, "days": stale_transfer_days}
        ).result_rows
        for agency_id, transfer_id, _case, _to, _sent, _age in rows:
            stale.add(agency_id, 1, transfer_id)
        stale.note = (
            f"pending more than {stale_transfer_days} days before the latest event "
            f"time {latest_text[:19]} UTC"
        )
    checks.append(stale)

    orphans = _Check("orphan_receipts", 0.0, max_examples)
    for agency_id, transfer_id, _case, _type, _at in client.query(ORPHANS_SQL).result_rows:
        orphans.add(agency_id, 1, transfer_id)
    checks.append(orphans)

    late = _Check("late_arrivals", 0.0, max_examples)
    params = {"days": late_arrival_days, "recent": recent_days}
    if int(client.command(HAS_INGESTED_AT_SQL) or 0):
        for agency_id, event_id, _case, _occ, _ing, _delay in client.query(
            LATE_SQL, parameters=params
        ).result_rows:
            late.add(agency_id, 1, str(event_id))
        late.note = (
            f"events first ingested in the last {recent_days} days, more than "
            f"{late_arrival_days} days after their event time"
        )
    else:
        for agency_id, count, _delay in client.query(
            LATE_FALLBACK_SQL, parameters=params
        ).result_rows:
            late.add(agency_id, int(count))
        late.note = (
            f"lower bound from agency_activity batches of the last {recent_days} days "
            f"whose newest event was over {late_arrival_days} days old"
        )
    checks.append(late)

    no_open = _Check("cases_without_opening", 0.0, max_examples)
    for agency_id, case_id, _first, _n in client.query(NO_OPENING_SQL).result_rows:
        no_open.add(agency_id, 1, case_id)
    checks.append(no_open)

    forged = _Check("integrity_violations", 0.0, max_examples)
    for agency_id, rule, event_id in client.query(VIOLATIONS_SQL).result_rows:
        forged.add(agency_id, 1, f"{rule} {event_id}")
    forged.note = "facts left out of every figure: an agency acted without authority"
    checks.append(forged)
    return checks


@flow(name="check-data-quality")
def check_data_quality(
    stale_transfer_days: int = 90,
    late_arrival_days: int = 30,
    recent_days: int = 30,
    duplicate_warn_ratio: float = 0.05,
    max_examples: int = 1000,
) -> dict:
    """Run every data-quality check, store the results and return them.

    Returns ``{"run_id", "checked_at" (ISO), "status" ("ok" | "warn"), "checks": {name: {"value",
    "threshold", "status", "by_scope": {agency: value}, "examples": [ids, at most max_examples],
    "note"}}, "rows": [[check, scope, value, threshold, status, detail], ...]}``.
    """
    logger = get_run_logger()
    checks = run_checks(
        stale_transfer_days, late_arrival_days, recent_days, duplicate_warn_ratio, max_examples
    )
    run_id = str(uuid.uuid4())
    checked_at = datetime.now(UTC)
    rows: list[list[Any]] = []
    for check in checks:
        rows.extend(check.rows(run_id, checked_at))
    client = Settings.from_env().clickhouse_client()
    client.insert("data_quality_checks", rows, column_names=COLUMNS)
    summaries = {c.name: c.summary() for c in checks}
    overall = "warn" if any(s["status"] == "warn" for s in summaries.values()) else "ok"
    create_table_artifact(
        key="data-quality",
        table=[
            {
                "check": r[2],
                "scope": r[3],
                "value": r[4],
                "threshold": round(r[5], 2),
                "status": r[6],
                "detail": r[7],
            }
            for r in rows
        ],
        description=f"casestream data-quality checks at {checked_at:%Y-%m-%d %H:%M} UTC: {overall}",
    )
    for name, s in summaries.items():
        logger.info("%s: %s (%s)", name, s["value"], s["status"])
    return {
        "run_id": run_id,
        "checked_at": checked_at.isoformat(),
        "status": overall,
        "checks": summaries,
        "rows": [r[2:] for r in rows],
    }
