"""Seeded scenario generator: a realistic multi-year, multi-province history of case events.

    from services.agency.generator import GeneratorOptions, generate, write_jsonl
    summary = write_jsonl(GeneratorOptions(seed=7, events=1_000_000), "/tmp/history.jsonl")
    for event in generate(GeneratorOptions(seed=7, cases=100)):   # JSON-form dicts
        ...

What it simulates (one case at a time, every draw from seeded ``random.Random`` streams):

* Cases open on working days (growth trend, Tết dip) in provinces weighted by population, plus
  central cases (province ``00``), at inspectorates, state audit, party inspection commissions,
  internal-affairs commissions, police and customs/tax/market/forest agencies.
* Paths: administrative handling (inspection conclusion, recovery, resolution); party discipline
  (PIC decisions with counts for members and organizations); criminal: transfer to police
  (``signs_of_crime``) → ``investigation_opened`` → appraisal (slow) → ``suspects_charged`` →
  procuracy (``prosecution``, possibly returned for supplementary investigation) → ``indicted`` →
  court (``trial``) → ``first_instance_verdict`` → sometimes an appeal at ``00-COURT`` →
  ``case_resolved`` → enforcement (``CJE``) with asset recovery well below 100 %.
  Side branches send files to the party inspection commission (``party_discipline``).
  Prominent cases may be put under steering-committee monitoring (``00-SC`` or ``<prov>-SC``).
  A few resolved cases are reopened. Cases still running at ``end`` stay pending.
* Transfer lags are lognormal (median a few days) mixed with a stalled tail (months) and some
  transfers that are never received; appraisals take weeks to many months.
* After the 2025-07-01 merger the agencies of a merged-away province no longer exist: the case
  continues under the successor province's agencies (``reference.current_province``); a transfer
  sent before the merger may be received by the successor agency.

Output order: with ``sorted=True`` events are in event-time order; with ``sorted=False`` they are
in *delivery order*: every agency publishes its own events in batches (hourly, daily or weekly),
so each agency's events stay in order while the file as a whole is not in event-time order.
``sequence`` is per agency, starts at 1 and increases by 1 in event-time order of that agency's
events (no gaps). ``duplicates`` re-emits a fraction of lines byte-identical (same event_id)
a little later; ``out_of_order`` emits a fraction of lines later than their place (some
``case_transferred`` lines after their ``transfer_received``). The unique events depend only on
``seed``, ``start``, ``end``, the size and ``provinces``: the perturbation options and ``sorted``
only change which lines are repeated and their order.

Streaming: cases are simulated in opening order and each event goes to one of up to 1000
time-bucket spill files in a temporary directory (``tmp_dir``; they take about the size of the
output and are deleted as they are consumed); each bucket (~150k events) is then sorted in memory
and written. Memory (~250 MB) does not grow with the size up to ~150M events.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import json
import math
import os
import random
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from services.contracts import reference as _ref
from services.contracts.events import EVENT_TYPES

DEFAULT_EVENTS = 100_000
#: Local time of every agency (Vietnam, no DST).
TZ_OFFSET_SECONDS = 7 * 3600
#: Agencies whose systems write timestamps in UTC (``Z``); all others write ``+07:00``.
UTC_AGENCIES = frozenset({"00-AUDIT", "00-CUSTOMS", "00-TAX", "79-CUSTOMS"})

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY = 86_400
_BUCKET_TARGET = 150_000  # events per spill bucket (sorted in memory)
_MAX_BUCKETS = 1_000
_PILOT_CASES = 4_000

# Approximate population in millions (2023) of the 63 pre-merger provinces: the default weights.
PROVINCE_WEIGHTS: dict[str, float] = {
    "01": 8.5, "02": 0.9, "04": 0.55, "06": 0.33, "08": 0.8, "10": 0.77, "11": 0.64,
    "12": 0.48, "14": 1.29, "15": 0.84, "17": 0.88, "19": 1.33, "20": 0.8, "22": 1.36,
    "24": 1.9, "25": 1.5, "26": 1.2, "27": 1.5, "30": 1.95, "31": 2.1, "33": 1.3,
    "34": 1.87, "35": 0.88, "36": 1.88, "37": 1.0, "38": 3.7, "40": 3.4, "42": 1.3,
    "44": 0.9, "45": 0.65, "46": 1.16, "48": 1.2, "49": 1.5, "51": 1.25, "52": 1.5,
    "54": 0.88, "56": 1.25, "58": 0.6, "60": 1.25, "62": 0.58, "64": 1.6, "66": 1.9,
    "67": 0.67, "68": 1.33, "70": 1.03, "72": 1.19, "74": 2.76, "75": 3.3, "77": 1.2,
    "79": 9.4, "80": 1.73, "82": 1.8, "83": 1.3, "84": 1.0, "86": 1.0, "87": 1.6,
    "89": 1.9, "91": 1.75, "92": 1.25, "93": 0.73, "94": 1.2, "95": 0.92, "96": 1.2,
}  # fmt: skip
#: Share of cases handled by central agencies (province ``00``) in the default mix.
CENTRAL_SHARE = 0.05


# --------------------------------------------------------------------------- options / results


@dataclass(frozen=True)
class GeneratorOptions:
    """What to generate. ``events`` is an approximate target of output lines; ``cases`` an exact
    number of cases; without either, ``DEFAULT_EVENTS`` events."""

    seed: int = 1
    start: date = date(2021, 1, 1)
    end: date = date(2025, 12, 31)
    events: int | None = None
    cases: int | None = None
    provinces: tuple[str, ...] | None = None
    duplicates: float = 0.0
    out_of_order: float = 0.0
    violations: float = 0.0  # share of cases given one forged event (authority.py rules)
    sorted: bool = True
    tmp_dir: str | None = None
    progress: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def validated(self, today: date | None = None) -> GeneratorOptions:
        """The options with defaults filled in; ValueError naming the bad option."""
        today = today or date.today()
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer (got {self.seed!r})")
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        if self.end >= today:
            raise ValueError(
                f"end {self.end} must be before today ({today}): events are never in the future"
            )
        if self.start.year < 1971:
            raise ValueError("start must be 1971-01-01 or later")
        if self.events is not None and self.cases is not None:
            raise ValueError("give events or cases, not both")
        for name in ("events", "cases"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer (got {value!r})")
        for name in ("duplicates", "out_of_order", "violations"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.5:
                raise ValueError(f"{name} must be a fraction between 0 and 0.5 (got {value!r})")
        provinces = self.provinces
        if provinces is not None:
            provinces = tuple(dict.fromkeys(p.strip() for p in provinces if p.strip()))
            if not provinces:
                raise ValueError("provinces is empty")
            for code in provinces:
                if not _ref.is_known_province(code):
                    raise ValueError(f"unknown province code {code!r}")
        events = self.events
        if events is None and self.cases is None:
            events = DEFAULT_EVENTS
        return replace(self, events=events, provinces=provinces)


@dataclass
class Summary:
    """What ``write_jsonl`` wrote."""

    path: str = ""
    lines: int = 0  # lines written (unique events + duplicates)
    events: int = 0  # unique events
    duplicates: int = 0  # extra lines repeating an earlier event_id
    out_of_order: int = 0  # lines emitted later than their place
    cases: int = 0
    agencies: int = 0
    by_type: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_TYPES, 0))
    seconds: float = 0.0

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "lines": self.lines,
            "events": self.events,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "cases": self.cases,
            "agencies": self.agencies,
            "by_type": dict(self.by_type),
            "seconds": round(self.seconds, 3),
            "lines_per_second": round(self.lines_per_second),
        }


# --------------------------------------------------------------------------- distributions


def _table(pairs: dict[str, float]) -> tuple[tuple[float, ...], tuple[str, ...], float]:
    cum, acc = [], 0.0
    for weight in pairs.values():
        acc += weight
        cum.append(acc)
    return tuple(cum), tuple(pairs), acc


_Table = tuple[tuple[float, ...], tuple[str, ...], float]


def _pick(table: _Table, r: Callable[[], float]) -> str:
    cum, values, total = table
    return values[bisect.bisect_right(cum, r() * total)]


_OPENERS_PROVINCIAL = _table(
    {"INSP": 0.27, "AUDIT": 0.08, "PIC": 0.27, "IAC": 0.04, "POLICE": 0.17,
     "CUSTOMS": 0.03, "TAX": 0.05, "MARKET": 0.04, "FOREST": 0.05}
)  # fmt: skip
_OPENERS_CENTRAL = _table(
    {"INSP": 0.25, "AUDIT": 0.2, "PIC": 0.18, "IAC": 0.08, "POLICE": 0.22,
     "CUSTOMS": 0.03, "TAX": 0.04}
)  # fmt: skip
_DETECTOR_ORIGINS = _table(
    {"inspection": 0.75, "denunciation": 0.14, "investigation": 0.04, "press": 0.03, "other": 0.04}
)
_ORIGINS: dict[str, _Table] = {
    "INSP": _table({"inspection": 0.72, "denunciation": 0.15, "supervision": 0.06, "press": 0.04,
                    "other": 0.03}),
    "AUDIT": _table({"audit": 0.95, "supervision": 0.02, "other": 0.03}),
    "PIC": _table({"supervision": 0.45, "inspection": 0.35, "denunciation": 0.15, "press": 0.05}),
    "IAC": _table({"supervision": 0.35, "denunciation": 0.3, "press": 0.25, "other": 0.1}),
    "POLICE": _table({"denunciation": 0.45, "investigation": 0.4, "press": 0.1, "other": 0.05}),
    "CUSTOMS": _DETECTOR_ORIGINS,
    "TAX": _DETECTOR_ORIGINS,
    "MARKET": _DETECTOR_ORIGINS,
    "FOREST": _DETECTOR_ORIGINS,
}  # fmt: skip
_FIELDS_DEFAULT = _table(
    {"land": 0.24, "construction": 0.18, "finance": 0.14, "banking": 0.07, "health": 0.07,
     "education": 0.06, "transport": 0.06, "minerals": 0.06, "other": 0.12}
)  # fmt: skip
_FIELDS: dict[str, _Table] = {
    "AUDIT": _table({"finance": 0.35, "construction": 0.25, "land": 0.15, "transport": 0.08,
                     "health": 0.06, "education": 0.05, "banking": 0.06}),
    "TAX": _table({"finance": 0.8, "other": 0.2}),
    "CUSTOMS": _table({"finance": 0.6, "other": 0.4}),
    "MARKET": _table({"other": 0.6, "health": 0.25, "finance": 0.15}),
    "FOREST": _table({"land": 0.5, "other": 0.4, "minerals": 0.1}),
}  # fmt: skip
_ENTERPRISE_SUBJECTS = _table({"enterprise": 0.8, "official": 0.1, "unknown": 0.1})
_SUBJECTS: dict[str, _Table] = {
    "PIC": _table({"party_member": 0.68, "party_organization": 0.27, "official": 0.05}),
    "INSP": _table({"official": 0.45, "enterprise": 0.25, "party_member": 0.15,
                    "party_organization": 0.03, "unknown": 0.12}),
    "AUDIT": _table({"official": 0.55, "enterprise": 0.35, "unknown": 0.1}),
    "IAC": _table({"official": 0.5, "party_member": 0.3, "enterprise": 0.1, "unknown": 0.1}),
    "POLICE": _table({"official": 0.35, "enterprise": 0.35, "unknown": 0.25,
                      "party_member": 0.05}),
    "CUSTOMS": _ENTERPRISE_SUBJECTS,
    "TAX": _ENTERPRISE_SUBJECTS,
    "MARKET": _ENTERPRISE_SUBJECTS,
    "FOREST": _table({"unknown": 0.5, "enterprise": 0.3, "official": 0.2}),
}  # fmt: skip
#: Probability that a detector's case shows signs of crime (before the prominence bonus).
_P_CRIME = {"INSP": 0.22, "AUDIT": 0.12, "CUSTOMS": 0.25, "TAX": 0.18, "MARKET": 0.15,
            "FOREST": 0.3}  # fmt: skip
_ADMIN_OUTCOMES = _table({"administrative": 0.7, "no_violation": 0.24, "merged": 0.02,
                          "other": 0.04})  # fmt: skip
_APPRAISAL_KINDS = _table({"valuation": 0.6, "forensic_accounting": 0.25, "technical": 0.15})
_MEMBER_FORMS = _table({"reprimand": 0.42, "warning": 0.33, "dismissal": 0.13, "expulsion": 0.12})
_ORG_FORMS = _table({"reprimand": 0.65, "warning": 0.35})
_PARTY_SUBJECTS = frozenset({"party_member", "party_organization", "official"})

#: Random UUIDs: keep 122 random bits, set version 4 and the RFC 4122 variant.
_UUID_KEEP = ~((0xF << 76) | (0xC << 60))
_UUID_SET = (0x4 << 76) | (0x8 << 60)
_HMS: list[str] = []
#: Standard normal quantiles at (i + 0.5) / 2**16: ``_NORMALS[getrandbits(16)]`` is a fast draw.
_NORMALS: list[float] = []


def _normals() -> list[float]:
    if not _NORMALS:
        from statistics import NormalDist

        inv = NormalDist().inv_cdf
        _NORMALS.extend(inv((i + 0.5) / 65_536) for i in range(65_536))
    return _NORMALS


def _hms_table() -> list[str]:
    if not _HMS:
        _HMS.extend(
            f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)
        )
    return _HMS


def _day_of(d: date) -> int:
    return d.toordinal() - _EPOCH_ORDINAL


def _date_of(day: int) -> date:
    return date.fromordinal(day + _EPOCH_ORDINAL)


# --------------------------------------------------------------------------- geography


def _province_timeline(code: str) -> list[tuple[int, str]]:
    """[(first local day, province code)] covering ``code``'s territory over time."""
    ref = _ref.reference()
    out: list[tuple[int, str]] = [(-(10**9), code)]
    current = code
    for _ in range(8):
        rows = ref.province_rows(current)
        ends = [p.valid_to for p in rows]
        if not rows or any(e is None for e in ends):
            break
        nxt_date = max(e for e in ends if e is not None) + timedelta(days=1)
        nxt = _ref.current_province(code, nxt_date)
        if nxt == current:
            break
        out.append((_day_of(nxt_date), nxt))
        current = nxt
    return out


