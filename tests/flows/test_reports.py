"""The report flow on a hand-written event set whose figures are computed by hand below.

The events are derived into a database of this module's own (tests/pipeline.py): national
flows *and* stocks (pending, backlog by age, monitored) are exactly these cases, whatever other
tests wrote or ran before.

    case  opened (agency, day)  transfer                            other                 resolved
    C1    22-INSP  02-01        T1 → 22-POLICE 02-10, recv 02-12   monitored 03-01       11-01
                                (48 h = 2.0 days)                   (22-SC)
    C2    22-INSP  03-01        T2 → 22-POLICE 03-05, recv 03-15   valuation appraisal   –
                                (240 h = 10.0 days); T3 POLICE →    04-01 → 05-01 (30 d)
                                22-PROC 06-01 00:00, never received
    C3    45-PIC   09-15                                            3 members disciplined –
    C4    11-AUDIT 12-20                                                                  –
    C5    11-INSP  05-10                                                                  08-01

National 2018: opened 5, resolved 2, 2 transfers to investigation; INSP → POLICE lag p50 6.0
days, p90 9.2 (2 + 0.9 × 8), max 10.0; pending cases opened in 2018: C2 (6–12 months), C3 (3–6
months), C4 (< 3 months). Quảng Ninh: pending 1, monitored 1 and completed 1; T3 pending at the
end of 2018 for exactly 214 days.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import date
from html.parser import HTMLParser

import pytest

from tests.helpers import make_event, new_tag
from tests.pipeline import OwnDatabase

pytestmark = pytest.mark.integration

OPENED = {"origin": "inspection", "field": "land", "subject_kind": "official", "prominent": True}


def _events(tag: str) -> list[dict]:
    def c(n: int) -> str:
        return f"{tag}:C{n}"

    def at(day: str, hour: str = "09:00") -> str:
        return f"2018-{day}T{hour}:00+07:00"

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
        make_event("case_opened", "22-INSP", c(1), at("02-01"), OPENED),
        *transfer(1, 1, "22-INSP", "22-POLICE", at("02-10"), at("02-12")),
        make_event("monitoring_assigned", "22-SC", c(1), at("03-01"), {"level": "provincial"}),
        make_event("case_resolved", "22-POLICE", c(1), at("11-01"), {"outcome": "convicted"}),
        make_event("case_opened", "22-INSP", c(2), at("03-01"), OPENED),
        *transfer(2, 2, "22-INSP", "22-POLICE", at("03-05"), at("03-15")),
        make_event(
            "appraisal_requested",
            "22-POLICE",
            c(2),
            at("04-01"),
            {"appraisal_id": f"{tag}:A1", "kind": "valuation"},
        ),
        make_event(
            "appraisal_completed",
            "22-POLICE",
            c(2),
            at("05-01"),
            {"appraisal_id": f"{tag}:A1", "kind": "valuation"},
        ),
        *transfer(3, 2, "22-POLICE", "22-PROC", at("06-01", "00:00")),
        make_event("case_opened", "45-PIC", c(3), at("09-15"), OPENED),
        make_event(
            "discipline_imposed",
            "45-PIC",
            c(3),
            at("10-01"),
            {"target": "party_member", "count": 3, "form": "warning"},
        ),
        make_event("case_opened", "11-AUDIT", c(4), at("12-20"), OPENED),
        make_event("case_opened", "11-INSP", c(5), at("05-10"), OPENED),
        make_event("case_resolved", "11-INSP", c(5), at("08-01"), {"outcome": "administrative"}),
    ]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


@pytest.fixture(scope="module")
def published(stack) -> Iterator[str]:
    """The hand-written events derived into this module's own database, selected for the flows."""
    tag = new_tag()
    with OwnDatabase(stack, "reports", tag) as own:
        own.derive(_events(tag))
        with own.selected():
            yield tag


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

    html_path = build_report(
        "national", "year", date(2018, 1, 1), date(2018, 12, 31), out_dir=tmp_path
    )
    md_path = tmp_path / "report-national-year-2018-01-01-2018-12-31.md"
    assert html_path == (tmp_path / "report-national-year-2018-01-01-2018-12-31.html").resolve()
    assert md_path.exists() and html_path.exists()
    md, page = md_path.read_text(), html_path.read_text()

    # headline and rollup figures (the flow builds the 2018 rollups when missing or stale)
    assert "Nationwide, 2018: 5 cases opened, 2 resolved (clearance rate 40.0%)" in md
    assert "2 transfers to investigation" in md
    assert "| Cases opened | 5 |" in md
    assert "| Party members disciplined | 3 |" in md
    assert re.search(r"Rollups last built: national \d{4}-\d\d-\d\d \d\d:\d\d UTC", md)
    # transfer lag by agency pair: lags 2 and 10 days (p90 = 2 + 0.9 × 8); then sent, returned
    assert "| INSP → POLICE | 2 | 6.0 | 9.2 | 10.0 | 2 | 0 |" in md
    assert "| POLICE → PROC | 0 | – | – | – | 1 | 0 |" in md
    # backlog aging at the end of 2018: only this module's cases
    for bucket, count in [
        ("< 3 months", 1),
        ("3–6 months", 1),
        ("6–12 months", 1),
        ("1–2 years", 0),
    ]:
        assert f"| {bucket} | {count} |" in md
    # appraisal lag: one valuation of 30 days completed in 2018
    assert "| valuation | 1 | 30.0 | 30.0 | 30.0 |" in md
    # provincial comparison: Quảng Ninh has C2 pending, C1 resolved and monitored
    assert re.search(
        r"\| \d+ \| Quảng Ninh \(22\) \| 1 \| 2 \| 1 \| 50\.0% \| 365\.0 \| 2 \| 1 \(1\) \|", md
    )
    assert "## Slowest pending transfers" in md and "## Data quality" in md

    # the HTML parses, has one inline SVG per chart, and no external resource
    parser = _Tags()
    parser.feed(page)
    parser.close()
    assert parser.tags.count("svg") == 5
    assert not re.search(r"<(script|link)\b|src=\"http", page)
    for svg in re.findall(r"<svg\b.*?</svg>", page, flags=re.S):
        ET.fromstring(svg)
    assert "INSP → POLICE" in page and "Quảng Ninh (22)" in page

    artifacts = _read_artifact("report-national-year")
    assert artifacts, "markdown artifact report-national-year"
    assert all(a.type == "markdown" for a in artifacts)
    assert any("Nationwide, 2018: 5 cases opened" in (a.data or "") for a in artifacts)


