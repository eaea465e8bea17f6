"""The report flow on a hand-written event set whose figures are computed by hand below.

Year 2005 belongs to this module alone (nothing else publishes before 2006), so the national
figures and the stocks at the end of 2005 contain exactly these cases:

    case  opened (agency, day)  transfer                            other                 resolved
    C1    20-INSP  02-01        T1 → 20-POLICE 02-10, recv 02-12   monitored 03-01       11-01
                                (48 h = 2.0 days)                   (00-SC, central)
    C2    20-INSP  03-01        T2 → 20-POLICE 03-05, recv 03-15   valuation appraisal   –
                                (240 h = 10.0 days); T3 POLICE →    04-01 → 05-01 (30 d)
                                20-PROC 06-01 00:00, never received
    C3    34-PIC   09-15                                            3 members disciplined –
    C4    01-AUDIT 12-20                                                                  –
    C5    01-INSP  05-10                                                                  08-01

National 2005: opened 5, resolved 2, pending 3 (C2 6–12 months, C3 3–6 months, C4 < 3 months),
1 monitored and 1 completed, 2 transfers to investigation; INSP → POLICE lag p50 6.0 days,
p90 9.2, max 10.0; T3 pending at the end of 2005 for exactly 214 days.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import date
from html.parser import HTMLParser

import pytest

from services.agency.publisher import Publisher
from tests.helpers import make_event, new_tag, wait_for

pytestmark = pytest.mark.integration

OPENED = {"origin": "inspection", "field": "land", "subject_kind": "official", "prominent": True}


def _events(tag: str) -> list[dict]:
    def c(n: int) -> str:
        return f"{tag}:C{n}"

    def at(day: str, hour: str = "09:00") -> str:
        return f"2005-{day}T{hour}:00+07:00"

    def transfer(n, case, agency, to, sent, received=None):
        tid = f"{tag}:T{n}"
        out = [
            make_event(
                "case_transferred",
                agency,
                c(case),
                sent,
                {"transfer_id": tid, "to_agency_id": to, "reason": "signs_of_crime"},
            )
        ]
        if received:
            out.append(make_event("transfer_received", to, c(case), received, {"transfer_id": tid}))
        return out

    return [
        make_event("case_opened", "20-INSP", c(1), at("02-01"), OPENED),
        *transfer(1, 1, "20-INSP", "20-POLICE", at("02-10"), at("02-12")),
        make_event("monitoring_assigned", "00-SC", c(1), at("03-01"), {"level": "central"}),
        make_event("case_resolved", "20-COURT", c(1), at("11-01"), {"outcome": "convicted"}),
        make_event("case_opened", "20-INSP", c(2), at("03-01"), OPENED),
        *transfer(2, 2, "20-INSP", "20-POLICE", at("03-05"), at("03-15")),
        make_event(
            "appraisal_requested",
            "20-POLICE",
            c(2),
            at("04-01"),
            {"appraisal_id": f"{tag}:A1", "kind": "valuation"},
        ),
        make_event(
            "appraisal_completed",
            "20-POLICE",
            c(2),
            at("05-01"),
            {"appraisal_id": f"{tag}:A1", "kind": "valuation"},
        ),
        *transfer(3, 2, "20-POLICE", "20-PROC", at("06-01", "00:00")),
        make_event("case_opened", "34-PIC", c(3), at("09-15"), OPENED),
        make_event(
            "discipline_imposed",
            "34-PIC",
            c(3),
            at("10-01"),
            {"target": "party_member", "count": 3, "form": "warning"},
        ),
        make_event("case_opened", "01-AUDIT", c(4), at("12-20"), OPENED),
        make_event("case_opened", "01-INSP", c(5), at("05-10"), OPENED),
        make_event("case_resolved", "01-INSP", c(5), at("08-01"), {"outcome": "administrative"}),
    ]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


@pytest.fixture(scope="module")
def published(stack, worker):
    tag = new_tag()
    events = _events(tag)
    with Publisher(None, stack) as operator:
        operator.publish_many(events)
    ch = stack.clickhouse_client()
    like = {"p": f"{tag}:%"}
    wait_for(
        lambda: (
            ch.command(
                "SELECT count() FROM events FINAL WHERE case_id LIKE {p:String}", parameters=like
            )
            == len(events)
            and ch.command(
                "SELECT count() FROM transfers WHERE case_id LIKE {p:String} "
                "AND status = 'received'",
                parameters=like,
            )
            == 2
            and ch.command(
                "SELECT count() FROM appraisals WHERE case_id LIKE {p:String} "
                "AND status = 'completed'",
                parameters=like,
            )
            == 1
            and ch.command(
                "SELECT count() FROM cases WHERE case_id LIKE {p:String} AND status = 'resolved'",
                parameters=like,
            )
            == 2
        ),
        timeout=180,
        what="the hand-written 2005 events in ClickHouse",
    )
    return tag


def _read_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return found


def test_national_report_files_figures_charts_and_artifact(published, tmp_path):
    from flows.reports import build_report

    tag = published
    html_path = build_report(
        "national", "year", date(2005, 1, 1), date(2005, 12, 31), out_dir=tmp_path
    )
    md_path = tmp_path / "report-national-year-2005-01-01-2005-12-31.md"
    assert html_path == (tmp_path / "report-national-year-2005-01-01-2005-12-31.html").resolve()
    assert md_path.exists() and html_path.exists()
    md, page = md_path.read_text(), html_path.read_text()

    # headline and rollup figures (rollups were missing for 2005: the flow built them)
    assert "5 cases opened, 2 resolved (clearance rate 40.0%), 3 pending" in md
    assert "1 monitored, 1 completed" in md
    assert "2 transfers to investigation" in md
    assert "| Cases opened | 5 | – |" in md
    assert "| Party members disciplined | 3 | – |" in md
    assert "(rebuilt for this report)" in md
    # transfer lag by agency pair: lags 2 and 10 days (p90 = 2 + 0.9 × 8)
    assert "| INSP → POLICE | 2 | 6.0 | 9.2 | 10.0 | 2 | 0 | 0 |" in md
    assert "| POLICE → PROC | 0 | – | – | – | 1 | 0 | 1 |" in md
    # backlog aging at the end of 2005
    for bucket, count in [
        ("< 3 months", 1),
        ("3–6 months", 1),
        ("6–12 months", 1),
        ("1–2 years", 0),
        ("> 2 years", 0),
    ]:
        assert f"| {bucket} | {count} |" in md
    # slowest pending transfer: T3, sent 2005-06-01 00:00 Vietnam time, 214 days before 2006
    assert (
        f"| 1 | {tag}:C2 | {tag}:T3 | 20-POLICE → 20-PROC | signs_of_crime | 2005-06-01 | 214 |"
    ) in md
    # appraisal lag: one valuation of 30 days
    assert "| valuation | 1 | 30.0 | 30.0 | 30.0 | 0 | – |" in md
    # provincial comparison: Lạng Sơn has C2 pending, Thái Bình C3, Hà Nội C4
    assert re.search(r"\| \d+ \| Lạng Sơn \(20\) \| 1 \| 2 \| 1 \| 50\.0% \|", md)
    assert "## Data quality" in md

    # the HTML parses, has one inline SVG per chart, and no external resource
    parser = _Tags()
    parser.feed(page)
    parser.close()
    assert parser.tags.count("svg") == 5
    assert not re.search(r"<(script|link)\b|src=\"http", page)
    for svg in re.findall(r"<svg\b.*?</svg>", page, flags=re.S):
        ET.fromstring(svg)
    assert "INSP → POLICE" in page and f"{tag}:T3" in page

    artifacts = _read_artifact("report-national-year")
    assert artifacts, "markdown artifact report-national-year"
    assert artifacts[0].type == "markdown"
    assert any(f"{tag}:T3" in (a.data or "") for a in artifacts)


def test_province_report_and_cli(published, tmp_path):
    from click.testing import CliRunner

    from services.serving.report_command import report

    result = CliRunner().invoke(
        report,
        [
            "--scope",
            "20",
            "--period",
            "quarter",
            "--from",
            "2005-01-01",
            "--to",
            "2005-12-31",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    md_path = tmp_path / "report-20-quarter-2005-01-01-2005-12-31.md"
    html_path = tmp_path / "report-20-quarter-2005-01-01-2005-12-31.html"
    printed = [line for line in result.output.splitlines() if line.endswith((".md", ".html"))]
    assert printed == [str(md_path.resolve()), str(html_path.resolve())]
    md = md_path.read_text()
    assert md.startswith("# casestream report — Lạng Sơn (20), 2005 Q1 – 2005 Q4")
    # Q4 2005 in Lạng Sơn: C1 resolved (opened earlier), C2 pending
    assert "Lạng Sơn (20), 2005 Q4: 0 cases opened, 1 resolved" in md
    assert "Lạng Sơn (20) ranks 2 of" in md  # pending 1 (C2), after Hà Nội (01): C4
    assert "| INSP → POLICE | 2 | 6.0 | 9.2 | 10.0 |" in md  # the whole range
    assert _read_artifact("report-20-quarter")

    bad = CliRunner().invoke(report, ["--scope", "7x"])
    assert bad.exit_code != 0 and "province code" in bad.output