class _Geography:
    """Province weights and the agency id of (province, type) on a day, merger included."""

    def __init__(self, provinces: tuple[str, ...] | None) -> None:
        ref = _ref.reference()
        all_codes = list(dict.fromkeys(p.code for p in ref.provinces))
        self.switch: dict[str, list[tuple[int, str]]] = {}
        for code in all_codes:
            timeline = _province_timeline(code)
            if len(timeline) > 1:
                self.switch[code] = timeline[1:]
        if provinces is None:
            pre_merger = [p.code for p in _ref.provinces_at(date(2025, 6, 30)) if p.code != "00"]
            weights = {code: PROVINCE_WEIGHTS.get(code, 1.0) for code in pre_merger}
            total = sum(weights.values())
            weights["00"] = total * CENTRAL_SHARE / (1 - CENTRAL_SHARE)
        else:
            total = sum(PROVINCE_WEIGHTS.get(c, 1.0) for c in provinces if c != "00") or 1.0
            weights = {
                c: (total * CENTRAL_SHARE if c == "00" else PROVINCE_WEIGHTS.get(c, 1.0))
                for c in provinces
            }
            if list(weights) == ["00"]:
                weights["00"] = 1.0
        self.table = _table(weights)

    def province(self, code: str, day: int) -> str:
        timeline = self.switch.get(code)
        if timeline is not None:
            for first, successor in reversed(timeline):
                if day >= first:
                    return successor
        return code


