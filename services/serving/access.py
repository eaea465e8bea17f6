"""Who sees which rows: an analyst's scope (one province, or the nation) as SQL.

A provincial steering committee sees its own province's rows and nothing else, in every analyst
table and rollup. One definition, two renderings:

* **views** (:func:`scope_views`): a database per scope (``casestream_p20``) holding one view per
  analyst table, each filtering the platform's table by the province. A provincial analyst is
  granted that database only. This works on the local endpoint (chDB has no access control; the
  endpoint enforces per-user database grants) and on any real ClickHouse.
* **ClickHouse's own access control** (:func:`clickhouse_statements`): a role per province with
  ``ROW POLICY`` filters on the platform's tables and ``GRANT SELECT``, and the user, for a
  production ClickHouse (``casestream analysts add … --print-sql``).

A province's rows are those of its territory *today*: after the 2025 mergers a province's code
covers the codes merged into it (``current_province``), so the committee of a merged province
also sees the history its predecessors recorded. Central agencies (province ``00``) belong to
no province: only national analysts see them.

Pure: imports nothing of a client, so the unit tests check the SQL for every scope.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.contracts import reference as ref

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
ROLE_PREFIX = "casestream_province_"
ALL_PROVINCES_ROLE = "casestream_all_provinces"


class ScopeError(ValueError):
    """A province or analyst name that cannot be used; the message names the value."""


@dataclass(frozen=True)
class Scope:
    """``province`` None is the national scope (every row)."""

    province: str | None
    codes: tuple[str, ...] = ()  # every province code whose rows this scope sees

    @property
    def national(self) -> bool:
        return self.province is None

    @property
    def label(self) -> str:
        return "national" if self.province is None else f"province {self.province}"

    def database(self, platform_database: str) -> str:
        """The database this scope's analysts are granted."""
        if self.province is None:
            return platform_database
        return f"{platform_database}_p{self.province}"

    @property
    def role(self) -> str:
        return ALL_PROVINCES_ROLE if self.province is None else f"{ROLE_PREFIX}{self.province}"


def national() -> Scope:
    return Scope(None)


def province_scope(code: str) -> Scope:
    """The scope of today's province ``code``, with the codes merged into it."""
    code = code.strip()
    if not re.fullmatch(r"[0-9]{2}", code):
        raise ScopeError(f"--province {code!r}: a province code is two digits, e.g. 20")
    if code == ref.CENTRAL:
        raise ScopeError("--province 00: central agencies belong to no province; use --national")
    if ref.province(code) is None:
        if ref.is_known_province(code):
            raise ScopeError(
                f"--province {code}: this province was merged into {ref.current_province(code)}; "
                f"give today's code"
            )
        current = ", ".join(p.code for p in ref.provinces_at() if p.code != ref.CENTRAL)
        raise ScopeError(f"--province {code}: unknown province code (today's: {current})")
    covered = sorted({p.code for p in ref.provinces() if _maps_to(p.code, code)})
    return Scope(code, tuple(covered))


def _maps_to(old: str, today: str) -> bool:
    try:
        return ref.current_province(old) == today
    except (KeyError, ValueError):
        return False


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ScopeError(
            f"analyst name {name!r}: use a letter then letters, digits or _ (at most 63)"
        )
    return name


def _in(column: str, codes: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(c) for c in codes)})"


def _by_agency(codes: tuple[str, ...], column: str = "agency_id") -> str:
    # agency ids are <province>-<type> (contracts): the province is the first two characters
    return _in(f"substring({column}, 1, 2)", codes)


def row_filters(scope: Scope) -> dict[str, str]:
    """Analyst object -> the condition on its rows for ``scope`` (a provincial scope only).

    The keys are what a provincial analyst can query; anything else (the national rollup,
    operations tables) is not in the scope's database at all.
    """
    codes = scope.codes
    assert scope.province is not None, "the national scope filters nothing"
    return {
        "events": _in("province_code", codes),
        "cases": _in("province_code", codes),
        # a transfer concerns both ends: sent from or received in the province
        "transfers": f"{_in('from_province_code', codes)} OR {_in('to_province_code', codes)}",
        "appraisals": _by_agency(codes),
        # the 'current' geography is keyed by today's code, 'historical' by the code at the time
        "rollup_province": (
            f"(geography = 'current' AND province_code = {scope.province!r}) OR "
            f"(geography = 'historical' AND {_in('province_code', codes)})"
        ),
        "agency_freshness": _by_agency(codes),
        "sequence_gaps": _by_agency(codes),
        "integrity_violations": _by_agency(codes),
    }


