"""Tamper evidence: each agency's events form a hash chain, and a pure verifier reads it back.

Kafka, ClickHouse and the schema registry protect bytes in transit and at rest against accidents
(CRC32C per record batch), not against someone with broker access who produces a rewritten copy
of an event, deletes one or inserts a forged one: the result is still well-formed Avro. An
anti-corruption record must show such changes, so the publishing side links every accepted event
of an agency to the one before it::

    chain_hash(n) = sha256(bytes.fromhex(chain_hash(n - 1)) || canonical_bytes(event n, n))

with ``chain_hash(0) = GENESIS`` (32 zero bytes). ``canonical_bytes`` is the contract's canonical
JSON form (``events.to_json_form``: null optional fields left out, ``occurred_at`` with the
agency's offset) plus ``chain_seq``, serialised with sorted keys and no spaces in UTF-8. The chain
fields themselves are not part of it, and neither are Kafka's offset, key, headers or timestamp.

``chain_seq`` is the position in the chain: 1, 2, 3, ... without gaps, counted by the publishing
side for every event it accepts. It is not the contract's ``sequence``: that one is the agency's
own optional numbering (absent for many sources, historical in bulk imports); the chain covers it
like any other field, so a changed ``sequence`` is an altered event.

:func:`verify_agency` takes an agency's messages with their topic, partition and offset (the
adapter in ``services/ops/verify.py`` reads them from Kafka) and returns findings. No I/O here.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from services.contracts.events import to_json_form

#: chain_prev of the first event of a chain.
GENESIS = "0" * 64
#: The envelope fields that carry the chain (schema version 2); never part of the hashed bytes.
CHAIN_FIELDS = ("chain_seq", "chain_prev", "chain_hash")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# Finding kinds: each one means the topics are not what the publishers wrote.
ALTERED = "altered"
INSERTED = "inserted"
MISSING = "missing"
REORDERED = "reordered"
DELETED_HISTORY = "deleted_history"
TAMPERING = (ALTERED, INSERTED, MISSING, REORDERED, DELETED_HISTORY)
# Note kinds: reported, not tampering.
BEFORE_CHAIN = "before_chain"
DUPLICATE = "duplicate"
BEHIND_HEAD = "behind_head"


# =========================================================================== hashing


#: Sorted keys, no spaces, UTF-8: byte for byte ``json.dumps(form, sort_keys=True,
#: separators=(",", ":"), ensure_ascii=False).encode()`` for every value the contract allows
#: (strings, integers, booleans, null: the schema has no floating-point field, and msgspec
#: writes ``1e16`` where json writes ``1e+16``; tests/contracts/test_chain.py holds both to
#: it). 6 µs instead of 17 µs per event: the chain was the SDK's largest cost (29.5 µs).
_CANONICAL = msgspec.json.Encoder(order="sorted")


def canonical_bytes(event: Mapping[str, Any], chain_seq: int) -> bytes:
    """The bytes the chain hashes for one event (normalized or outbox form) at a position."""
    form = to_json_form(event)
    form["chain_seq"] = chain_seq
    return _CANONICAL.encode(form)


def link_hash(prev: str, event: Mapping[str, Any], chain_seq: int) -> str:
    """``sha256(prev || canonical)`` as 64 lower-case hex digits."""
    return hashlib.sha256(bytes.fromhex(prev) + canonical_bytes(event, chain_seq)).hexdigest()


@dataclass(frozen=True)
class ChainHead:
    """Where an agency's chain stands: the last position given out and its hash."""

    seq: int = 0
    hash: str = GENESIS


def chain_event(event: Mapping[str, Any], head: ChainHead) -> tuple[dict[str, Any], ChainHead]:
    """The chain fields of the next event after ``head``, and the new head."""
    seq = head.seq + 1
    digest = link_hash(head.hash, event, seq)
    return {"chain_seq": seq, "chain_prev": head.hash, "chain_hash": digest}, ChainHead(seq, digest)


