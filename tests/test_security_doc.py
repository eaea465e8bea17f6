"""docs/security.md names a test for every attack: each named test must exist, so the page
cannot claim a protection the suite no longer tries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (\d+) \| (.+?) \| `(tests/[\w/]+\.py)::(\w+)` \| (.+?) \|$", re.MULTILINE)


def _rows() -> list[tuple[str, str, str, str, str]]:
    return ROW.findall((ROOT / "docs" / "security.md").read_text(encoding="utf-8"))


def test_the_page_lists_at_least_forty_attacks_numbered_in_order():
    rows = _rows()
    assert len(rows) >= 40
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))


def test_every_named_test_exists():
    missing = [
        f"{path}::{name}"
        for _, _, path, name, _ in _rows()
        if not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.MULTILINE)
    ]
    assert missing == []
