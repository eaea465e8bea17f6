"""One consumed batch of re-keyed facts → updated case states and the rows to write.

Pure apart from the `load` callback that reads a case's stored state (the worker's state store,
a dict in the tests), so the whole derivation can be tested with in-memory state. The stored
state is opaque bytes (`encode_state` / `decode_state`): the worker keeps it in RocksDB and its
changelog without knowing its shape.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from services.processor.case_state import derive_rows
from services.processor.facts import Fact, event_row, ms_to_datetime
from services.serving.sink import RowBatch

StoredFacts = list[list[Any]]  # a case's facts as JSON-able lists (decoded state)
StoredState = bytes  # a case's state as the store and the changelog keep it


def encode_state(stored: StoredFacts) -> StoredState:
    return json.dumps(stored, separators=(",", ":"), ensure_ascii=False).encode()


def decode_state(raw: StoredState | None) -> StoredFacts:
    return [] if raw is None else json.loads(raw)


def fact_to_stored(fact: Fact) -> list[Any]:
    return [
        fact.event_id,
        fact.event_type,
        fact.case_id,
        fact.agency_id,
        fact.occurred_ms,
        fact.utc_offset_minutes,
        fact.sequence,
        fact.payload,
    ]


@dataclass
class BatchResult:
    rows: RowBatch
    changed: dict[str, StoredState] = field(default_factory=dict)  # case_id → new stored state
    duplicates: int = 0


def agency_activity(facts: Iterable[Fact], now_ms: int | None = None) -> list[list[Any]]:
    """One `agency_activity` row per agency in the batch: freshness and sequence for ops."""
    now = ms_to_datetime(now_ms if now_ms is not None else int(time.time() * 1000))
    per_agency: dict[str, list[Any]] = {}
    for fact in facts:
        entry = per_agency.setdefault(fact.agency_id, [fact.agency_id, 0, 0, None, now])
        entry[1] += 1
        entry[2] = max(entry[2], fact.occurred_ms)
        if fact.sequence is not None:
            entry[3] = fact.sequence if entry[3] is None else max(entry[3], fact.sequence)
    for entry in per_agency.values():
        entry[2] = ms_to_datetime(entry[2])
    return list(per_agency.values())


def apply_batch(facts: Iterable[Fact], load: Callable[[str], StoredState | None]) -> BatchResult:
    """Add the facts to their cases' stored sets and derive every touched case's rows once.

    A duplicate (event_id already stored) changes no state, yet its case's rows are still
    derived and written: after a crash between the state update and the ClickHouse write, the
    replayed batch must still produce the rows.
    """
    rows = RowBatch()
    facts_seen: list[Fact] = []
    touched: dict[str, StoredFacts] = {}
    known: dict[str, set[str]] = {}
    result = BatchResult(rows)
    for fact in facts:
        facts_seen.append(fact)
        rows.add("events", event_row(fact))
        stored = touched.get(fact.case_id)
        if stored is None:
            stored = decode_state(load(fact.case_id))
            touched[fact.case_id] = stored
            known[fact.case_id] = {f[0] for f in stored}
        if fact.event_id in known[fact.case_id]:
            result.duplicates += 1
            continue
        known[fact.case_id].add(fact.event_id)
        stored.append(fact_to_stored(fact))
        result.changed[fact.case_id] = stored  # type: ignore[assignment] - encoded below
    rows.extend("agency_activity", agency_activity(facts_seen))
    for stored in touched.values():
        derived = derive_rows(Fact(*f) for f in stored)
        rows.add("cases_state", derived.case)
        rows.extend("transfers_state", derived.transfers)
        rows.extend("appraisals_state", derived.appraisals)
        rows.extend("integrity_violations_state", derived.violations)
    result.changed = {case_id: encode_state(stored) for case_id, stored in result.changed.items()}  # type: ignore[arg-type]
    return result