def chain_links(
    events: Sequence[Mapping[str, Any]],
    heads: dict[str, ChainHead],
    occurred_at_texts: Sequence[str | None] | None = None,
) -> list[tuple[int, str, str]]:
    """The links (chain_seq, chain_prev, chain_hash) of consecutive new events, in one loop.

    ``events`` (normalized or outbox form) in chain order; ``heads`` (agency -> head) is
    advanced to each agency's last link; ``occurred_at_texts``, when the caller has them, are
    the events' ``occurred_at`` as the canonical form writes it (``format_occurred_at``; None
    where not known). The same links as :func:`chain_event` applied one by one
    (``tests/contracts/test_chain.py``), without a ``ChainHead`` and a hex round trip of the
    previous hash per event, and without formatting a timestamp the caller already has in
    canonical text: the chain was the SDK's largest step (26.1 us of ~42 per event in the
    publish benchmark, the timestamp formatting ~4 us of it).
    """
    encode, sha256 = _CANONICAL.encode, hashlib.sha256
    texts = occurred_at_texts or [None] * len(events)
    state: dict[str, tuple[int, str, bytes]] = {}
    links: list[tuple[int, str, str]] = []
    for event, text in zip(events, texts, strict=True):
        agency = event["agency_id"]
        last = state.get(agency)
        if last is None:
            head = heads.get(agency) or ChainHead()
            last = (head.seq, head.hash, bytes.fromhex(head.hash))
        seq = last[0] + 1
        form = to_json_form(event, text)
        form["chain_seq"] = seq
        raw = sha256(last[2] + encode(form)).digest()
        digest = raw.hex()
        state[agency] = (seq, digest, raw)
        links.append((seq, last[1], digest))
    for agency, (seq, digest, _) in state.items():
        heads[agency] = ChainHead(seq, digest)
    return links


def is_chained(event: Mapping[str, Any]) -> bool:
    return event.get("chain_hash") is not None


# =========================================================================== verification


@dataclass(frozen=True)
class Record:
    """One message of an agency topic as read back: where it is and what it decoded to.

    ``event`` is None when the message is not a decodable case event (``error`` says why).
    ``timestamp_ms`` is Kafka's message timestamp, used only to tell which of two conflicting
    copies came first when their offsets are in different partitions.
    """

    topic: str
    partition: int
    offset: int
    event: Mapping[str, Any] | None
    error: str | None = None
    timestamp_ms: int = 0

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Finding:
    kind: str
    agency_id: str
    topic: str
    partition: int
    offset: int
    detail: str
    chain_seq: int | None = None
    event_id: str | None = None

    @property
    def tampering(self) -> bool:
        return self.kind in TAMPERING

    def line(self) -> str:
        seq = f" #{self.chain_seq}" if self.chain_seq is not None else ""
        return f"{self.kind:<15} {self.topic}[{self.partition}]@{self.offset}{seq}: {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "agency_id": self.agency_id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "chain_seq": self.chain_seq,
            "event_id": self.event_id,
            "detail": self.detail,
        }


@dataclass
class AgencyResult:
    agency_id: str
    messages: int = 0
    chained: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    findings: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "agency_id": self.agency_id,
            "intact": self.intact,
            "messages": self.messages,
            "chained": self.chained,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "findings": [f.as_dict() for f in self.findings],
            "notes": [n.as_dict() for n in self.notes],
        }


@dataclass
class _Link:
    record: Record
    seq: int
    prev: str
    hash: str
    event_id: str
    valid: bool = True  # False: the content does not hash to the stored hash (reported altered)


def _link_of(record: Record) -> tuple[_Link | None, str | None]:
    """The record's chain link and, when its content does not hash to it, why.

    A well-formed link whose content was changed still holds its position (its successor links
    to its stored hash), so it is reported once, as altered, and not again as missing.
    """
    event = record.event
    assert event is not None
    seq, prev, digest = (event.get(name) for name in CHAIN_FIELDS)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None, f"chain_seq {seq!r} is not a position >= 1"
    if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        return None, f"chain_prev {prev!r} is not 64 lower-case hex digits"
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        return None, f"chain_hash {digest!r} is not 64 lower-case hex digits"
    try:
        actual = link_hash(prev, event, seq)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        return None, f"content cannot be put in canonical form ({exc!r})"
    link = _Link(record, seq, prev, digest, str(event.get("event_id")), actual == digest)
    if not link.valid:
        return link, (
            f"content does not match its chain hash (stored {digest[:12]}…, "
            f"content hashes to {actual[:12]}…)"
        )
    return link, None


def _first(records: Iterable[Record]) -> Record:
    return min(records, key=lambda r: (r.timestamp_ms, r.topic, r.partition, r.offset))


