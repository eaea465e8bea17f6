"""Rollups from a hand-written event set whose figures are computed by hand below.

The events are derived into a database of this module's own (tests/pipeline.py), so national
figures and the cumulative stocks (pending, monitored) contain exactly these cases, whatever
ran before; the late-event test works on a copy of its own, so it changes nothing the others read.

    case  opened (agency, day)   transfer            lag   other                      resolved
    C1    20-INSP  01-10         → 20-POLICE 01-20   24 h                             03-05
    C2    20-AUDIT 02-01         → 20-POLICE 02-02   48 h  monitored 02-10            06-01
    C3    34-INSP  02-15         → 34-POLICE 03-01  240 h  monitored 03-20 (central)  –
    C4    34-PIC   04-01                                   discipline 3 members, 1 org 05-01
    C5    20-INSP  05-10         → 20-PROC   05-12  never  assets 1000 / 400          –
    C6    34-INSP  2012-01-01 03:00 +07:00 (still 2011 in UTC: must count in 2012)
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest

from services.contracts import reference
from tests.helpers import make_event, new_tag
from tests.pipeline import OwnDatabase

pytestmark = pytest.mark.integration

OPENED = {"origin": "inspection", "field": "land", "subject_kind": "official", "prominent": True}


def _events(tag: str) -> list[dict]:
    def c(n: int) -> str:
        return f"{tag}:C{n}"

    def at(day: str, hour: str = "09:00") -> str:
        return f"{day}T{hour}:00+07:00"

    def transfer(n, agency, to, sent, received=None):
        tid = f"{tag}:T{n}"
        out = [
            make_event(
                "case_transferred",
                agency,
                c(n),
                sent,
                {"transfer_id": tid, "to_agency_id": to, "reason": "signs_of_crime"},
            )
        ]
        if received:
            out.append(make_event("transfer_received", to, c(n), received, {"transfer_id": tid}))
        return out

    return [
        make_event("case_opened", "20-INSP", c(1), at("2011-01-10"), OPENED),
        *transfer(1, "20-INSP", "20-POLICE", at("2011-01-20"), at("2011-01-21")),
        make_event("case_resolved", "20-POLICE", c(1), at("2011-03-05"), {"outcome": "convicted"}),
        make_event("case_opened", "20-AUDIT", c(2), at("2011-02-01"), OPENED),
        *transfer(2, "20-AUDIT", "20-POLICE", at("2011-02-02", "08:00"), at("2011-02-04", "08:00")),
        make_event("monitoring_assigned", "20-SC", c(2), at("2011-02-10"), {"level": "provincial"}),
        make_event("case_resolved", "20-POLICE", c(2), at("2011-06-01"), {"outcome": "convicted"}),
        make_event("case_opened", "34-INSP", c(3), at("2011-02-15"), OPENED),
        *transfer(3, "34-INSP", "34-POLICE", at("2011-03-01", "10:00"), at("2011-03-11", "10:00")),
        make_event("monitoring_assigned", "00-SC", c(3), at("2011-03-20"), {"level": "central"}),
        make_event("case_opened", "34-PIC", c(4), at("2011-04-01"), OPENED),
        make_event(
            "discipline_imposed",
            "34-PIC",
            c(4),
            at("2011-04-20"),
            {"target": "party_member", "count": 3, "form": "warning"},
        ),
        make_event(
            "discipline_imposed",
            "34-PIC",
            c(4),
            at("2011-04-21"),
            {"target": "party_organization", "count": 1, "form": "reprimand"},
        ),
        make_event("case_resolved", "34-PIC", c(4), at("2011-05-01"), {"outcome": "disciplined"}),
        make_event("case_opened", "20-INSP", c(5), at("2011-05-10"), OPENED),
        *transfer(5, "20-INSP", "20-PROC", at("2011-05-12")),
        make_event(
            "assets_recovered",
            "20-INSP",  # the opener still holds it: the transfer to the procuracy is unreceived
            c(5),
            at("2011-05-20"),
            {"identified_vnd": 1000, "recovered_vnd": 400},
        ),
        make_event("case_opened", "34-INSP", c(6), "2012-01-01T03:00:00+07:00", OPENED),
    ]


FIGURES = (
    "cases_opened, cases_resolved, pending_end, clearance_rate, disposition_time_days, "
    "transfers_sent, transfers_received, transfers_to_investigation, transfer_lag_p50_hours, "
    "transfer_lag_p90_hours, transfers_pending_end, monitored_cases, monitored_resolved, "
    "monitored_resolution_rate, discipline_party_members, discipline_party_orgs, "
    "assets_identified_vnd, assets_recovered_vnd"
)


def _derived(stack, tag: str) -> OwnDatabase:
    """The module's events derived into a database of its own, rollups built for 2011–2012."""
    from flows.rollups import build_rollups

    own = OwnDatabase(stack, "rollups", tag).__enter__()
    own.derive(_events(tag))
    with own.selected():
        build_rollups(date(2011, 1, 1), date(2012, 12, 31))
    return own


