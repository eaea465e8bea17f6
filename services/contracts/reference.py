"""Reference data: provinces (with validity and successors), agency types and agencies.

The data ships as CSV under ``schemas/reference/``.  It is loaded once (``functools.cache``);
every function here is pure.

Agencies are ``<province code>-<type code>``.  Every province valid on a date, times every agency
type, is a known agency on that date, except where ``agencies_extra.csv`` has rows for the
agency id: those rows then decide its name, validity and successor.

Dates: ``valid_from``/``valid_to`` are inclusive ISO dates; an empty ``valid_from`` means "since
before the reference horizon", an empty ``valid_to`` means "still valid".  A code can have several
rows when its name changed (e.g. ``44`` was Quảng Bình until 2025-06-30 and is the merged Quảng Trị
from 2025-07-01); such a row names its own code as successor.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path

from services.contracts.schema import schemas_dir

AGENCY_ID_PATTERN = re.compile(r"^(?P<province>[0-9]{2})-(?P<type>[A-Z]+)$")
ROLES = ("detection", "investigation", "prosecution", "trial", "enforcement", "coordination")
CENTRAL = "00"


@dataclass(frozen=True, slots=True)
class Province:
    code: str
    name: str
    name_ascii: str
    valid_from: date | None
    valid_to: date | None
    successor_code: str | None

    def valid_at(self, at: date) -> bool:
        return (self.valid_from is None or self.valid_from <= at) and (
            self.valid_to is None or at <= self.valid_to
        )


@dataclass(frozen=True, slots=True)
class AgencyType:
    code: str
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class Agency:
    agency_id: str
    name: str
    province_code: str
    type_code: str
    valid_from: date | None
    valid_to: date | None
    successor_agency_id: str | None

    def valid_at(self, at: date) -> bool:
        return (self.valid_from is None or self.valid_from <= at) and (
            self.valid_to is None or at <= self.valid_to
        )


class ReferenceData:
    """Loaded reference data with lookup indexes (immutable by convention)."""

    __slots__ = (
        "provinces",
        "agency_types",
        "extra_agencies",
        "_by_code",
        "_extras_by_id",
        "_intervals",
    )

    def __init__(
        self,
        provinces: tuple[Province, ...],
        agency_types: dict[str, AgencyType],
        extra_agencies: tuple[Agency, ...],
    ) -> None:
        self.provinces = provinces
        self.agency_types = agency_types
        self.extra_agencies = extra_agencies
        by_code: dict[str, list[Province]] = {}
        for p in provinces:
            by_code.setdefault(p.code, []).append(p)
        self._by_code = {k: tuple(v) for k, v in by_code.items()}
        extras: dict[str, list[Agency]] = {}
        for a in extra_agencies:
            extras.setdefault(a.agency_id, []).append(a)
        self._extras_by_id = {k: tuple(v) for k, v in extras.items()}
        self._intervals: dict[str, tuple[tuple[date | None, date | None], ...]] = {}

    def province_rows(self, code: str) -> tuple[Province, ...]:
        return self._by_code.get(code, ())

    def extra_rows(self, agency_id: str) -> tuple[Agency, ...]:
        return self._extras_by_id.get(agency_id, ())


def _date(text: str) -> date | None:
    text = text.strip()
    return date.fromisoformat(text) if text else None


def _opt(text: str) -> str | None:
    text = text.strip()
    return text or None


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_reference(directory: Path | str) -> ReferenceData:
    """Load (uncached) the reference CSVs from ``directory``; raises ValueError on bad data."""
    directory = Path(directory)
    provinces = tuple(
        Province(
            code=r["code"].strip(),
            name=r["name"].strip(),
            name_ascii=r["name_ascii"].strip(),
            valid_from=_date(r["valid_from"]),
            valid_to=_date(r["valid_to"]),
            successor_code=_opt(r["successor_code"]),
        )
        for r in _read_csv(directory / "provinces.csv")
    )
    types = {}
    for r in _read_csv(directory / "agency_types.csv"):
        t = AgencyType(code=r["code"].strip(), name=r["name"].strip(), role=r["role"].strip())
        if t.role not in ROLES:
            raise ValueError(f"agency type {t.code}: unknown role {t.role!r}")
        types[t.code] = t
    extras = []
    for r in _read_csv(directory / "agencies_extra.csv"):
        agency_id = r["agency_id"].strip()
        m = AGENCY_ID_PATTERN.fullmatch(agency_id)
        if not m:
            raise ValueError(f"agencies_extra.csv: malformed agency_id {agency_id!r}")
        extras.append(
            Agency(
                agency_id=agency_id,
                name=r["name"].strip(),
                province_code=m["province"],
                type_code=m["type"],
                valid_from=_date(r["valid_from"]),
                valid_to=_date(r["valid_to"]),
                successor_agency_id=_opt(r["successor_agency_id"]),
            )
        )
    for p in provinces:
        if not re.fullmatch(r"[0-9]{2}", p.code):
            raise ValueError(f"provinces.csv: malformed code {p.code!r}")
    return ReferenceData(provinces, types, tuple(extras))


@cache
def reference() -> ReferenceData:
    """The shipped reference data, loaded once."""
    return load_reference(schemas_dir() / "reference")


def _today() -> date:
    return date.today()


# --------------------------------------------------------------------------- provinces


def provinces(ref: ReferenceData | None = None) -> tuple[Province, ...]:
    """Every province row (all codes, all validity periods), in file order."""
    return (ref or reference()).provinces


def provinces_at(at: date | None = None, ref: ReferenceData | None = None) -> list[Province]:
    """Provinces valid on ``at`` (default: today), one row per code, sorted by code; includes 00."""
    at = at or _today()
    return sorted((p for p in provinces(ref) if p.valid_at(at)), key=lambda p: p.code)


def province(
    code: str, at: date | None = None, ref: ReferenceData | None = None
) -> Province | None:
    """The row of province ``code`` valid on ``at`` (default today), or None."""
    at = at or _today()
    for p in (ref or reference()).province_rows(code):
        if p.valid_at(at):
            return p
    return None


def is_known_province(code: str, at: date | None = None, ref: ReferenceData | None = None) -> bool:
    """True when ``code`` is valid on ``at``; with ``at=None``, when it was ever valid."""
    rows = (ref or reference()).province_rows(code)
    if at is None:
        return bool(rows)
    return any(p.valid_at(at) for p in rows)


def current_province(code: str, at: date | None = None, ref: ReferenceData | None = None) -> str:
    """The province code that covers ``code``'s territory on ``at`` (default today).

    A code valid on ``at`` maps to itself; otherwise successors are followed until a code valid on
    ``at`` is reached (``current_province("34") == "33"``: Thái Bình is part of Hưng Yên).
    Raises KeyError for an unknown code and ValueError when no successor is valid on ``at``
    (e.g. asking for a date before the code existed).
    """
    ref = ref or reference()
    at = at or _today()
    seen: set[str] = set()
    current = code
    while True:
        rows = ref.province_rows(current)
        if not rows:
            raise KeyError(f"unknown province code {current!r}")
        if any(p.valid_at(at) for p in rows):
            return current
        seen.add(current)
        # follow the successor of the latest row that ended before ``at``
        ended = [p for p in rows if p.valid_to is not None and p.valid_to < at and p.successor_code]
        if not ended:
            raise ValueError(f"province {code!r} has no successor valid on {at.isoformat()}")
        nxt = max(ended, key=lambda p: p.valid_to).successor_code  # type: ignore[arg-type, return-value]
        if nxt in seen and nxt != current:
            raise ValueError(f"successor cycle at province {nxt!r}")
        if nxt == current:
            raise ValueError(f"province {code!r} has no row valid on {at.isoformat()}")
        current = nxt  # type: ignore[assignment]


# --------------------------------------------------------------------------- agencies


def agency_types(ref: ReferenceData | None = None) -> dict[str, AgencyType]:
    return (ref or reference()).agency_types


def parse_agency_id(agency_id: str) -> tuple[str, str]:
    """``"20-POLICE"`` -> ``("20", "POLICE")``; ValueError when malformed."""
    m = AGENCY_ID_PATTERN.fullmatch(agency_id) if isinstance(agency_id, str) else None
    if not m:
        raise ValueError(f"malformed agency_id {agency_id!r}: expected <2-digit province>-<TYPE>")
    return m["province"], m["type"]


def province_of(agency_id: str) -> str:
    """Province code of an agency id (``"20-POLICE"`` -> ``"20"``)."""
    return parse_agency_id(agency_id)[0]


def agency_type(agency_id: str) -> str:
    """Type code of an agency id (``"20-POLICE"`` -> ``"POLICE"``)."""
    return parse_agency_id(agency_id)[1]


def agency_role(agency_id: str, ref: ReferenceData | None = None) -> str | None:
    """Role of the agency's type (detection, investigation, ...), None for an unknown type."""
    t = agency_types(ref).get(agency_type(agency_id))
    return t.role if t else None


