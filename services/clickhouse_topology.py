"""Where the ClickHouse tables live: one server, a replicated (or sharded) cluster, or Cloud.

The migrations (infra/clickhouse/migrations) are written once, for one server. A national
deployment runs ClickHouse replicated, perhaps sharded; :func:`render` turns each statement into
what the configured deployment needs, so the SQL files never fork per deployment:

* ``single`` (default): the statements as written.
* ``cloud``: the statements as written. ClickHouse Cloud replicates every MergeTree table by
  itself (SharedMergeTree) and runs DDL on all its replicas; ``ON CLUSTER`` and ``Replicated*``
  engines are not wanted there.
* ``replicated`` (``CASESTREAM_CLICKHOUSE_CLUSTER`` names the cluster of ``remote_servers``):
  every DDL runs ``ON CLUSTER`` and each ``*MergeTree`` engine becomes its ``Replicated*`` twin
  with the usual macros. The keeper path is ``/clickhouse/tables/{uuid}/{shard}`` (the server's
  default path), not one built from ``{database}/{table}``: a rebuild swaps tables between
  databases with ``EXCHANGE TABLES``, after which a name-built path would belong to the other
  table and the next table created under that name would collide with it.
* materialized views (``CREATE MATERIALIZED VIEW … TO target``) run ``ON CLUSTER`` as
  written, reading and writing the names the worker and the analysts use.
* ``sharded``: as replicated, and each table is stored as ``<table>_local`` on every shard with
  a ``Distributed`` table under the original name in front of it, so the worker, the flows and
  the analysts keep writing and reading the names they know. The sharding key is a hash of the
  table's ``ORDER BY`` key: every version of one id lands on one shard, which is what makes
  ``ReplacingMergeTree`` and ``FINAL`` correct per shard. ``EXCHANGE TABLES`` swaps the local
  tables only (each database's Distributed table keeps pointing at its own locals).

What stays correct on replicated tables without any change (docs/clickhouse-cluster.md):
inserts are deduplicated by block (a retried identical batch is dropped, as the Replacing
engines would collapse it anyway), ``FINAL`` merges per replica, ``EXCHANGE TABLES`` is atomic
on Atomic databases.

This module only renders text: it imports nothing of a client, so the unit tests check the
rendered DDL for every mode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["single", "cloud", "replicated", "sharded"]
KINDS: tuple[Kind, ...] = ("single", "cloud", "replicated", "sharded")

#: Keeper path and replica name of every replicated table (ClickHouse's own defaults).
REPLICA_PATH = "/clickhouse/tables/{uuid}/{shard}"
REPLICA_NAME = "{replica}"
LOCAL_SUFFIX = "_local"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_NAME = rf"(?:{_IDENT}\.)?{_IDENT}"
_CREATE_TABLE = re.compile(rf"^(CREATE TABLE IF NOT EXISTS)\s+({_NAME})\s*", re.I)
# A view, or a materialized view writing `TO` a table: either is created as written on every
# server. A materialized view fires on the inserts into the name the worker writes (the
# Distributed front when sharded) and writes through its target's name, which places each row by
# the target's own key; a replica fetching a part does not fire it, so each row is written once.
_CREATE_VIEW = re.compile(
    rf"^(CREATE (?:MATERIALIZED )?VIEW IF NOT EXISTS)\s+({_NAME})\s+((?:TO\s+{_NAME}\s+)?AS\b)",
    re.I,
)
_CREATE_DATABASE = re.compile(rf"^(CREATE DATABASE IF NOT EXISTS)\s+({_IDENT})\s*$", re.I)
_ALTER = re.compile(rf"^(ALTER TABLE)\s+({_NAME})\s+", re.I)
_MODIFY_QUERY = re.compile(r"^MODIFY QUERY\b", re.I)
_EXCHANGE = re.compile(rf"^EXCHANGE TABLES\s+({_NAME})\s+AND\s+({_NAME})\s*$", re.I)
_DROP = re.compile(rf"^DROP (TABLE|DATABASE) IF EXISTS\s+({_NAME})\s*$", re.I)
_ENGINE = re.compile(r"\bENGINE\s*=\s*(\w*)MergeTree\b(\s*\(([^()]*)\))?", re.I)
_ORDER_BY = re.compile(r"\bORDER BY\s+(\([^()]*\)|[A-Za-z_][A-Za-z0-9_]*)", re.I)


class TopologyError(ValueError):
    """A statement the renderer does not know how to place on a cluster."""


@dataclass(frozen=True)
class Topology:
    kind: Kind = "single"
    cluster: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TopologyError(
                f"CASESTREAM_CLICKHOUSE_DEPLOYMENT={self.kind!r} is not one of {', '.join(KINDS)}"
            )
        if self.kind in ("replicated", "sharded") and not self.cluster:
            raise TopologyError(
                f"a {self.kind} deployment needs CASESTREAM_CLICKHOUSE_CLUSTER (the cluster "
                "name of the servers' remote_servers)"
            )
        if self.cluster and not re.fullmatch(_IDENT, self.cluster):
            raise TopologyError(
                f"CASESTREAM_CLICKHOUSE_CLUSTER={self.cluster!r} is not a plain identifier"
            )

    @classmethod
    def of(cls, kind: str, cluster: str) -> Topology:
        """From the two settings: a cluster name alone means ``replicated``."""
        chosen = kind or ("replicated" if cluster else "single")
        return cls(chosen, cluster)  # type: ignore[arg-type] - checked in __post_init__

    @property
    def on_cluster(self) -> bool:
        return self.kind in ("replicated", "sharded")

    def client_settings(self) -> dict[str, str]:
        """Query settings of every client on a cluster.

        * ``insert_quorum=auto``: an insert is acknowledged once a majority of the shard's
          replicas have it. The worker commits its offsets after ClickHouse acknowledged the
          rows; acknowledged by one replica that then dies, they would be lost with no replay.
        * sharded only, ``distributed_product_mode=global``: the rollups filter ``events`` with
          ``NOT IN (SELECT … FROM violating_events)``, a subquery over a Distributed table
          inside a query over one, which ClickHouse refuses unless it runs once and is shipped.
        """
        if not self.on_cluster:
            return {}
        needed = {"insert_quorum": "auto"}
        if self.kind == "sharded":
            needed["distributed_product_mode"] = "global"
        return needed

    def render(self, statement: str, database: str) -> list[str]:
        """The statement(s) that do what `statement` does on one server, here. `database` is
        the one unqualified names live in (the Distributed tables name it explicitly)."""
        text = statement.strip().rstrip(";").strip()
        if not self.on_cluster:
            return [text]
        on = f"ON CLUSTER {self.cluster}"
        if m := _CREATE_DATABASE.match(text):
            return [f"{m[1]} {m[2]} {on}"]
        if m := _CREATE_TABLE.match(text):
            return self._create_table(m[1], m[2], text[m.end() :], on, database)
        if m := _CREATE_VIEW.match(text):
            return [f"{m[1]} {m[2]} {on} {m[3]}{text[m.end() :]}"]
        if m := _ALTER.match(text):
            rest = text[m.end() :]
            # a view's query: the view exists once, by its name (no local table behind it)
            if self.kind == "sharded" and not _MODIFY_QUERY.match(rest):
                return [f"{m[1]} {_local(m[2])} {on} {rest}", f"{m[1]} {m[2]} {on} {rest}"]
            return [f"{m[1]} {m[2]} {on} {rest}"]
        if m := _EXCHANGE.match(text):
            left, right = m[1], m[2]
            if self.kind == "sharded":
                left, right = _local(left), _local(right)
            return [f"EXCHANGE TABLES {left} AND {right} {on}"]
        if m := _DROP.match(text):
            statements = [f"DROP {m[1]} IF EXISTS {m[2]} {on} SYNC"]
            if self.kind == "sharded" and m[1].upper() == "TABLE":
                statements.append(f"DROP TABLE IF EXISTS {_local(m[2])} {on} SYNC")
            return statements
        if re.match(r"^(SELECT|INSERT|WITH)\b", text, re.I):
            return [text]
        raise TopologyError(f"cannot place this statement on a cluster: {text[:80]!r}")

    def _create_table(self, head: str, name: str, body: str, on: str, database: str) -> list[str]:
        engine = _ENGINE.search(body)
        if engine is None:  # Memory, Log, …: nothing to replicate, but it must exist everywhere
            return [f"{head} {name} {on} {body}"]
        args = [f"'{REPLICA_PATH}'", f"'{REPLICA_NAME}'"]
        if engine[3] and engine[3].strip():
            args.append(engine[3].strip())
        replicated = f"ENGINE = Replicated{engine[1]}MergeTree({', '.join(args)})"
        local_body = body[: engine.start()] + replicated + body[engine.end() :]
        if self.kind == "replicated":
            return [f"{head} {name} {on} {local_body}"]
        order = _ORDER_BY.search(body)
        if order is None:
            raise TopologyError(f"table {name} has no ORDER BY to shard by")
        key = order[1].strip()
        key = key[1:-1] if key.startswith("(") else key
        qualifier, _, table = name.rpartition(".")
        distributed = (
            f"ENGINE = Distributed({self.cluster}, '{qualifier or database}', "
            f"{table}{LOCAL_SUFFIX}, cityHash64({key}))"
        )
        return [
            f"{head} {_local(name)} {on} {local_body}",
            f"{head} {name} {on} AS {_local(name)} {distributed}",
        ]


def _local(name: str) -> str:
    return name + LOCAL_SUFFIX
