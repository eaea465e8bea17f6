"""Location and loading of the case-event Avro schema (the contract's single source of truth).

The schema lives in ``schemas/case_event.avsc`` at the repository root (override the directory
with ``CASESTREAM_SCHEMAS_DIR``).  Everything here is loaded once and cached.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

SCHEMA_NAME = "casestream.CaseEvent"

#: event_type -> full name of the payload record in the ``payload`` union.
PAYLOAD_RECORD_BY_EVENT_TYPE: dict[str, str] = {
    "case_opened": "casestream.CaseOpened",
    "case_transferred": "casestream.CaseTransferred",
    "transfer_received": "casestream.TransferReceived",
    "transfer_returned": "casestream.TransferReturned",
    "stage_changed": "casestream.StageChanged",
    "appraisal_requested": "casestream.Appraisal",
    "appraisal_completed": "casestream.Appraisal",
    "monitoring_assigned": "casestream.MonitoringAssigned",
    "discipline_imposed": "casestream.DisciplineImposed",
    "assets_recovered": "casestream.AssetsRecovered",
    "case_resolved": "casestream.CaseResolved",
    "case_reopened": "casestream.CaseReopened",
}


def schemas_dir() -> Path:
    """Directory holding ``case_event.avsc`` and ``reference/``."""
    env = os.environ.get("CASESTREAM_SCHEMAS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "schemas"


def schema_path() -> Path:
    return schemas_dir() / "case_event.avsc"


@cache
def schema_str() -> str:
    """The schema text exactly as shipped (what gets registered in the registry)."""
    return schema_path().read_text(encoding="utf-8")


@cache
def schema_dict() -> dict[str, Any]:
    """The schema as plain JSON (not parsed by fastavro; safe to walk)."""
    return json.loads(schema_str())


@cache
def parsed_schema() -> dict[str, Any]:
    """The schema parsed by fastavro (cached: never parse per message)."""
    return fastavro.parse_schema(json.loads(schema_str()))


def named_types() -> dict[str, dict[str, Any]]:
    """Full name -> definition of every named type (records and enums) in the schema."""
    found: dict[str, dict[str, Any]] = {}
    _collect(schema_dict(), "casestream", found)
    return found


def enum_symbols(full_name: str) -> tuple[str, ...]:
    return tuple(named_types()[full_name]["symbols"])


def _collect(node: Any, namespace: str, found: dict[str, dict[str, Any]]) -> None:
    if isinstance(node, list):
        for item in node:
            _collect(item, namespace, found)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in ("record", "enum", "fixed", "error"):
        name = node["name"]
        ns = node.get("namespace", namespace)
        full = name if "." in name else f"{ns}.{name}"
        found[full] = node
        namespace = full.rpartition(".")[0]
        for field in node.get("fields", ()):
            _collect(field["type"], namespace, found)
    elif kind in ("array",):
        _collect(node["items"], namespace, found)
    elif kind in ("map",):
        _collect(node["values"], namespace, found)
    elif isinstance(kind, (dict, list)):
        _collect(kind, namespace, found)