def _derived_agency(
    agency_id: str, prov: Province, type_: AgencyType, ref: ReferenceData
) -> Agency:
    successor = None
    if prov.successor_code and prov.successor_code != prov.code:
        successor = f"{prov.successor_code}-{type_.code}"
    return Agency(
        agency_id=agency_id,
        name=f"{type_.name} – {prov.name}",
        province_code=prov.code,
        type_code=type_.code,
        valid_from=prov.valid_from,
        valid_to=prov.valid_to,
        successor_agency_id=successor,
    )


def agency_versions(agency_id: str, ref: ReferenceData | None = None) -> tuple[Agency, ...]:
    """Every validity period of an agency (empty tuple when never known)."""
    ref = ref or reference()
    try:
        code, type_code = parse_agency_id(agency_id)
    except ValueError:
        return ()
    extras = ref.extra_rows(agency_id)
    if extras:
        return extras
    type_ = ref.agency_types.get(type_code)
    if type_ is None:
        return ()
    return tuple(_derived_agency(agency_id, p, type_, ref) for p in ref.province_rows(code))


def agency(
    agency_id: str, at: date | None = None, ref: ReferenceData | None = None
) -> Agency | None:
    """The agency (with a display name) valid on ``at`` (default today), or None."""
    at = at or _today()
    for a in agency_versions(agency_id, ref):
        if a.valid_at(at):
            return a
    return None


