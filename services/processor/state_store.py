"""The case state of a worker's partitions, on disk: faust's RocksDB store, addressed by partition.

Why RocksDB (faust's ``rocksdb://`` store through ``rocksdict``): with the ``memory://`` store a
restart re-read the whole changelog and a rebuild of 10 M events needed ~9–14 GB of RAM. On disk,
a restart reads only the changelog records after the offset persisted with the state, and memory
stays bounded by RocksDB's caches.

Why by partition, explicitly: faust's store finds the partition of a key from the *current
event* (one message per key). The derive step handles envelopes, each holding the facts of many
cases of one facts partition, so it names the partition itself. Each partition's database holds
its cases' states and the changelog offset they include, written in one atomic ``WriteBatch``:
after a crash the state and its persisted offset never disagree, and faust's recovery resumes
the changelog after that offset.

This is the one module that reaches into faust's store (``_db_for_partition``, ``offset_key``);
docs/guarantees.md lists it with the test that covers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class PartitionStates:
    """Read and write case states of one table's partitions in faust's RocksDB store."""

    def __init__(self, table: Any) -> None:
        self._table = table

    @property
    def _store(self) -> Any:
        return self._table.data

    def getter(self, partition: int):  # noqa: ANN201 - Callable[[str], bytes | None]
        """A ``load(case_id)`` for the derivation, reading one partition's database."""
        db = self._store._db_for_partition(partition)
        get = db.get

        def load(case_id: str) -> bytes | None:
            return get(case_id.encode())

        return load

    def commit(self, partition: int, states: Mapping[str, bytes], changelog_offset: int) -> None:
        """Write the partition's new states and the changelog offset they include, atomically."""
        from rocksdict import WriteBatch

        store = self._store
        db = store._db_for_partition(partition)
        batch = WriteBatch(raw_mode=True)
        for case_id, state in states.items():
            batch.put(case_id.encode(), state)
        batch.put(store.offset_key, str(changelog_offset).encode())
        db.write(batch)