# --------------------------------------------------------------------------- the simulation


class _Spill:
    """Time buckets of spill lines ``key<TAB>agency<TAB>ctl<TAB>head<TAB>tail`` (head + sequence +
    tail is the output line); kept in lists and appended to one file per bucket now and then."""

    FLUSH_LINES = 200_000

    def __init__(self, paths: list[str], t0: int, width: int, delivery: bool) -> None:
        self.paths = paths
        self.t0 = t0
        self.width = width
        self.last = len(paths) - 1
        self.delivery = delivery
        self.buckets: list[list[str]] = [[] for _ in paths]
        self.pending = 0
        self.batches: dict[str, tuple[int, int]] = {}

    def deliver(self, agency: str, t: int) -> int:
        """Delivery time: each agency publishes in batches (hourly, daily or weekly)."""
        batch = self.batches.get(agency)
        if batch is None:
            crc = zlib.crc32(agency.encode())
            period = (3_600, _DAY, _DAY, 7 * _DAY)[crc % 4]
            batch = self.batches[agency] = (period, (crc >> 8) % period)
        period, phase = batch
        return ((t - phase) // period + 1) * period + phase

    def flush(self) -> None:
        for path, bucket in zip(self.paths, self.buckets, strict=True):
            if bucket:
                bucket.append("")
                with open(path, "a", encoding="ascii") as f:
                    f.write("\n".join(bucket))
                bucket.clear()
        self.pending = 0


class _Sim:
    """Simulates cases; every event goes to ``spill`` (or is only counted when it is None)."""

    def __init__(
        self,
        geo: _Geography,
        rng: random.Random,
        first_day: int,
        cutoff: int,
        *,
        spill: _Spill | None,
        hold_p: float = 0.0,
        prng: random.Random | None = None,
        violations: float = 0.0,
        forge_rng: random.Random | None = None,
    ) -> None:
        self.geo = geo
        self.r = rng.random
        self.bits = rng.getrandbits
        self.normals = _normals()
        self.beta = rng.betavariate
        self.cutoff = cutoff
        self.spill = spill
        self.tb = 0
        self.hold_p = hold_p
        self.prng = prng.random if prng is not None else None
        # Forgeries draw from their own stream, so a history without them is unchanged.
        self.violations = violations
        self.forge = forge_rng.random if forge_rng is not None else None
        self.forge_bits = forge_rng.getrandbits if forge_rng is not None else rng.getrandbits
        self.base_day = first_day - 1
        last_day = cutoff // _DAY
        self.dates = [_date_of(d).isoformat() for d in range(self.base_day, last_day + 1)]
        hms = _hms_table()
        self.hms_local = [f"{x}+07:00" for x in hms]
        self.hms_z = [f"{x}Z" for x in hms]
        self.switch = geo.switch
        self.counts = dict.fromkeys(EVENT_TYPES, 0)
        self.total = 0
        self.cases = 0
        self.case_numbers: dict[tuple[str, str], int] = {}
        self.transfer_numbers: dict[str, int] = {}
        self.appraisal_numbers: dict[str, int] = {}
        self.cid = ""
        self.pace = 1.0  # the current case's slowness (prominent cases are complex and slow)
        self._scale = {year: max(0.75, 1.25 - 0.1 * (year - 2021)) for year in range(1971, 2200)}

    # ---- primitives

    def _agency(self, prov: str, typ: str, day: int) -> str:
        if prov in self.geo.switch:
            prov = self.geo.province(prov, day)
        return f"{prov}-{typ}"

    def _e(self, t: int, prov: str, typ: str, etype: str, payload: str, ctl: str = "") -> bool:
        """Emit one event at local time ``t`` (seconds); False when after the cutoff."""
        if t > self.cutoff:
            return False
        self.total += 1
        self.counts[etype] += 1
        spill = self.spill
        if spill is None:
            return True
        day = t // _DAY
        if prov in self.switch:
            prov = self.geo.province(prov, day)
        agency = f"{prov}-{typ}"
        if agency in UTC_AGENCIES:
            u = t - TZ_OFFSET_SECONDS
            ud = u // _DAY
            dstr, hstr = self.dates[ud - self.base_day], self.hms_z[u - ud * _DAY]
        else:
            dstr, hstr = self.dates[day - self.base_day], self.hms_local[t - day * _DAY]
        h = f"{self.bits(128) & _UUID_KEEP | _UUID_SET:032x}"
        self.tb = tb = self.tb + 1
        if spill.delivery:
            d = spill.deliver(agency, t)
            b = min((d - spill.t0) // spill.width, spill.last)
            key = f"{d << 72 | t << 40 | tb:026x}"
        else:
            b = (t - spill.t0) // spill.width
            key = f"{t << 40 | tb:018x}"
        spill.buckets[b].append(
            f'{key}\t{agency}\t{ctl}\t{{"event_id":"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-'
            f'{h[20:]}","event_type":"{etype}","case_id":"{self.cid}","agency_id":"{agency}",'
            f'"occurred_at":"{dstr}T{hstr}","sequence":\t,"payload":{payload}}}'
        )
        spill.pending += 1
        if spill.pending >= spill.FLUSH_LINES:
            spill.flush()
        return True

    def _ln(self, median: float, sigma: float) -> float:
        return median * math.exp(sigma * self.normals[self.bits(16)])

    def _at(self, t: int, lag_days: float) -> int:
        """The first plausible office moment about ``lag_days`` after ``t`` (strictly later)."""
        r = self.r
        day = (t + int(lag_days * self.pace * _DAY)) // _DAY
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
        if weekday >= 5 and r() < 0.93:
            day += 7 - weekday
        u = r()
        if u < 0.46:
            tod = 27_000 + int(r() * 14_400)  # 07:30-11:30
        elif u < 0.92:
            tod = 48_600 + int(r() * 12_600)  # 13:30-17:00
        elif u < 0.96:
            tod = 41_400 + int(r() * 7_200)  # lunch
        else:
            tod = 61_200 + int(r() * 14_400)  # evening
        result = day * _DAY + tod
        if result <= t:
            result = t + 60 + int(r() * 5_400)
        return result

    def _year(self, t: int) -> str:
        return self.dates[t // _DAY - self.base_day][:4]

    def _lag_scale(self, t: int) -> float:
        """Lags shrink over the years (digitised records, the steering committees' pressure)."""
        return self._scale.get(int(self._year(t)), 1.0)

    def _count(self, median: float, sigma: float, cap: int) -> int:
        return max(1, min(cap, round(median * math.exp(sigma * self.normals[self.bits(16)]))))

    @staticmethod
    def _money(x: float) -> int:
        return max(0, min(10**15, int(x) // 1_000_000 * 1_000_000))

    # ---- building blocks

    def _transfer(
        self,
        t: int,
        sprov: str,
        styp: str,
        rprov: str,
        rtyp: str,
        reason: str,
        *,
        median: float,
        stall: float,
        never: float,
        returned: float,
    ) -> tuple[str | None, int]:
        """Transfer, then receipt or return. -> ("received" | "returned:<reason>" | None, t)."""
        if t > self.cutoff:
            return None, t
        r = self.r
        day = t // _DAY
        sender = self._agency(sprov, styp, day)
        receiver = self._agency(rprov, rtyp, day)
        n = self.transfer_numbers.get(sender, 0) + 1
        self.transfer_numbers[sender] = n
        tid = f"T-{sender}-{n:06d}"
        sent = f'{{"transfer_id":"{tid}","to_agency_id":"{receiver}","reason":"{reason}"}}'
        u = r()
        if u < never:  # never acknowledged: pending for ever
            self._e(t, sprov, styp, "case_transferred", sent)
            return None, t
        scale = self._lag_scale(t) * (1.5 if (sprov == "00") != (rprov == "00") else 1.0)
        stalled = u < never + stall  # stalled between agencies: months
        lag = self._ln(50.0, 0.7) * scale if stalled else self._ln(median, 0.9) * scale
        tr = self._at(t, lag)
        is_returned = r() < returned
        hold = ""
        if (
            self.prng is not None
            and not is_returned
            and tr <= self.cutoff
            and tr - t <= 30 * _DAY
            and self.prng() < self.hold_p
        ):
            hold = tid
        self._e(t, sprov, styp, "case_transferred", sent, "H" + hold if hold else "")
        ack = f'{{"transfer_id":"{tid}"}}'
        if is_returned:
            if r() < 0.5:
                self._e(tr, rprov, rtyp, "transfer_received", ack)
                tr = self._at(tr, self._ln(12.0, 0.8))
            why = "jurisdiction" if r() < 0.5 else "other"
            self._e(
                tr, rprov, rtyp, "transfer_returned", f'{{"transfer_id":"{tid}","reason":"{why}"}}'
            )
            return "returned:" + why, tr
        self._e(tr, rprov, rtyp, "transfer_received", ack, "R" + hold if hold else "")
        return "received", tr

    def _resolve(self, t: int, prov: str, typ: str, outcome: str) -> None:
        if not self._e(t, prov, typ, "case_resolved", f'{{"outcome":"{outcome}"}}'):
            return
        r = self.r
        if outcome != "convicted" and r() < 0.03:
            t = self._at(t, self._ln(150.0, 0.7))
            why = "signs_of_crime" if r() < 0.5 else "other"
            if self._e(t, prov, typ, "case_reopened", f'{{"reason":"{why}"}}') and r() < 0.6:
                again = outcome if r() < 0.6 else "other"
                self._e(
                    self._at(t, self._ln(90.0, 0.7)),
                    prov,
                    typ,
                    "case_resolved",
                    f'{{"outcome":"{again}"}}',
                )

    def _decisions(self, t: int, prov: str, subject: str) -> int:
        """Party discipline decisions by ``prov``-PIC from ``t``; returns the last time."""
        r = self.r
        org_first = subject == "party_organization"
        if org_first or r() < 0.2:
            form = _pick(_ORG_FORMS, r)
            count = 1 if r() < 0.85 else 2
            self._e(t, prov, "PIC", "discipline_imposed",
                    f'{{"target":"party_organization","count":{count},"form":"{form}"}}')  # fmt: skip
            t = self._at(t, self._ln(7.0, 0.8))
        if not org_first or r() < 0.8:
            for _ in range(1 if r() < 0.75 else 2):
                form = _pick(_MEMBER_FORMS, r)
                count = self._count(1.6, 0.9, 60)
                self._e(t, prov, "PIC", "discipline_imposed",
                        f'{{"target":"party_member","count":{count},"form":"{form}"}}')  # fmt: skip
                t = self._at(t, self._ln(10.0, 0.8))
        return t

    def _party_side(self, t: int, prov: str, styp: str, subject: str) -> None:
        """Files about party members sent to the party inspection commission."""
        state, t = self._transfer(t, prov, styp, prov, "PIC", "party_discipline",
                                  median=4.0, stall=0.08, never=0.02, returned=0.03)  # fmt: skip
        if state == "received":
            self._decisions(self._at(t, self._ln(45.0, 0.7)), prov, subject)

    def _appraisal(self, t: int, prov: str, typ: str) -> int:
        t = self._at(t, self._ln(12.0, 0.8))
        if t > self.cutoff:
            return t
        agency = self._agency(prov, typ, t // _DAY)
        n = self.appraisal_numbers.get(agency, 0) + 1
        self.appraisal_numbers[agency] = n
        payload = (
            f'{{"appraisal_id":"A-{agency}-{n:06d}","kind":"{_pick(_APPRAISAL_KINDS, self.r)}"}}'
        )
        self._e(t, prov, typ, "appraisal_requested", payload)
        done = self._at(t, self._ln(70.0, 0.85) * self._lag_scale(t))
        self._e(done, prov, typ, "appraisal_completed", payload)
        return done

    def _assets(self, t: int, prov: str, typ: str, identified: int, recovered: int) -> bool:
        return self._e(t, prov, typ, "assets_recovered",
                       f'{{"identified_vnd":{identified},"recovered_vnd":{recovered}}}')  # fmt: skip

    # ---- paths

    def case(self, t0: int, prov: str) -> None:
        """One case opened at local time ``t0`` in province ``prov`` (valid on that day)."""
        r = self.r
        self.cases += 1
        central = prov == "00"
        opener = _pick(_OPENERS_CENTRAL if central else _OPENERS_PROVINCIAL, r)
        agency0 = f"{prov}-{opener}"
        year = self._year(t0)
        n = self.case_numbers.get((agency0, year), 0) + 1
        self.case_numbers[(agency0, year)] = n
        self.cid = f"{agency0}/{year}/{n:04d}"
        origin = _pick(_ORIGINS[opener], r)
        fld = _pick(_FIELDS.get(opener, _FIELDS_DEFAULT), r)
        subject = _pick(_SUBJECTS[opener], r)
        damage = self._money(self._ln(3e9, 1.7) * (10.0 if central else 1.0))
        prominent = r() < (0.35 if central else 0.05) + (0.3 if damage > 50e9 else 0.0)
        if prominent:
            damage = self._money(damage * 3)
        self.pace = self._ln(1.0, 0.25) * (1.6 if prominent else 1.0)
        known = r() < (0.85 if prominent else 0.6)
        payload = (
            f'{{"origin":"{origin}","field":"{fld}","subject_kind":"{subject}",'
            f'"prominent":{"true" if prominent else "false"}'
            + (f',"damage_vnd":{damage}}}' if known else "}")
        )
        self._e(t0, prov, opener, "case_opened", payload)
        if prominent and r() < 0.45:
            level_central = central or r() < 0.15
            self._e(
                self._at(t0, self._ln(40.0, 0.8)),
                "00" if level_central else prov,
                "SC",
                "monitoring_assigned",
                '{"level":"central"}' if level_central else '{"level":"provincial"}',
            )
        if opener == "POLICE":
            self._crime(t0, prov, None, damage, subject)
        elif opener == "PIC":
            self._pic(t0, prov, damage, subject, prominent)
        elif opener == "IAC":
            self._iac(t0, prov, damage, subject)
        else:
            self._detector(t0, prov, opener, damage, subject, prominent)
        if self.forge is not None and self.forge() < self.violations:
            # An agency that never held the case "resolves" it an hour after its opening: a
            # violation of the authority rules (not a holder), for tests and the demo.
            forger = "AUDIT" if opener != "AUDIT" else "INSP"
            bits, self.bits = self.bits, self.forge_bits  # its event id from the same stream
            try:
                self._e(t0 + 3600, prov, forger, "case_resolved", '{"outcome":"no_violation"}')
            finally:
                self.bits = bits

    def _detector(
        self, t: int, prov: str, opener: str, damage: int, subject: str, prominent: bool
    ) -> None:
        r = self.r
        if r() < _P_CRIME[opener] + (0.5 if prominent else 0.0):
            t = self._at(t, self._ln(40.0, 0.8))  # verification before transfer
            if subject in _PARTY_SUBJECTS and r() < 0.2:
                self._party_side(self._at(t, self._ln(10.0, 0.8)), prov, opener, subject)
            self._crime(t, prov, opener, damage, subject)
            return
        t = self._at(t, self._ln(70.0, 0.8))  # inspection / audit conclusion
        outcome = _pick(_ADMIN_OUTCOMES, r)
        if outcome == "administrative":  # violations handled without criminal proceedings
            if (subject in ("party_member", "party_organization") and r() < 0.6) or (
                subject == "official" and r() < 0.2
            ):
                self._party_side(self._at(t, self._ln(10.0, 0.8)), prov, opener, subject)
            if r() < 0.65:  # funds to recover: identified, partly recovered
                identified = self._money(damage * (0.2 + 0.8 * r()))
                recovered = self._money(identified * self.beta(2.0, 3.0))
                self._assets(t, prov, opener, identified, recovered)
        self._resolve(self._at(t, self._ln(3.0, 0.5)), prov, opener, outcome)

    def _pic(self, t: int, prov: str, damage: int, subject: str, prominent: bool) -> None:
        r = self.r
        t = self._at(t, self._ln(50.0, 0.7))
        if r() < 0.15:
            self._resolve(t, prov, "PIC", "no_violation")
            return
        t = self._decisions(t, prov, subject)
        if r() < (0.4 if prominent else 0.08):
            self._crime(self._at(t, self._ln(20.0, 0.8)), prov, "PIC", damage, subject)
        else:
            self._resolve(self._at(t, self._ln(5.0, 0.5)), prov, "PIC", "disciplined")

    def _iac(self, t: int, prov: str, damage: int, subject: str) -> None:
        r = self.r
        u = r()
        t = self._at(t, self._ln(30.0, 0.8))
        if u < 0.5:
            self._crime(t, prov, "IAC", damage, subject)
        elif u < 0.8:
            state, t = self._transfer(t, prov, "IAC", prov, "PIC", "party_discipline",
                                      median=4.0, stall=0.08, never=0.02, returned=0.03)  # fmt: skip
            if state == "received":
                t = self._decisions(self._at(t, self._ln(45.0, 0.7)), prov, subject)
                self._resolve(self._at(t, self._ln(5.0, 0.5)), prov, "PIC", "disciplined")
        else:
            outcome = "no_violation" if r() < 0.6 else "other"
            self._resolve(self._at(t, self._ln(20.0, 0.7)), prov, "IAC", outcome)

    def _crime(self, t: int, prov: str, sender: str | None, damage: int, subject: str) -> None:
        """Investigation, prosecution, trial and enforcement (``sender`` None: police opened)."""
        r = self.r
        cutoff = self.cutoff
        pp = prov  # police (and procuracy) province
        if sender is not None:
            for attempt in range(3):
                state, t = self._transfer(t, prov, sender, pp, "POLICE", "signs_of_crime",
                                          median=3.0, stall=0.12, never=0.03, returned=0.06)  # fmt: skip
                if state == "received":
                    break
                if state is None:
                    return
                if attempt == 2 or r() < 0.45:  # handled administratively after the return
                    outcome = "administrative" if r() < 0.7 else "other"
                    self._resolve(self._at(t, self._ln(30.0, 0.7)), prov, sender, outcome)
                    return
                if state == "returned:jurisdiction":  # central police, or Hà Nội's for 00
                    pp = "00" if prov != "00" else "01"
                t = self._at(t, self._ln(35.0, 0.8))  # records supplemented, sent again
        # police
        if r() < 0.12:  # no criminal case opened
            outcome = "no_violation" if r() < 0.5 else "administrative"
            self._resolve(self._at(t, self._ln(40.0, 0.8)), pp, "POLICE", outcome)
            return
        t = self._at(t, self._ln(18.0 if sender else 8.0, 0.8))
        self._e(t, pp, "POLICE", "stage_changed", '{"stage":"investigation_opened"}')
        if r() < 0.35:
            t = self._appraisal(t, pp, "POLICE")
        if r() < 0.2:
            identified = self._money(damage * (0.3 + 0.5 * r()))
            recovered = self._money(identified * 0.25 * r())
            self._assets(self._at(t, self._ln(20.0, 0.8)), pp, "POLICE", identified, recovered)
        t = self._at(t, self._ln(35.0, 0.8))
        if t > cutoff:
            return
        suspects = self._count(2.5, 0.9, 150)
        self._e(t, pp, "POLICE", "stage_changed",
                f'{{"stage":"suspects_charged","count":{suspects}}}')  # fmt: skip
        if subject in _PARTY_SUBJECTS and r() < 0.3:
            self._party_side(self._at(t, self._ln(20.0, 0.8)), pp, "POLICE", subject)
        if r() < 0.06:
            self._resolve(self._at(t, self._ln(60.0, 0.8)), pp, "POLICE", "dismissed")
            return
        # procuracy (returned for supplementary investigation sometimes)
        t = self._at(t, self._ln(100.0, 0.6))
        for _ in range(3):
            state, t = self._transfer(t, pp, "POLICE", pp, "PROC", "prosecution",
                                      median=2.0, stall=0.05, never=0.01, returned=0.08)  # fmt: skip
            if state == "received":
                break
            if state is None:
                return
            t = self._at(t, self._ln(50.0, 0.7))
        else:
            return
        if r() < 0.04:
            self._resolve(self._at(t, self._ln(40.0, 0.7)), pp, "PROC", "dismissed")
            return
        t = self._at(t, self._ln(30.0, 0.6))
        if t > cutoff:
            return
        accused = max(1, suspects - (1 if r() < 0.15 else 0))
        self._e(t, pp, "PROC", "stage_changed", f'{{"stage":"indicted","count":{accused}}}')
        # court
        # the trial is held where the case belongs (central cases: Hà Nội or Hồ Chí Minh City)
        cp = prov if prov != "00" else ("01" if r() < 0.7 else "79")
        for _ in range(3):
            state, t = self._transfer(t, pp, "PROC", cp, "COURT", "trial",
                                      median=2.0, stall=0.05, never=0.01, returned=0.04)  # fmt: skip
            if state == "received":
                break
            if state is None:
                return
            t = self._at(t, self._ln(45.0, 0.7))
        else:
            return
        t = self._at(t, self._ln(55.0, 0.6))
        if t > cutoff:
            return
        self._e(t, cp, "COURT", "stage_changed",
                f'{{"stage":"first_instance_verdict","count":{accused}}}')  # fmt: skip
        final = cp
        if r() < 0.25:  # appeal at the superior court
            state, t = self._transfer(self._at(t, self._ln(20.0, 0.5)), cp, "COURT", "00", "COURT",
                                      "trial", median=3.0, stall=0.05, never=0.0, returned=0.0)  # fmt: skip
            if state is None:
                return
            t = self._at(t, self._ln(90.0, 0.6))
            if t > cutoff:
                return
            count = max(1, round(accused * (0.3 + 0.7 * r())))
            self._e(t, "00", "COURT", "stage_changed",
                    f'{{"stage":"appeal_verdict","count":{count}}}')  # fmt: skip
            final = "00"
        self._resolve(self._at(t, 0.5), final, "COURT", "convicted" if r() < 0.96 else "other")
        # enforcement of the judgment by the civil judgment enforcement of the trial province
        if r() < 0.15:
            return
        t = self._at(t, self._ln(25.0, 0.7))
        state, t = self._transfer(t, final, "COURT", cp, "CJE", "enforcement",
                                  median=5.0, stall=0.1, never=0.02, returned=0.02)  # fmt: skip
        if state != "received":
            return
        t = self._at(t, self._ln(15.0, 0.7))
        if not self._e(t, cp, "CJE", "stage_changed", '{"stage":"enforcement_started"}'):
            return
        identified_total = self._money(damage * (0.5 + 0.5 * r()))
        recovered_total = identified_total * self.beta(1.6, 3.2)
        steps = 1 + int(r() * 3)
        first = self._money(identified_total * 0.8)
        for i in range(steps):
            t = self._at(t, self._ln(80.0, 0.8))
            identified = first if i == 0 else self._money((identified_total - first) / (steps - 1))
            recovered = self._money(recovered_total / steps * (0.5 + r()))
            if not self._assets(t, cp, "CJE", identified, recovered):
                return
        if r() < 0.55:
            self._e(self._at(t, self._ln(120.0, 0.7)), cp, "CJE", "stage_changed",
                    '{"stage":"enforcement_completed"}')  # fmt: skip


# --------------------------------------------------------------------------- the plan


def _office_tod(r: Callable[[], float]) -> int:
    u = r()
    if u < 0.48:
        return 27_000 + int(r() * 14_400)
    if u < 0.96:
        return 48_600 + int(r() * 12_600)
    return 61_200 + int(r() * 10_800)


@dataclass
class _Plan:
    first_day: int
    last_day: int
    cutoff: int  # last local second
    cum_days: list[float]  # cumulative opening weights per day
    n_cases: int
    est_events: float
    n_buckets: int
    width: int  # seconds per bucket


def _day_weights(opts: GeneratorOptions, first_day: int, last_day: int) -> list[float]:
    rng = random.Random(f"{opts.seed}:days")
    season = {1: 0.9, 2: 0.6, 12: 1.15}
    cum, acc = [], 0.0
    for day in range(first_day, last_day + 1):
        d = _date_of(day)
        weekday = d.weekday()
        w = 1.0 if weekday < 5 else (0.08 if weekday == 5 else 0.03)
        w *= season.get(d.month, 1.0) * (1 + 0.12 * (d.year - 2021 if d.year > 2021 else 0))
        acc += w * rng.gammavariate(4.0, 0.25)
        cum.append(acc)
    return cum


def _make_plan(opts: GeneratorOptions, geo: _Geography) -> _Plan:
    first_day, last_day = _day_of(opts.start), _day_of(opts.end)
    cutoff = (last_day + 1) * _DAY - 1
    cum = _day_weights(opts, first_day, last_day)
    # a pilot run (count only) estimates the events per case for these options
    rng = random.Random(f"{opts.seed}:pilot")
    pilot = _Sim(geo, random.Random(f"{opts.seed}:pilot-sim"), first_day, cutoff, spill=None)
    for _ in range(_PILOT_CASES):
        day = first_day + bisect.bisect_right(cum, rng.random() * cum[-1])
        day = min(day, last_day)
        prov = geo.province(_pick(geo.table, rng.random), day)
        pilot.case(day * _DAY + _office_tod(rng.random), prov)
    per_case = max(1.0, pilot.total / _PILOT_CASES)
    lines_per_event = 1.0 + opts.duplicates
    if opts.cases is not None:
        n_cases = opts.cases
    else:
        assert opts.events is not None
        n_cases = max(1, round(opts.events / (per_case * lines_per_event)))
    est = n_cases * per_case
    span = cutoff - first_day * _DAY + 1
    n_buckets = max(
        1, min(_MAX_BUCKETS, last_day - first_day + 1, math.ceil(est * 1.2 / _BUCKET_TARGET))
    )
    width = -(-span // n_buckets)
    return _Plan(first_day, last_day, cutoff, cum, n_cases, est, n_buckets, width)


# --------------------------------------------------------------------------- the pipeline


class _Run:
    """One generation run: simulate into spill buckets, then merge them into output lines."""

    def __init__(self, opts: GeneratorOptions) -> None:
        self.opts = opts.validated()
        self.geo = _Geography(self.opts.provinces)
        self.summary = Summary()
        self._last_progress = time.monotonic()

    def _progress(self, message: str, force: bool = False) -> None:
        report = self.opts.progress
        if report is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress >= 1.0:
            self._last_progress = now
            report(message)

    def batches(self) -> Iterator[list[str]]:
        """Lists of output lines (without newline), in output order."""
        opts = self.opts
        started = time.monotonic()
        plan = _make_plan(opts, self.geo)
        s = self.summary
        with tempfile.TemporaryDirectory(prefix="casestream-gen-", dir=opts.tmp_dir) as tmp:
            paths = [os.path.join(tmp, f"{b:05d}.spill") for b in range(plan.n_buckets)]
            spill = _Spill(paths, plan.first_day * _DAY, plan.width, delivery=not opts.sorted)
            sim = self._simulate(plan, spill, started)
            spill.flush()
            s.events, s.cases, s.by_type = sim.total, sim.cases, dict(sim.counts)
            yield from self._merge(paths, started)
        s.seconds = time.monotonic() - started

    def _simulate(self, plan: _Plan, spill: _Spill, started: float) -> _Sim:
        opts = self.opts
        hold_p = min(1.0, 3 * opts.out_of_order)
        sim = _Sim(
            self.geo,
            random.Random(f"{opts.seed}:cases"),
            plan.first_day,
            plan.cutoff,
            spill=spill,
            hold_p=hold_p,
            prng=random.Random(f"{opts.seed}:holds") if hold_p > 0 else None,
            violations=opts.violations,
            forge_rng=random.Random(f"{opts.seed}:forgeries") if opts.violations > 0 else None,
        )
        rng = random.Random(f"{opts.seed}:arrivals")
        r = rng.random
        cum, n, total = plan.cum_days, plan.n_cases, plan.cum_days[-1]
        done_before = 0
        geo = self.geo
        table = geo.table
        case = sim.case
        for i, day in enumerate(range(plan.first_day, plan.last_day + 1)):
            done = round(n * cum[i] / total)
            k, done_before = done - done_before, done
            if k <= 0:
                continue
            for tod in sorted(_office_tod(r) for _ in range(k)):
                case(day * _DAY + tod, geo.province(_pick(table, r), day))
            if opts.progress is not None:
                elapsed = time.monotonic() - started
                self._progress(
                    f"simulating {_date_of(day)}: {sim.cases:,}/{n:,} cases, {sim.total:,} events"
                    f" ({sim.total / max(elapsed, 1e-9):,.0f}/s)"
                )
        return sim

    def _merge(self, paths: list[str], started: float) -> Iterator[list[str]]:
        opts = self.opts
        s = self.summary
        seqs: dict[str, int] = {}
        dup, ooo = opts.duplicates, opts.out_of_order
        perturb = dup > 0 or ooo > 0
        prng = random.Random(f"{opts.seed}:delivery")
        r, bits = prng.random, prng.getrandbits
        normals = _normals()
        heap: list[tuple[int, int, str]] = []  # (release after line n, order, text)
        held: dict[str, str] = {}  # transfer id -> transfer line waiting for its receipt
        released: set[str] = set()  # receipts seen before their held transfer (delivery order)
        n = 0  # lines emitted
        order = 0
        n_dup = n_ooo = 0
        for b, path in enumerate(paths):
            try:
                with open(path, encoding="ascii") as f:
                    lines = f.read().split("\n")
                os.remove(path)
            except FileNotFoundError:  # an empty bucket
                continue
            lines.pop()  # the empty string after the last newline
            lines.sort()
            out: list[str] = []
            emit = out.append
            if not perturb:
                for line in lines:
                    _, agency, _, head, tail = line.split("\t")
                    seq = seqs.get(agency, 0) + 1
                    seqs[agency] = seq
                    emit(f"{head}{seq}{tail}")
                n += len(out)
            else:
                for line in lines:
                    _, agency, ctl, head, tail = line.split("\t")
                    seq = seqs.get(agency, 0) + 1
                    seqs[agency] = seq
                    text = f"{head}{seq}{tail}"
                    outs = [text]
                    if ctl:
                        tag = ctl[1:]
                        if ctl[0] == "H":  # a transfer to emit right after its receipt
                            if tag in released:
                                released.discard(tag)
                            else:
                                held[tag] = text
                                n_ooo += 1
                                outs = []
                        else:  # "R": the receipt, followed by its held transfer
                            waiting = held.pop(tag, None)
                            if waiting is None:
                                released.add(tag)
                            else:
                                outs.append(waiting)
                    elif ooo and r() < ooo:
                        order += 1
                        delay = 1 + min(200_000, int(200 * math.exp(1.3 * normals[bits(16)])))
                        heapq.heappush(heap, (n + delay, order, text))
                        n_ooo += 1
                        outs = []
                    if dup and r() < dup:
                        order += 1
                        delay = (
                            0
                            if r() < 0.4
                            else 1 + min(200_000, int(50 * math.exp(1.5 * normals[bits(16)])))
                        )
                        heapq.heappush(heap, (n + delay, order, text))
                        n_dup += 1
                    for text in outs:
                        n += 1
                        emit(text)
                        while heap and heap[0][0] <= n:
                            n += 1
                            emit(heapq.heappop(heap)[2])
            del lines
            if out:
                yield out
            del out, emit  # do not hold the last batch while reading the next bucket
            elapsed = time.monotonic() - started
            self._progress(
                f"writing bucket {b + 1}/{len(paths)}: {n:,} lines ({n / max(elapsed, 1e-9):,.0f}/s)",
                force=b + 1 == len(paths),
            )
        tail = list(held.values())  # transfers whose receipt never came (does not happen)
        while heap:
            tail.append(heapq.heappop(heap)[2])
        n += len(tail)
        if tail:
            yield tail
        s.lines, s.duplicates, s.out_of_order, s.agencies = n, n_dup, n_ooo, len(seqs)


# --------------------------------------------------------------------------- public API


def iter_batches(options: GeneratorOptions, summary: Summary | None = None) -> Iterator[list[str]]:
    """Output lines (without newline) in lists, in output order; fills ``summary`` at the end."""
    run = _Run(options)
    yield from run.batches()
    if summary is not None:
        vars(summary).update(vars(run.summary))


def iter_lines(options: GeneratorOptions, summary: Summary | None = None) -> Iterator[str]:
    """The JSONL lines (without newline) in output order; fills ``summary`` when exhausted."""
    for batch in iter_batches(options, summary):
        yield from batch


def generate(options: GeneratorOptions) -> Iterator[dict[str, Any]]:
    """The events in JSON form (dicts), in output order (duplicates and disorder included)."""
    loads = json.loads
    for batch in iter_batches(options):
        for line in batch:
            yield loads(line)


def write_jsonl(options: GeneratorOptions, path: str | os.PathLike[str]) -> Summary:
    """Write the scenario to ``path`` (``"-"``: stdout) as JSONL; returns what was written.

    A file is written under a temporary name (``<path>.partial``) and renamed at the end, so a
    reader never sees a partial file.
    """
    summary = Summary()
    to_stdout = str(path) == "-"
    if to_stdout:
        _write_batches(options, summary, sys.stdout)
    else:
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        try:
            with open(partial, "w", encoding="ascii", newline="\n", buffering=1 << 20) as out:
                _write_batches(options, summary, out)
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
    summary.path = str(path)
    return summary


def _write_batches(options: GeneratorOptions, summary: Summary, out: IO[str]) -> None:
    write = out.write
    for batch in iter_batches(options, summary):
        for i in range(0, len(batch), 65_536):
            chunk = batch[i : i + 65_536]
            chunk.append("")
            write("\n".join(chunk))
        del batch, chunk  # freed before the next bucket is read
    out.flush()


# --------------------------------------------------------------------------- checking


@dataclass
class CheckReport:
    """Result of validating a JSONL file line by line with ``parse_event``."""

    lines: int = 0
    valid: int = 0
    invalid: int = 0
    by_type: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_TYPES, 0))
    errors: list[str] = field(default_factory=list)  # the first ``max_errors`` problems
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.invalid == 0


def check_lines(
    lines: Iterable[str | bytes], *, now: datetime | None = None, max_errors: int = 20
) -> CheckReport:
    """Validate every line with ``parse_event`` and count valid events by type."""
    from services.contracts.events import EventValidationError, parse_json_line

    report = CheckReport()
    started = time.monotonic()
    for number, line in enumerate(lines, 1):
        report.lines += 1
        try:
            event = parse_json_line(line, now=now)
        except EventValidationError as exc:
            report.invalid += 1
            if len(report.errors) < max_errors:
                report.errors.append(f"line {number}: {exc}")
            continue
        report.valid += 1
        report.by_type[event["event_type"]] += 1
    report.seconds = time.monotonic() - started
    return report


def check_jsonl(path: str | os.PathLike[str], **kwargs: Any) -> CheckReport:
    """``check_lines`` over a JSONL file (blank lines are skipped)."""
    with open(path, encoding="utf-8") as f:
        return check_lines((line for line in f if line.strip()), **kwargs)