#: The platform tables behind each analyst object, with the row condition that ClickHouse's row
#: policies apply to them (ROW POLICY filters tables, and views are read with the reader's
#: policies, so filtering the tables filters every view over them).
POLICY_TABLES: dict[str, str] = {
    "events": "events",
    "cases_state": "cases",
    "transfers_state": "transfers",
    "appraisals_state": "appraisals",
    "rollup_province_state": "rollup_province",
    "integrity_violations_state": "integrity_violations",
    "agency_activity": "agency_freshness",
}
#: Views a provincial role may read (each over policy-filtered tables only).
POLICY_VIEWS = (
    "cases",
    "transfers",
    "appraisals",
    "rollup_province",
    "integrity_violations",
    "violating_events",
    "agency_freshness",
    "sequence_gaps",
)


def scope_views(scope: Scope, platform_database: str) -> list[str]:
    """Statements creating the scope's database of filtered views (idempotent)."""
    if scope.national:
        return []
    database = scope.database(platform_database)
    statements = [f"CREATE DATABASE IF NOT EXISTS {database}"]
    for name, condition in row_filters(scope).items():
        statements.append(
            f"CREATE OR REPLACE VIEW {database}.{name} AS "
            f"SELECT * FROM {platform_database}.{name} WHERE {condition}"
        )
    return statements


def clickhouse_statements(
    name: str,
    scope: Scope,
    platform_database: str,
    password_sha256_hex: str,
    platform_user: str,
    on_cluster: str = "",
) -> list[str]:
    """ClickHouse's own CREATE ROLE / ROW POLICY / GRANT / CREATE USER for one analyst.

    Idempotent (IF NOT EXISTS, OR REPLACE). Once a table has a row policy, users with none see
    no rows of it at all; so the national role (and the platform's own user, which writes and
    builds the rollups) gets a policy that lets every row through.
    """
    check_name(name)
    on = f" ON CLUSTER {on_cluster}" if on_cluster else ""
    db = platform_database
    role = scope.role
    statements = [
        f"CREATE ROLE IF NOT EXISTS {ALL_PROVINCES_ROLE}{on}",
        f"GRANT{on} SELECT ON {db}.* TO {ALL_PROVINCES_ROLE}",
        *(
            f"CREATE ROW POLICY OR REPLACE {ALL_PROVINCES_ROLE}{on} ON {db}.{table} "
            f"USING 1 AS PERMISSIVE TO {ALL_PROVINCES_ROLE}"
            for table in POLICY_TABLES
        ),
        f"GRANT{on} {ALL_PROVINCES_ROLE} TO {platform_user}",
    ]
    if not scope.national:
        conditions = _policy_conditions(scope)
        statements += [
            f"CREATE ROLE IF NOT EXISTS {role}{on}",
            *(
                f"CREATE ROW POLICY OR REPLACE {role}{on} ON {db}.{table} "
                f"USING {conditions[table]} AS PERMISSIVE TO {role}"
                for table in POLICY_TABLES
            ),
            *(f"GRANT{on} SELECT ON {db}.{table} TO {role}" for table in POLICY_TABLES),
            *(f"GRANT{on} SELECT ON {db}.{view} TO {role}" for view in POLICY_VIEWS),
            # A view read with its definer's rights would apply the definer's (unfiltered)
            # policies: the platform's views are read with the reader's.
            *(f"ALTER TABLE {db}.{view}{on} MODIFY SQL SECURITY INVOKER" for view in POLICY_VIEWS),
        ]
    statements += [
        f"CREATE USER IF NOT EXISTS {name}{on} IDENTIFIED WITH sha256_hash BY "
        f"'{password_sha256_hex}' DEFAULT DATABASE {db}",
        f"GRANT{on} {role} TO {name}",
        f"ALTER USER {name}{on} DEFAULT ROLE {role}",
    ]
    return statements


def _policy_conditions(scope: Scope) -> dict[str, str]:
    filters = row_filters(scope)
    return {table: filters[view] for table, view in POLICY_TABLES.items()}