def verify_agency(
    agency_id: str,
    records: Iterable[Record],
    log_start_offsets: Mapping[tuple[str, int], int] | None = None,
    expected_head: ChainHead | None = None,
) -> AgencyResult:
    """Check one agency's chain as read from its topic(s); see the module docstring.

    ``records`` are every message read (any order); ``log_start_offsets`` maps (topic,
    partition) to the partition's first offset still in the log: above 0, older messages were
    deleted (retention, ``kafka-delete-records``) and the chain's beginning may be gone with them.
    ``expected_head`` is the publisher's own head when known: the links alone cannot tell a
    forged event appended after the last genuine one, nor a cut tail.

    Findings (tampering): ``altered`` (content no longer matches its hash, or a second copy of an
    event at its position with other content), ``inserted`` (an event the chain does not link:
    a second event at a taken position, an unchained or undecodable message after the chain
    began, another agency's event), ``missing`` (positions nobody holds, or a link to an event
    that is not there), ``reordered`` (a partition holds a later position before an earlier one),
    ``deleted_history`` (log start offset above 0). Notes: ``before_chain`` (events written
    before the chain existed), ``duplicate`` (an identical copy: a redelivery, harmless).
    """
    result = AgencyResult(agency_id)
    ordered = sorted(records, key=lambda r: (r.topic, r.partition, r.offset))
    result.messages = len(ordered)
    findings = result.findings
    notes = result.notes

    def finding(kind: str, r: Record, detail: str, seq=None, event_id=None) -> Finding:
        return Finding(kind, agency_id, r.topic, r.partition, r.offset, detail, seq, event_id)

    for (topic, partition), start in sorted((log_start_offsets or {}).items()):
        if start > 0:
            findings.append(
                Finding(
                    DELETED_HISTORY,
                    agency_id,
                    topic,
                    partition,
                    start,
                    f"the log starts at offset {start}: offsets 0..{start - 1} were deleted "
                    f"(retention or delete-records); what they held cannot be verified",
                )
            )

    first_chained: dict[tuple[str, int], int] = {}
    for r in ordered:
        if r.event is not None and r.event.get("agency_id") == agency_id and is_chained(r.event):
            first_chained.setdefault((r.topic, r.partition), r.offset)

    links: list[_Link] = []
    before: dict[tuple[str, int], list[int]] = defaultdict(list)
    for r in ordered:
        event = r.event
        if event is None:
            findings.append(
                finding(INSERTED, r, f"not a decodable case event ({r.error or 'unknown'})")
            )
            continue
        event_id = str(event.get("event_id"))
        if event.get("agency_id") != agency_id:
            findings.append(
                finding(
                    INSERTED,
                    r,
                    f"event {event_id} claims agency {event.get('agency_id')!r} on the topic "
                    f"of {agency_id}",
                    event_id=event_id,
                )
            )
            continue
        if not is_chained(event):
            started = first_chained.get((r.topic, r.partition))
            if started is not None and r.offset > started:
                findings.append(
                    finding(
                        INSERTED,
                        r,
                        f"event {event_id} has no chain hash but comes after the chain began "
                        f"in this partition (offset {started})",
                        event_id=event_id,
                    )
                )
            else:
                before[(r.topic, r.partition)].append(r.offset)
            continue
        link, why = _link_of(r)
        if why is not None:
            findings.append(
                finding(ALTERED, r, f"event {event_id}: {why}", event.get("chain_seq"), event_id)
            )
        if link is not None:
            links.append(link)

    for (topic, partition), offsets in sorted(before.items()):
        notes.append(
            Finding(
                BEFORE_CHAIN,
                agency_id,
                topic,
                partition,
                offsets[0],
                f"{len(offsets)} event(s) at offsets {offsets[0]}..{offsets[-1]} were written "
                f"before the chain (no chain fields)",
            )
        )

    # Identical copies (same hash) are redeliveries: keep the first, note the others.
    by_seq: dict[int, list[_Link]] = defaultdict(list)
    by_hash: dict[str, _Link] = {}
    for link in sorted(
        links,
        key=lambda k: (k.record.timestamp_ms, k.record.topic, k.record.partition, k.record.offset),
    ):
        kept = by_hash.get(link.hash)
        if kept is not None:
            notes.append(
                finding(
                    DUPLICATE,
                    link.record,
                    f"identical copy of event {link.event_id} (first at {kept.record.where})",
                    link.seq,
                    link.event_id,
                )
            )
            continue
        by_hash[link.hash] = link
        by_seq[link.seq].append(link)
    for candidates in by_seq.values():  # an intact copy before an altered one (stable sort)
        candidates.sort(key=lambda k: not k.valid)
    result.chained = len(by_hash)
    if not by_seq:
        return result

    # Walk down from the highest position: at each position the genuine event is the one its
    # successor links to; every other event claiming that position is a forgery.
    top = max(by_seq)
    bottom = min(by_seq)
    expected: str | None = None  # the hash the successor links to
    successor: _Link | None = None
    if expected_head is not None and expected_head.seq > 0:
        # The publisher's own head: positions beyond it were never given out (a forged append
        # at the tail, undetectable from the links alone), and a shorter chain lost its tail.
        for seq in sorted(s for s in by_seq if s > expected_head.seq):
            for c in by_seq.pop(seq):
                findings.append(
                    finding(
                        INSERTED,
                        c.record,
                        f"event {c.event_id} claims #{seq}, beyond the publisher's head "
                        f"#{expected_head.seq}",
                        seq,
                        c.event_id,
                    )
                )
        if not by_seq:
            return result
        top = max(by_seq)
        if expected_head.seq > top:
            # Not tampering by itself: the publisher may still hold them in an outbox. A cut
            # tail (log-file surgery; Kafka's API only deletes a partition's beginning) looks
            # the same until they are delivered, so it is shown, and stays shown.
            last_link = by_seq[top][0]
            notes.append(
                finding(
                    BEHIND_HEAD,
                    last_link.record,
                    _positions(top + 1, expected_head.seq)
                    + f" not in the topics: the publisher's head is #{expected_head.seq}, the "
                    f"topics end at #{top} (still in an outbox, or the tail was cut)",
                    top + 1,
                )
            )
        elif expected_head.seq == top:
            expected = expected_head.hash
    genuine: dict[int, _Link] = {}
    suspect: set[int] = set()  # positions held by a forged or altered event: not ordered
    gap_end: int | None = None  # highest missing position of the current gap
    for seq in range(top, bottom - 1, -1):
        candidates = by_seq.get(seq)
        if not candidates:
            gap_end = seq if gap_end is None else gap_end
            expected = None
            continue
        if gap_end is not None and successor is not None:
            findings.append(
                finding(
                    MISSING,
                    successor.record,
                    _positions(seq + 1, gap_end)
                    + f" missing: no message holds them; event {successor.event_id} "
                    f"(#{successor.seq}) comes after #{seq}",
                    seq + 1,
                )
            )
        gap_end = None
        chosen = next((c for c in candidates if c.hash == expected), None)
        broken = chosen is None and expected is not None
        if chosen is None:
            chosen = candidates[0]
        if broken:
            linker = (
                f"event {successor.event_id} (#{successor.seq})"
                if successor is not None
                else f"the publisher's head #{top}"
            )
            where = successor.record if successor is not None else chosen.record
            findings.append(
                finding(
                    MISSING,
                    where,
                    f"{linker} links to {expected[:12]}…, which no event at #{seq} has: "
                    f"the event it follows is missing",
                    seq,
                )
            )
        for other in candidates:
            if not other.valid and (broken or other is not chosen):
                continue  # already reported as altered
            if broken:
                findings.append(
                    finding(
                        INSERTED,
                        other.record,
                        f"event {other.event_id} claims #{seq} but is not the event the "
                        f"chain links to there",
                        seq,
                        other.event_id,
                    )
                )
            elif other is chosen:
                continue
            elif other.event_id == chosen.event_id:
                findings.append(
                    finding(
                        ALTERED,
                        other.record,
                        f"a rewritten copy of event {other.event_id} (#{seq}): its content "
                        f"differs from the chained original at {chosen.record.where}",
                        seq,
                        other.event_id,
                    )
                )
            else:
                findings.append(
                    finding(
                        INSERTED,
                        other.record,
                        f"event {other.event_id} claims #{seq}, which event "
                        f"{chosen.event_id} at {chosen.record.where} holds in the chain",
                        seq,
                        other.event_id,
                    )
                )
        genuine[seq] = chosen
        if broken or not chosen.valid:
            suspect.add(seq)
        expected = chosen.prev
        successor = chosen

    head = genuine[top]
    result.head_seq, result.head_hash = head.seq, head.hash
    low = genuine[bottom]
    if bottom == 1:
        if low.prev != GENESIS:
            findings.append(
                finding(
                    INSERTED,
                    low.record,
                    f"event {low.event_id} claims #1 but does not start from the genesis hash",
                    1,
                    low.event_id,
                )
            )
    else:
        deleted = any(start > 0 for start in (log_start_offsets or {}).values())
        findings.append(
            finding(
                DELETED_HISTORY if deleted else MISSING,
                low.record,
                _positions(1, bottom - 1)
                + (
                    " in the deleted history (the oldest kept event is "
                    if deleted
                    else " missing: no message holds them (the oldest chained event is "
                )
                + f"#{bottom}, {low.event_id})",
                1,
            )
        )

    # Within a partition the publisher's order is the chain's order.
    last: dict[tuple[str, int], _Link] = {}
    for link in sorted(
        (k for k in genuine.values() if k.seq not in suspect),
        key=lambda k: (k.record.topic, k.record.partition, k.record.offset),
    ):
        key = (link.record.topic, link.record.partition)
        before_it = last.get(key)
        if before_it is not None and before_it.seq > link.seq:
            findings.append(
                finding(
                    REORDERED,
                    link.record,
                    f"event {link.event_id} (#{link.seq}) comes after #{before_it.seq} at "
                    f"offset {before_it.record.offset} in the same partition",
                    link.seq,
                    link.event_id,
                )
            )
        else:
            last[key] = link

    findings.sort(key=lambda f: (f.topic, f.partition, f.offset, f.kind))
    return result


def _positions(first: int, last: int) -> str:
    return f"position #{first} is" if first == last else f"positions #{first}..#{last} are"
