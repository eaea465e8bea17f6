"""The publishing side's SQLite files: fsync on every commit, WAL checkpoints spaced out."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.agency import durable_sqlite
from services.agency.chain_store import ChainStore
from services.agency.outbox import Outbox

pytestmark = pytest.mark.unit


def _pragmas(db) -> dict[str, object]:
    return {
        name: db.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "synchronous", "wal_autocheckpoint", "cache_size")
    }


@pytest.mark.parametrize("store", [Outbox, ChainStore])
def test_outbox_and_chain_store_open_their_file_durable_and_tuned(tmp_path: Path, store) -> None:
    opened = store(tmp_path / "file.sqlite")
    try:
        assert _pragmas(opened._db) == {
            "journal_mode": "wal",
            "synchronous": 2,  # FULL: an accepted event survives a power loss
            "wal_autocheckpoint": durable_sqlite.WAL_CHECKPOINT_PAGES,
            "cache_size": -durable_sqlite.CACHE_KIB,
        }
    finally:
        opened.close()
