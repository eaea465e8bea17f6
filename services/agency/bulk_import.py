"""Bulk import of digitised records (`casestream publish FILE`): JSONL or CSV → agency topics.

A bad row never stops the import: it is reported with its line number, field and value, and the
good rows still go. Events are grouped per agency and published through that agency's
`Publisher`, so they pass the same validation, the same outbox and the same idempotency as live
events: importing the same file twice publishes nothing new.

CSV layout: a header with `event_id, event_type, case_id, agency_id, occurred_at, sequence` and
either one `payload` column holding the payload as JSON, or `payload.<field>` columns (empty cells
are omitted; numbers and true/false are converted).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.agency import import_audit
from services.contracts.events import EventValidationError, parse_event, validate_publisher
from services.settings import Settings

CHUNK = 2000
_INT_FIELDS = {"sequence", "count", "damage_vnd", "identified_vnd", "recovered_vnd"}
_BOOL_FIELDS = {"prominent"}


@dataclass
class LineError:
    line: int
    field: str
    value: Any
    reason: str

    def __str__(self) -> str:
        shown = json.dumps(self.value, ensure_ascii=False, default=str)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return f"line {self.line}: {self.field} = {shown}: {self.reason}"


@dataclass
class ImportSummary:
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    pending: int = 0
    errors: list[LineError] = field(default_factory=list)
    by_agency: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: float = 0.0
    audit: Path | None = None  # the audit file the import's record was appended to
    import_id: str = ""


def _coerce(name: str, value: str) -> Any:
    if name in _INT_FIELDS:
        try:
            return int(value)
        except ValueError:
            return value  # validation reports it with the field name
    if name in _BOOL_FIELDS:
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
    return value


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or LineError) for each non-blank line."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield (
                    number,
                    LineError(
                        number,
                        "<line>",
                        line.strip(),
                        f"invalid JSON: {exc.msg} at column {exc.colno}",
                    ),
                )


def read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            number = reader.line_num
            if None in row:  # more cells than header columns
                yield (
                    number,
                    LineError(number, "<row>", row[None], "more cells than header columns"),
                )
                continue
            event: dict[str, Any] = {}
            payload: dict[str, Any] = {}
            problem = None
            for key, value in row.items():
                if value is None or value == "":
                    continue
                if key == "payload":
                    try:
                        payload.update(json.loads(value))
                    except (json.JSONDecodeError, TypeError) as exc:
                        problem = LineError(number, "payload", value, f"invalid JSON: {exc}")
                elif key.startswith("payload."):
                    name = key.removeprefix("payload.")
                    payload[name] = _coerce(name, value)
                else:
                    event[key] = _coerce(key, value)
            event["payload"] = payload
            yield number, problem or event


def read_events(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix.lower() == ".csv":
        return read_csv(path)
    return read_jsonl(path)


def import_file(
    path: Path | str,
    settings: Settings | None = None,
    *,
    only_agency: str | None = None,
    progress: Callable[[ImportSummary], None] | None = None,
    publisher_factory: Callable[[], Any] | None = None,
    flush_timeout: float = 120.0,
) -> ImportSummary:
    """Validate and publish every row of a file; see the module docstring."""
    from services.agency.publisher import Publisher

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    settings = settings or Settings.from_env()
    record = import_audit.begin(path, settings.kafka_sasl_username)
    publisher = (publisher_factory or (lambda: Publisher(only_agency, settings)))()
    batch: list[dict[str, Any]] = []
    summary = ImportSummary()
    started = last_report = time.monotonic()

    def send() -> None:
        for event, result in zip(batch, publisher.publish_many(batch), strict=True):
            if result.new:
                summary.accepted += 1
                summary.by_agency[event["agency_id"]] += 1
            else:
                summary.duplicates += 1
        batch.clear()

    for number, item in read_events(path):
        summary.lines += 1
        if isinstance(item, LineError):
            summary.rejected += 1
            summary.errors.append(item)
            continue
        try:
            event = parse_event(item)
            if only_agency is not None:
                validate_publisher(event, only_agency)
        except EventValidationError as exc:
            summary.rejected += 1
            summary.errors.append(LineError(number, exc.field, exc.value, exc.reason))
            continue
        batch.append(item)
        if len(batch) >= CHUNK:
            send()
        if progress and time.monotonic() - last_report >= 2.0:
            last_report = time.monotonic()
            summary.seconds = last_report - started
            progress(summary)
    send()
    summary.pending = publisher.close(flush_timeout)
    summary.seconds = time.monotonic() - started
    summary.import_id = record.import_id
    summary.audit = import_audit.finish(record, settings.home, summary)
    return summary


def print_progress(summary: ImportSummary, stream=sys.stderr) -> None:
    rate = summary.lines / summary.seconds if summary.seconds else 0
    print(
        f"  {summary.lines:>10,} lines  {summary.accepted:>10,} accepted  "
        f"{summary.rejected:>6,} rejected  {rate:>8,.0f} lines/s",
        file=stream,
        flush=True,
    )


def format_summary(summary: ImportSummary, max_errors: int = 50) -> str:
    out = io.StringIO()
    for error in summary.errors[:max_errors]:
        print(f"  {error}", file=out)
    if len(summary.errors) > max_errors:
        print(f"  … and {len(summary.errors) - max_errors} more rejected lines", file=out)
    print(
        f"{summary.lines:,} lines: {summary.accepted:,} accepted, {summary.duplicates:,} "
        f"duplicates (already published), {summary.rejected:,} rejected, "
        f"{summary.pending:,} waiting in outboxes; {len(summary.by_agency)} agencies; "
        f"{summary.seconds:.1f}s",
        file=out,
    )
    if summary.audit is not None:
        print(f"audit: import {summary.import_id} recorded in {summary.audit}", file=out)
    return out.getvalue()