def test_province_report_and_cli(published, tmp_path):
    from click.testing import CliRunner

    from services.serving.report_command import report

    tag = published
    args = [
        "--scope",
        "22",
        "--period",
        "quarter",
        "--from",
        "2018-01-01",
        "--to",
        "2018-12-31",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(report, args)
    assert result.exit_code == 0, result.output
    md_path = tmp_path / "report-22-quarter-2018-01-01-2018-12-31.md"
    html_path = tmp_path / "report-22-quarter-2018-01-01-2018-12-31.html"
    printed = [line for line in result.output.splitlines() if line.endswith((".md", ".html"))]
    assert printed == [str(md_path.resolve()), str(html_path.resolve())]
    md = md_path.read_text()
    assert md.startswith("# casestream report — Quảng Ninh (22), 2018 Q1 – 2018 Q4")
    # Q4 2018 in Quảng Ninh: C1 resolved (opened earlier, monitored), C2 pending
    assert (
        "Quảng Ninh (22), 2018 Q4: 0 cases opened, 1 resolved (clearance rate –), 1 pending at "
        "the end of the period. 1 monitored, 1 completed. 0 transfers to investigation." in md
    )
    assert "Quảng Ninh (22) ranks" in md
    assert "| INSP → POLICE | 2 | 6.0 | 9.2 | 10.0 | 2 | 0 | 0 |" in md  # the whole range
    assert "| 6–12 months | 1 | 100.0% |" in md
    # slowest pending transfer: T3, sent 2018-06-01 00:00 Vietnam time, 214 days before 2019
    assert (
        f"| 1 | {tag}:C2 | {tag}:T3 | 22-POLICE → 22-PROC | signs_of_crime | 2018-06-01 | 214 |"
    ) in md
    assert "| valuation | 1 | 30.0 | 30.0 | 30.0 | 0 | – |" in md
    assert _read_artifact("report-22-quarter")

    bad = CliRunner().invoke(report, ["--scope", "7x"])
    assert bad.exit_code != 0 and "province code" in bad.output