@pytest.fixture(scope="module")
def own(stack) -> Iterator[OwnDatabase]:
    own = _derived(stack, new_tag())
    with own.selected():  # the flows called by the tests read this database too
        yield own
    own.drop()


@pytest.fixture(scope="module")
def built(own: OwnDatabase) -> str:
    """The tag of the module's cases (their ids are ``<tag>:C1`` … ``<tag>:C6``)."""
    return own.tag


@pytest.fixture
def ch(own: OwnDatabase):
    return own.client()


def _national(ch, kind: str, start: str) -> dict:
    rows = ch.query(
        f"SELECT {FIGURES} FROM rollup_national WHERE period_kind = {{k:String}} "
        "AND period_start = {s:Date}",
        parameters={"k": kind, "s": start},
    )
    assert rows.row_count == 1, rows.result_rows
    return dict(zip(rows.column_names, rows.result_rows[0], strict=True))


def test_national_year_matches_hand_computed_figures(built, ch):
    got = _national(ch, "year", "2011-01-01")
    assert got == pytest.approx(
        {
            "cases_opened": 5,
            "cases_resolved": 3,
            "pending_end": 2,
            "clearance_rate": 0.6,
            "disposition_time_days": 365 * 2 / 3,
            "transfers_sent": 4,
            "transfers_received": 3,
            "transfers_to_investigation": 3,
            "transfer_lag_p50_hours": 48.0,
            "transfer_lag_p90_hours": 48 + 0.8 * (240 - 48),  # R-7 linear interpolation
            "transfers_pending_end": 1,
            "monitored_cases": 2,
            "monitored_resolved": 1,
            "monitored_resolution_rate": 0.5,
            "discipline_party_members": 3,
            "discipline_party_orgs": 1,
            "assets_identified_vnd": 1000,
            "assets_recovered_vnd": 400,
        }
    )
    assert _national(ch, "year", "2012-01-01")["cases_opened"] == 1  # C6: Vietnam time decides


def test_national_quarters_carry_stocks_forward(built, ch):
    q1, q2 = _national(ch, "quarter", "2011-01-01"), _national(ch, "quarter", "2011-04-01")
    assert (q1["cases_opened"], q1["cases_resolved"], q1["pending_end"]) == (3, 1, 2)
    assert q1["disposition_time_days"] == pytest.approx(90 * 2 / 1)  # Q1 2011 has 90 days
    assert (q1["monitored_cases"], q1["monitored_resolved"]) == (2, 0)
    assert (q2["cases_opened"], q2["cases_resolved"], q2["pending_end"]) == (2, 2, 2)
    assert q2["disposition_time_days"] == pytest.approx(91 * 2 / 2)
    assert (q2["monitored_cases"], q2["monitored_resolved"]) == (2, 1)
    q3 = _national(ch, "quarter", "2011-07-01")  # a quiet quarter still reports its stocks
    assert (q3["cases_opened"], q3["pending_end"], q3["monitored_cases"]) == (0, 2, 2)


def _province(ch, geography: str, code: str) -> dict:
    rows = ch.query(
        f"SELECT {FIGURES} FROM rollup_province WHERE geography = {{g:String}} "
        "AND period_kind = 'year' AND period_start = '2011-01-01' "
        "AND province_code = {p:String}",
        parameters={"g": geography, "p": code},
    )
    assert rows.row_count == 1, (geography, code, rows.result_rows)
    return dict(zip(rows.column_names, rows.result_rows[0], strict=True))


EXPECTED_20 = {
    "cases_opened": 3,
    "cases_resolved": 2,
    "pending_end": 1,
    "clearance_rate": 2 / 3,
    "disposition_time_days": 365 * 1 / 2,
    "transfers_sent": 3,
    "transfers_received": 2,
    "transfers_to_investigation": 2,
    "transfer_lag_p50_hours": 36.0,
    "transfer_lag_p90_hours": 24 + 0.9 * 24,
    "transfers_pending_end": 1,
    "monitored_cases": 1,
    "monitored_resolved": 1,
    "monitored_resolution_rate": 1.0,
    "discipline_party_members": 0,
    "discipline_party_orgs": 0,
    "assets_identified_vnd": 1000,
    "assets_recovered_vnd": 400,
}
EXPECTED_34 = {
    "cases_opened": 2,
    "cases_resolved": 1,
    "pending_end": 1,
    "clearance_rate": 0.5,
    "disposition_time_days": 365.0,
    "transfers_sent": 1,
    "transfers_received": 1,
    "transfers_to_investigation": 1,
    "transfer_lag_p50_hours": 240.0,
    "transfer_lag_p90_hours": 240.0,
    "transfers_pending_end": 0,
    "monitored_cases": 1,
    "monitored_resolved": 0,
    "monitored_resolution_rate": 0.0,
    "discipline_party_members": 3,
    "discipline_party_orgs": 1,
    "assets_identified_vnd": 0,
    "assets_recovered_vnd": 0,
}


def test_provinces_in_historical_geography(built, ch):
    assert _province(ch, "historical", "20") == pytest.approx(EXPECTED_20)
    assert _province(ch, "historical", "34") == pytest.approx(EXPECTED_34)