def agency_intervals(
    agency_id: str, ref: ReferenceData | None = None
) -> tuple[tuple[date | None, date | None], ...]:
    """The (valid_from, valid_to) of each version of ``agency_id``, both inclusive, None open;
    empty for an unknown agency. Remembered per reference data (the hot path of validation)."""
    ref = ref or reference()
    intervals = ref._intervals.get(agency_id)
    if intervals is None:
        intervals = tuple((a.valid_from, a.valid_to) for a in agency_versions(agency_id, ref))
        if len(ref._intervals) < 100_000:  # bounded memo
            ref._intervals[agency_id] = intervals
    return intervals


def valid_on(intervals: tuple[tuple[date | None, date | None], ...], at: date) -> bool:
    """Whether ``at`` falls in one of the intervals (as `agency_intervals` gives them)."""
    for start, end in intervals:
        if (start is None or start <= at) and (end is None or at <= end):
            return True
    return False


def is_known_agency(
    agency_id: str, at: date | None = None, ref: ReferenceData | None = None
) -> bool:
    """True when ``agency_id`` is a known agency on ``at``; with ``at=None``, if it ever was."""
    intervals = agency_intervals(agency_id, ref)
    return bool(intervals) if at is None else valid_on(intervals, at)


def current_agency(agency_id: str, at: date | None = None, ref: ReferenceData | None = None) -> str:
    """The agency that carries on ``agency_id``'s work on ``at`` (default today).

    Follows explicit ``successor_agency_id`` rows of agencies_extra.csv, else the province's
    successors with the same type (``current_agency("34-POLICE") == "33-POLICE"``).
    """
    ref = ref or reference()
    at = at or _today()
    current = agency_id
    for _ in range(32):
        versions = agency_versions(current, ref)
        if not versions:
            raise KeyError(f"unknown agency {current!r}")
        if any(a.valid_at(at) for a in versions):
            return current
        if ref.extra_rows(current):
            ended = [
                a for a in versions if a.valid_to and a.valid_to < at and a.successor_agency_id
            ]
            if not ended:
                raise ValueError(f"agency {agency_id!r} has no successor valid on {at.isoformat()}")
            current = max(ended, key=lambda a: a.valid_to).successor_agency_id  # type: ignore[arg-type, assignment]
        else:
            code, type_code = parse_agency_id(current)
            current = f"{current_province(code, at, ref)}-{type_code}"
    raise ValueError(f"agency successor chain too long from {agency_id!r}")


def agencies_at(at: date | None = None, ref: ReferenceData | None = None) -> list[str]:
    """Every agency id known on ``at`` (default today), sorted."""
    ref = ref or reference()
    at = at or _today()
    ids = {f"{p.code}-{t}" for p in ref.provinces if p.valid_at(at) for t in ref.agency_types}
    ids |= {a.agency_id for a in ref.extra_agencies}
    return sorted(i for i in ids if is_known_agency(i, at, ref))


def all_agencies(ref: ReferenceData | None = None) -> list[str]:
    """Every agency id that was ever known (historical and current), sorted.

    This is the set of agency topics/subjects the platform may need to create.
    """
    ref = ref or reference()
    ids = {f"{p.code}-{t}" for p in ref.provinces for t in ref.agency_types}
    ids |= {a.agency_id for a in ref.extra_agencies}
    return sorted(i for i in ids if is_known_agency(i, None, ref))
