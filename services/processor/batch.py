"""One consumed batch of re-keyed facts → updated case states and the rows to write.

Pure apart from the `load` callback that reads a case's stored state (the worker's state store,
a dict in the tests), so the whole derivation can be tested with in-memory state. The stored
state is opaque bytes (`encode_state` / `decode_state`): the worker keeps it in RocksDB and its
changelog without knowing its shape.

The state of a case is the set of its facts, as `STATE_MAGIC` + msgpack of `Fact` arrays,
decoded straight into `Fact`s. The first format, JSON lists of the fact fields, is still read
(a worker upgraded over an old changelog finds it there) and is still written for a case whose
payload holds an integer msgpack cannot carry (beyond 64 bits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from services.processor.case_state import derive_distinct
from services.processor.envelope import json_body
from services.processor.facts import Fact, event_row, ms_to_datetime
from services.serving.sink import RowBatch

StoredState = bytes  # a case's state as the store and the changelog keep it

#: First bytes of a stored state in the msgpack format (a JSON state begins with `[`).
STATE_MAGIC = b"CSS1"

_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(list[Fact]).decode
_unpack_json = msgspec.json.Decoder(list[Fact]).decode


def encode_state(facts: Sequence[Fact]) -> StoredState:
    """A case's facts as stored state bytes."""
    try:
        return STATE_MAGIC + _pack(facts)
    except OverflowError:  # an integer msgpack cannot carry: the JSON lists of before
        return json_body(facts)


def decode_state(raw: StoredState | None) -> list[Fact]:
    """The facts of a stored state, in either format (an absent state: no facts)."""
    if raw is None:
        return []
    if raw[:4] == STATE_MAGIC:
        return _unpack(memoryview(raw)[4:])
    if raw[:1] == b"[":
        return _unpack_json(raw)
    raise ValueError(f"not a stored case state (it begins with {bytes(raw[:8])!r})")


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
        entry = per_agency.get(fact.agency_id)
        if entry is None:
            entry = per_agency[fact.agency_id] = [fact.agency_id, 0, 0, None, now]
        entry[1] += 1
        if fact.occurred_ms > entry[2]:
            entry[2] = fact.occurred_ms
        sequence = fact.sequence
        if sequence is not None and (entry[3] is None or sequence > entry[3]):
            entry[3] = sequence
    for entry in per_agency.values():
        entry[2] = ms_to_datetime(entry[2])
    return list(per_agency.values())


def apply_batch(facts: Iterable[Fact], load: Callable[[str], StoredState | None]) -> BatchResult:
    """Add the facts to their cases' stored sets and derive every touched case's rows once.

    A duplicate (event_id already stored) changes no state, yet its case's rows are still
    derived and written: after a crash between the state update and the ClickHouse write, the
    replayed batch must still produce the rows.
    """
    batch = facts if isinstance(facts, list) else list(facts)
    rows = RowBatch()
    result = BatchResult(rows)
    rows.extend("events", [event_row(fact) for fact in batch])
    touched: dict[str, list[Fact]] = {}
    known: dict[str, set[str]] = {}
    changed: dict[str, list[Fact]] = {}
    for fact in batch:
        case_id = fact.case_id
        stored = touched.get(case_id)
        if stored is None:
            stored = touched[case_id] = decode_state(load(case_id))
            ids = known[case_id] = {f.event_id for f in stored}
        else:
            ids = known[case_id]
        if fact.event_id in ids:
            result.duplicates += 1
            continue
        ids.add(fact.event_id)
        stored.append(fact)
        changed[case_id] = stored
    rows.extend("agency_activity", agency_activity(batch))
    cases, transfers, appraisals, violations = [], [], [], []
    for stored in touched.values():
        derived = derive_distinct(stored)
        cases.append(derived.case)
        transfers += derived.transfers
        appraisals += derived.appraisals
        violations += derived.violations
    rows.extend("cases_state", cases)
    rows.extend("transfers_state", transfers)
    rows.extend("appraisals_state", appraisals)
    rows.extend("integrity_violations_state", violations)
    result.changed = {case_id: encode_state(stored) for case_id, stored in changed.items()}
    return result
