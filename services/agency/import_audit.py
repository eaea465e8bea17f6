"""The audit record of bulk imports: who imported which file of digitised records, and what.

Digitised records are the one path where old dates are normal (the gateway refuses events more
than five years old, `casestream publish FILE` keeps them) and where one operator writes the
events of many agencies. That power needs a trace an auditor can read without Kafka: one JSON
line per import in ``<home>/imports/audit.jsonl`` (append-only) with the operator, the Kafka
principal, the host, the file's SHA-256 and what was accepted per agency. The events themselves
stay subject to the same validation and authority rules as live ones. The operator's Kafka
principal is ``casestream-import`` (``kafka_security.import_acls``): WRITE on agency topics only.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

OPERATOR_ENV = "CASESTREAM_OPERATOR"


@dataclass
class ImportRecord:
    import_id: str
    operator: str
    principal: str
    host: str
    file: str
    sha256: str
    started_at: str
    finished_at: str = ""
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    pending: int = 0
    by_agency: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)


def audit_path(home: Path) -> Path:
    return home / "imports" / "audit.jsonl"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def operator_name() -> str:
    """CASESTREAM_OPERATOR, else the login name: who answers for the import."""
    name = os.environ.get(OPERATOR_ENV, "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def begin(path: Path, principal: str | None) -> ImportRecord:
    return ImportRecord(
        import_id=str(uuid.uuid4()),
        operator=operator_name(),
        principal=principal or "(no SASL principal: PLAINTEXT listener)",
        host=socket.gethostname(),
        file=str(path.resolve()),
        sha256=file_sha256(path),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def finish(record: ImportRecord, home: Path, summary: Any) -> Path:
    """Fill in what the import did and append the record; returns the audit file."""
    record.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    for name in ("lines", "accepted", "duplicates", "rejected", "pending"):
        setattr(record, name, int(getattr(summary, name)))
    record.by_agency = dict(sorted(summary.by_agency.items()))
    target = audit_path(home)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as handle:
        handle.write(record.as_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return target


def read_records(home: Path) -> list[dict[str, Any]]:
    target = audit_path(home)
    if not target.exists():
        return []
    return [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines() if line]
