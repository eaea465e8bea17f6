"""Unit tests of the scenario generator (services/agency/generator.py, `casestream generate`)."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.agency.generate_command import generate as generate_command
from services.agency.generator import (
    GeneratorOptions,
    Summary,
    check_jsonl,
    generate,
    iter_lines,
    write_jsonl,
)
from services.contracts import reference as ref
from services.contracts.events import EVENT_TYPES, parse_event, to_json_form

pytestmark = pytest.mark.unit

MERGER = date(2025, 7, 1)
MERGED_AWAY = frozenset(
    p.code for p in ref.provinces() if p.valid_to is not None and p.successor_code != p.code
)
OPTIONS = GeneratorOptions(seed=11, events=20_000, duplicates=0.01, out_of_order=0.02)


class Scenario:
    def __init__(self, path: Path, summary: Summary) -> None:
        self.path = path
        self.summary = summary
        self.raw = path.read_text(encoding="utf-8").splitlines()
        self.events = [json.loads(line) for line in self.raw]
        seen: dict[str, dict] = {}
        for event in self.events:
            seen.setdefault(event["event_id"], event)
        self.unique = list(seen.values())


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    path = tmp_path_factory.mktemp("generator") / "scenario.jsonl"
    summary = write_jsonl(OPTIONS, path)
    return Scenario(path, summary)


def _local(event: dict) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))]


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    options = GeneratorOptions(seed=5, events=3_000, duplicates=0.02, out_of_order=0.05)
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_jsonl(options, a)
    write_jsonl(options, b)
    write_jsonl(GeneratorOptions(seed=6, events=3_000, duplicates=0.02, out_of_order=0.05), c)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert not list(tmp_path.glob("*.partial"))


def test_python_api_yields_the_lines_of_the_file(tmp_path: Path) -> None:
    options = GeneratorOptions(seed=3, events=2_000, duplicates=0.05, out_of_order=0.05)
    path = tmp_path / "x.jsonl"
    summary = write_jsonl(options, path)
    lines = path.read_text().splitlines()
    assert list(iter_lines(options)) == lines
    assert list(generate(options)) == [json.loads(line) for line in lines]
    assert summary.lines == len(lines)
    assert summary.events + summary.duplicates == summary.lines
    opened = {json.loads(line)["case_id"] for line in lines if '"case_opened"' in line}
    assert summary.cases == len(opened)


def test_perturbations_and_order_do_not_change_the_unique_events(tmp_path: Path) -> None:
    base = GeneratorOptions(seed=9, cases=400)
    plain = list(iter_lines(base))
    noisy = list(iter_lines(GeneratorOptions(seed=9, cases=400, duplicates=0.1, out_of_order=0.1)))
    delivered = list(iter_lines(GeneratorOptions(seed=9, cases=400, sorted=False)))
    assert len(set(plain)) == len(plain)
    assert set(noisy) == set(plain)
    assert len(noisy) > len(plain)
    assert noisy != plain
    assert sorted(delivered) == sorted(plain)
    assert delivered != plain


# --------------------------------------------------------------------------- validity


def test_every_line_is_a_valid_canonical_event(scenario: Scenario) -> None:
    now = datetime.now(UTC)
    for raw, event in zip(scenario.raw, scenario.events, strict=True):
        parsed = parse_event(event, now=now)
        assert to_json_form(parsed) == event, raw
        assert json.loads(json.dumps(event)) == event


def test_check_reports_counts_by_type_and_bad_lines(scenario: Scenario, tmp_path: Path) -> None:
    report = check_jsonl(scenario.path)
    assert report.ok
    assert report.lines == report.valid == len(scenario.raw)
    assert sum(report.by_type.values()) == len(scenario.raw)
    bad = tmp_path / "bad.jsonl"
    broken = dict(scenario.events[0], agency_id="99-POLICE")
    bad.write_text(scenario.raw[0] + "\n" + json.dumps(broken) + "\nnot json\n")
    report = check_jsonl(bad)
    assert (report.valid, report.invalid) == (1, 2)
    assert report.errors[0].startswith("line 2: agency_id")


def test_size_is_close_to_the_target_and_every_event_type_appears(scenario: Scenario) -> None:
    assert 0.85 * 20_000 <= len(scenario.raw) <= 1.15 * 20_000
    counts = Counter(e["event_type"] for e in scenario.unique)
    assert set(counts) == set(EVENT_TYPES)
    assert counts == Counter({t: n for t, n in scenario.summary.by_type.items() if n})
    assert scenario.summary.events == len(scenario.unique)


def test_cases_option_is_exact() -> None:
    events = list(generate(GeneratorOptions(seed=2, cases=37)))
    assert sum(e["event_type"] == "case_opened" for e in events) == 37


def test_ids_follow_the_conventions(scenario: Scenario) -> None:
    case_re = re.compile(r"^(\d{2}-[A-Z]+)/(\d{4})/\d{4,}$")
    for event in scenario.unique:
        m = case_re.fullmatch(event["case_id"])
        assert m, event["case_id"]
        payload = event["payload"]
        if event["event_type"] == "case_opened":
            assert m[1] == event["agency_id"]
            assert m[2] == event["occurred_at"][:4]
        if event["event_type"] == "case_transferred":
            assert re.fullmatch(rf"T-{event['agency_id']}-\d{{6}}", payload["transfer_id"])
        if event["event_type"] == "appraisal_requested":
            assert re.fullmatch(rf"A-{event['agency_id']}-\d{{6}}", payload["appraisal_id"])
    opened = [e["case_id"] for e in scenario.unique if e["event_type"] == "case_opened"]
    assert len(set(opened)) == len(opened)
    assert any(e["case_id"].startswith("00-") for e in scenario.unique)


# --------------------------------------------------------------------------- delivery


def test_duplicates_repeat_identical_lines(scenario: Scenario) -> None:
    by_id: dict[str, list[str]] = defaultdict(list)
    for raw, event in zip(scenario.raw, scenario.events, strict=True):
        by_id[event["event_id"]].append(raw)
    repeated = {k: v for k, v in by_id.items() if len(v) > 1}
    extra = sum(len(v) - 1 for v in repeated.values())
    assert extra == scenario.summary.duplicates
    assert 0.005 * len(scenario.raw) <= extra <= 0.02 * len(scenario.raw)
    for lines in repeated.values():
        assert len(set(lines)) == 1


def test_out_of_order_lines_include_receipts_before_their_transfer(scenario: Scenario) -> None:
    first: dict[tuple[str, str], int] = {}
    for i, event in enumerate(scenario.events):
        if event["event_type"] in ("case_transferred", "transfer_received"):
            first.setdefault((event["event_type"], event["payload"]["transfer_id"]), i)
    early_receipts = [
        tid
        for (kind, tid), i in first.items()
        if kind == "transfer_received" and first.get(("case_transferred", tid), -1) > i
    ]
    assert len(early_receipts) >= 10
    assert scenario.summary.out_of_order >= 0.01 * len(scenario.raw)
    times = [_local(e) for e in scenario.events]
    inversions = sum(1 for a, b in zip(times, times[1:], strict=False) if b < a)
    assert inversions > 0


def test_sorted_output_without_perturbation_is_in_event_time_order() -> None:
    events = list(generate(GeneratorOptions(seed=4, events=3_000)))
    instants = [_local(e) for e in events]
    assert instants == sorted(instants)


def test_no_sorted_keeps_each_agency_in_sequence_order() -> None:
    events = list(generate(GeneratorOptions(seed=4, events=3_000, sorted=False)))
    instants = [_local(e) for e in events]
    assert instants != sorted(instants)
    last: dict[str, int] = {}
    for event in events:
        assert event["sequence"] == last.get(event["agency_id"], 0) + 1
        last[event["agency_id"]] = event["sequence"]


def test_sequences_are_contiguous_per_agency_and_follow_event_time(scenario: Scenario) -> None:
    by_agency: dict[str, list[dict]] = defaultdict(list)
    for event in scenario.unique:
        by_agency[event["agency_id"]].append(event)
    assert len(by_agency) == scenario.summary.agencies
    for agency_id, events in by_agency.items():
        events.sort(key=lambda e: e["sequence"])
        assert [e["sequence"] for e in events] == list(range(1, len(events) + 1)), agency_id
        instants = [_local(e) for e in events]
        assert instants == sorted(instants), agency_id


# --------------------------------------------------------------------------- time and geography


def test_no_event_in_the_future_or_outside_the_range(scenario: Scenario) -> None:
    first = datetime(2021, 1, 1, tzinfo=UTC) - timedelta(hours=7)
    last = datetime(2026, 1, 1, tzinfo=UTC) - timedelta(hours=7)
    now = datetime.now(UTC)
    for event in scenario.unique:
        instant = _local(event)
        assert first <= instant < last <= now


def test_end_must_be_before_today() -> None:
    with pytest.raises(ValueError, match="before today"):
        GeneratorOptions(end=date.today()).validated()
    with pytest.raises(ValueError, match="unknown province"):
        GeneratorOptions(provinces=("99",)).validated()
    with pytest.raises(ValueError, match="not both"):
        GeneratorOptions(events=10, cases=10).validated()


def test_agencies_are_valid_on_their_dates_and_merged_provinces_stop(scenario: Scenario) -> None:
    before, after = Counter(), Counter()
    for event in scenario.unique:
        local_date = _local(event).date()
        agencies = [event["agency_id"]]
        if event["event_type"] == "case_transferred":
            agencies.append(event["payload"]["to_agency_id"])
        for agency_id in agencies:
            assert ref.is_known_agency(agency_id, local_date), (agency_id, local_date)
            (after if local_date >= MERGER else before)[agency_id[:2]] += 1
    assert not MERGED_AWAY & set(after)
    assert len(MERGED_AWAY & set(before)) >= 20  # history before the merger uses them
    assert "00" in before and "00" in after


def test_cases_of_a_merged_province_continue_under_its_successor() -> None:
    events = list(generate(GeneratorOptions(seed=8, cases=400, provinces=("34",))))
    assert {e["case_id"][:3] for e in events} == {"34-", "33-"}
    for event in events:
        local_date = _local(event).date()
        code = event["agency_id"][:2]
        assert code in ({"34", "00"} if local_date < MERGER else {"33", "00"})
    continued = {
        e["case_id"]
        for e in events
        if e["case_id"].startswith("34-") and e["agency_id"][:2] == "33"
    }
    assert continued


def test_timestamps_are_mostly_in_office_hours_at_plus_seven(scenario: Scenario) -> None:
    local = [e for e in scenario.unique if e["occurred_at"].endswith("+07:00")]
    assert len(local) >= 0.97 * len(scenario.unique)
    office = [e for e in local if 7 <= _local(e).hour < 17 and _local(e).weekday() < 5]
    assert len(office) >= 0.8 * len(local)


# --------------------------------------------------------------------------- realism


def test_transfer_lags_have_a_slow_tail(scenario: Scenario) -> None:
    sent, received = {}, {}
    for event in scenario.unique:
        if event["event_type"] == "case_transferred":
            sent[event["payload"]["transfer_id"]] = _local(event)
        elif event["event_type"] == "transfer_received":
            received[event["payload"]["transfer_id"]] = _local(event)
    assert set(received) <= set(sent)
    lags = [(received[t] - sent[t]).total_seconds() / 86_400 for t in received]
    median, p90 = statistics.median(lags), _quantile(lags, 0.9)
    assert min(lags) > 0
    assert 1 <= median <= 10
    assert p90 >= 3 * median
    assert max(lags) >= 90  # transfers that stall for months
    assert len(sent) - len(received) > 0  # some are still pending at the end
    police = [e for e in scenario.unique if e["event_type"] == "case_transferred"
              and e["payload"]["to_agency_id"].endswith("-POLICE")]  # fmt: skip
    assert all(e["payload"]["reason"] == "signs_of_crime" for e in police)
    assert len(police) > 100


def test_appraisals_are_slow_and_recovery_is_partial(scenario: Scenario) -> None:
    requested, completed = {}, {}
    identified = recovered = 0
    for event in scenario.unique:
        payload = event["payload"]
        if event["event_type"] == "appraisal_requested":
            requested[payload["appraisal_id"]] = _local(event)
        elif event["event_type"] == "appraisal_completed":
            completed[payload["appraisal_id"]] = _local(event)
        elif event["event_type"] == "assets_recovered":
            identified += payload["identified_vnd"]
            recovered += payload["recovered_vnd"]
    lags = [(completed[a] - requested[a]).total_seconds() / 86_400 for a in completed]
    assert statistics.median(lags) >= 21
    assert _quantile(lags, 0.9) >= 120
    assert 0.1 < recovered / identified < 0.7


def test_case_paths_look_like_the_coordination_mechanism(scenario: Scenario) -> None:
    unique = scenario.unique
    stages = Counter(e["payload"]["stage"] for e in unique if e["event_type"] == "stage_changed")
    assert stages["investigation_opened"] > stages["indicted"] > stages["appeal_verdict"] > 0
    assert stages["enforcement_started"] > stages["enforcement_completed"] > 0
    outcomes = Counter(
        e["payload"]["outcome"] for e in unique if e["event_type"] == "case_resolved"
    )
    assert {"convicted", "disciplined", "administrative", "no_violation", "dismissed"} <= set(
        outcomes
    )
    levels = Counter(
        e["payload"]["level"] for e in unique if e["event_type"] == "monitoring_assigned"
    )
    assert levels["central"] > 0 and levels["provincial"] > 0
    for event in unique:
        if event["event_type"] == "monitoring_assigned":
            expected = "00-SC" if event["payload"]["level"] == "central" else "-SC"
            assert event["agency_id"].endswith(expected)
        if event["event_type"] == "discipline_imposed":
            assert event["agency_id"].endswith("-PIC")
    targets = Counter(
        e["payload"]["target"] for e in unique if e["event_type"] == "discipline_imposed"
    )
    assert targets["party_member"] > targets["party_organization"] > 0
    openers = Counter(e["agency_id"][3:] for e in unique if e["event_type"] == "case_opened")
    assert {"INSP", "AUDIT", "PIC", "IAC", "POLICE"} <= set(openers)
    opened = {e["case_id"] for e in unique if e["event_type"] == "case_opened"}
    resolved = {e["case_id"] for e in unique if e["event_type"] == "case_resolved"}
    assert 0.03 * len(opened) < len(opened - resolved) < 0.5 * len(opened)  # pending at the end
    monitored = {e["case_id"] for e in unique if e["event_type"] == "monitoring_assigned"}
    assert 0 < len(monitored) < 0.1 * len(opened)


# --------------------------------------------------------------------------- CLI


def test_cli_writes_checks_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "cli.jsonl"
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:  # pragma: no cover
        runner = CliRunner()
    args = ["--events", "1500", "--seed", "3", "--provinces", "01,20,79", "--duplicates",
            "0.01", "--out-of-order", "0.02", "--check", "--out", str(out)]  # fmt: skip
    result = runner.invoke(generate_command, args)
    assert result.exit_code == 0, result.output + result.stderr
    assert "invalid" in result.stderr and "case_opened" in result.stderr
    assert out.read_text().count("\n") > 1000
    again = runner.invoke(generate_command, [*args[:-1], str(tmp_path / "again.jsonl"), "-q"])
    assert again.exit_code == 0
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()
    stdout = runner.invoke(generate_command, ["--cases", "5", "-q"])
    assert stdout.exit_code == 0
    assert all(json.loads(line) for line in stdout.stdout.splitlines())
    bad = runner.invoke(generate_command, ["--end", date.today().isoformat(), "-q"])
    assert bad.exit_code != 0 and "before today" in bad.stderr


def test_injected_violations_are_the_only_change_and_each_breaks_an_authority_rule():
    from collections import defaultdict

    from services.contracts.events import parse_event
    from services.processor.authority import judge
    from services.processor.facts import Fact

    def history(share: float) -> dict[str, dict]:
        options = GeneratorOptions(seed=3, cases=400, violations=share)
        return {e["event_id"]: e for e in generate(options)}

    honest, forged = history(0.0), history(0.1)
    assert set(honest) < set(forged)  # the honest history is unchanged, only events are added
    extra = [forged[i] for i in set(forged) - set(honest)]
    assert 20 <= len(extra) <= 70 and {e["event_type"] for e in extra} == {"case_resolved"}
    cases: dict[str, list[Fact]] = defaultdict(list)
    for event in forged.values():
        fact = Fact.from_event(parse_event(event))
        cases[fact.case_id].append(fact)
    found = {v.fact.event_id for facts in cases.values() for v in judge(facts).violations}
    assert found == {e["event_id"] for e in extra}