def test_provinces_in_current_geography_follow_the_2025_merger(built, ch):
    successor = reference.current_province("34")
    assert successor != "34"  # Thái Bình merged into Hưng Yên on 2025-07-01
    assert _province(ch, "current", "20") == pytest.approx(EXPECTED_20)
    assert _province(ch, "current", successor) == pytest.approx(EXPECTED_34)
    assert (
        ch.command(
            "SELECT count() FROM rollup_province WHERE geography = 'current' "
            "AND province_code = '34' AND period_start = '2011-01-01'"
        )
        == 0
    )


def test_rerunning_the_flow_changes_nothing(built, ch):
    from flows.rollups import build_rollups

    query = (
        "SELECT * FROM rollup_national WHERE period_start < '2013-01-01' "
        "ORDER BY period_kind, period_start"
    )
    before = ch.query(query).result_rows
    build_rollups(date(2011, 1, 1), date(2012, 12, 31))
    assert ch.query(query).result_rows == before


def test_a_late_event_changes_exactly_the_periods_it_belongs_to(stack):
    """On a copy of the module's data: the late event must not change what the others read."""
    from flows.rollups import refresh_recent

    tag = new_tag()
    own = _derived(stack, tag)
    ch = own.client()
    try:
        with own.selected():
            _late_event_changes_exactly_its_periods(own, tag, ch, refresh_recent)
    finally:
        own.drop()


def _late_event_changes_exactly_its_periods(own: OwnDatabase, tag: str, ch, refresh_recent):
    refresh_recent()  # sets the watermark: everything so far is accounted for
    query = (
        "SELECT period_start, " + FIGURES + " FROM rollup_national WHERE period_kind = "
        "'month' AND period_start < '2013-01-01' ORDER BY period_start"
    )
    names = ["period_start", *[f.strip() for f in FIGURES.split(",")]]
    before = {r[0]: dict(zip(names, r, strict=True)) for r in ch.query(query).result_rows}

    late = make_event(
        "case_resolved",
        "34-POLICE",  # holds C3 since it received the inspectorate's transfer
        f"{tag}:C3",
        "2011-08-15T09:00:00+07:00",
        {"outcome": "convicted"},
    )
    own.derive([late])
    assert (
        ch.command(
            "SELECT status FROM cases WHERE case_id = {c:String}", parameters={"c": f"{tag}:C3"}
        )
        == "resolved"
    )
    refresh_recent()
    after = {r[0]: dict(zip(names, r, strict=True)) for r in ch.query(query).result_rows}

    stocks = {
        "pending_end",
        "disposition_time_days",
        "monitored_resolved",
        "monitored_resolution_rate",
        "clearance_rate",
    }
    for month, row in before.items():
        if month < date(2011, 8, 1):
            assert after[month] == row, month  # periods before the event: untouched
        elif month == date(2011, 8, 1):
            assert after[month]["cases_resolved"] == row["cases_resolved"] + 1
            assert after[month]["pending_end"] == row["pending_end"] - 1
            assert after[month]["monitored_resolved"] == row["monitored_resolved"] + 1
        else:  # later periods: only the stocks move, the flows stay
            flows = {k: v for k, v in row.items() if k not in stocks}
            assert {k: v for k, v in after[month].items() if k not in stocks} == flows, month
            assert after[month]["pending_end"] == row["pending_end"] - 1, month


def test_a_late_fact_that_makes_an_earlier_fact_a_violation_corrects_its_period(stack):
    """A late opening makes the case's earlier-dated facts "before the opening": the refresh must
    rebuild *their* periods, not only the opening's (on a copy of the module's data)."""
    from flows.rollups import refresh_recent

    tag = new_tag()
    own = _derived(stack, tag)
    ch = own.client()
    case = f"{tag}:C7"  # no agency in the id: until an opening arrives, nobody can be judged
    try:
        with own.selected():
            july_before = _national(ch, "month", "2011-07-01")
            own.derive(
                [
                    make_event(
                        "assets_recovered",
                        "20-INSP",
                        case,
                        "2011-07-10T09:00:00+07:00",
                        {"identified_vnd": 500, "recovered_vnd": 200},
                    )
                ]
            )
            refresh_recent()
            july_counted = _national(ch, "month", "2011-07-01")
            assert (
                july_counted["assets_identified_vnd"] == july_before["assets_identified_vnd"] + 500
            )
            september_before = _national(ch, "month", "2011-09-01")

            own.derive(
                [make_event("case_opened", "20-INSP", case, "2011-09-01T09:00:00+07:00", OPENED)]
            )
            assert (
                ch.command(
                    "SELECT rule FROM integrity_violations WHERE case_id = {c:String}",
                    parameters={"c": case},
                )
                == "before_the_opening"
            )
            refresh_recent()
            assert _national(ch, "month", "2011-07-01") == july_before
            september = _national(ch, "month", "2011-09-01")
            assert september["cases_opened"] == september_before["cases_opened"] + 1
    finally:
        own.drop()
