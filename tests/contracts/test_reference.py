"""Reference data: provinces before/after the 2025 merger, agencies, successors."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path

import pytest

from services.contracts import reference as ref
from services.contracts.schema import schemas_dir

pytestmark = pytest.mark.unit

BEFORE = date(2025, 6, 30)
MERGER = date(2025, 7, 1)

# Official two-digit codes of the 63 provinces in force until 2025-06-30 (Decision 124/2004/QĐ-TTg).
CODES_63 = tuple(
    "01 02 04 06 08 10 11 12 14 15 17 19 20 22 24 25 26 27 30 31 33 34 35 36 37 38 40 42 44 45 46 "  # noqa: SIM905
    "48 49 51 52 54 56 58 60 62 64 66 67 68 70 72 74 75 77 79 80 82 83 84 86 87 89 91 92 93 94 95 96".split()
)
# The 34 provinces from 2025-07-01 (Resolution 202/2025/QH15; codes of Decision 19/2025/QĐ-TTg).
CODES_34 = tuple(
    "01 04 08 11 12 14 15 19 20 22 24 25 31 33 37 38 40 42 44 46 48 51 52 56 66 68 75 79 80 82 86 91 92 96".split()  # noqa: SIM905
)
TYPES = (
    "PIC",
    "IAC",
    "SC",
    "INSP",
    "AUDIT",
    "POLICE",
    "PROC",
    "COURT",
    "CJE",
    "CUSTOMS",
    "TAX",
    "MARKET",
    "FOREST",
)


def codes_at(at):
    return [p.code for p in ref.provinces_at(at)]


def test_63_provinces_plus_central_before_the_merger():
    assert len(CODES_63) == 63
    for at in (date(2020, 1, 1), date(2024, 12, 31), date(2025, 1, 1), BEFORE):
        codes = codes_at(at)
        assert codes == ["00", *CODES_63], at
        assert len(set(codes)) == 64


def test_34_provinces_plus_central_after_the_merger():
    assert len(CODES_34) == 34
    for at in (MERGER, date(2026, 1, 1), date(2030, 1, 1)):
        assert codes_at(at) == ["00", *CODES_34], at


@pytest.mark.parametrize(
    "code, name",
    [
        ("01", "Hà Nội"),
        ("02", "Hà Giang"),
        ("04", "Cao Bằng"),
        ("11", "Điện Biên"),
        ("20", "Lạng Sơn"),
        ("22", "Quảng Ninh"),
        ("34", "Thái Bình"),
        ("44", "Quảng Bình"),
        ("45", "Quảng Trị"),
        ("46", "Thừa Thiên Huế"),
        ("79", "Hồ Chí Minh"),
        ("96", "Cà Mau"),
        ("00", "Trung ương"),
    ],
)
def test_names_of_pre_merger_codes(code, name):
    assert ref.province(code, date(2024, 6, 1)).name == name


@pytest.mark.parametrize(
    "old, new, new_name",
    [
        ("02", "08", "Tuyên Quang"),  # Hà Giang -> Tuyên Quang
        ("06", "19", "Thái Nguyên"),  # Bắc Kạn -> Thái Nguyên
        ("34", "33", "Hưng Yên"),  # Thái Bình -> Hưng Yên
        ("44", "44", "Quảng Trị"),  # Quảng Bình's code is kept by the merged Quảng Trị
        ("45", "44", "Quảng Trị"),
        ("74", "79", "Hồ Chí Minh"),  # Bình Dương
        ("77", "79", "Hồ Chí Minh"),  # Bà Rịa - Vũng Tàu
        ("26", "25", "Phú Thọ"),  # Vĩnh Phúc
        ("17", "25", "Phú Thọ"),  # Hòa Bình
        ("27", "24", "Bắc Ninh"),  # Bắc Ninh keeps its name, takes Bắc Giang's code
        ("64", "52", "Gia Lai"),
        ("72", "80", "Tây Ninh"),
        ("87", "82", "Đồng Tháp"),
        ("89", "91", "An Giang"),
        ("10", "15", "Lào Cai"),
        ("93", "92", "Cần Thơ"),
        ("94", "92", "Cần Thơ"),
        ("95", "96", "Cà Mau"),
        ("20", "20", "Lạng Sơn"),  # unchanged
        ("01", "01", "Hà Nội"),
        ("00", "00", "Trung ương"),
    ],
)
def test_current_province_follows_the_merger(old, new, new_name):
    assert ref.current_province(old, MERGER) == new
    assert ref.current_province(old, date(2026, 5, 1)) == new
    assert ref.province(new, MERGER).name == new_name
    assert ref.current_province(old, BEFORE) == old  # historical geography: itself


def test_current_province_defaults_to_today_and_rejects_unknown_codes():
    assert ref.current_province("34") == ref.current_province("34", date.today())
    with pytest.raises(KeyError):
        ref.current_province("03")


def test_huế_renamed_at_the_start_of_2025():
    assert ref.province("46", date(2024, 12, 31)).name == "Thừa Thiên Huế"
    assert ref.province("46", date(2025, 1, 1)).name == "Huế"
    assert ref.current_province("46", date(2025, 3, 1)) == "46"


def test_every_successor_exists_and_is_valid_after_the_merger():
    rows = ref.provinces()
    for p in rows:
        if p.valid_to is None:
            assert p.successor_code is None, p
            continue
        assert p.successor_code, f"{p.code} {p.name} ends without successor"
        day_after = p.valid_to + timedelta(days=1)
        assert ref.is_known_province(p.successor_code, day_after), p
        assert ref.is_known_province(p.successor_code, MERGER), p
        assert ref.current_province(p.code, MERGER) in CODES_34


def test_rows_of_one_code_do_not_overlap():
    by_code = {}
    for p in ref.provinces():
        by_code.setdefault(p.code, []).append(p)
    for code, rows in by_code.items():
        rows.sort(key=lambda p: p.valid_from or date.min)
        for a, b in zip(rows, rows[1:], strict=False):
            assert a.valid_to is not None and b.valid_from == a.valid_to + timedelta(days=1), code


def test_every_pre_merger_province_maps_into_the_34():
    targets = {ref.current_province(code, MERGER) for code in CODES_63}
    assert targets == set(CODES_34)


def test_names_are_unique_per_date_and_ascii_names_are_ascii():
    for at in (BEFORE, MERGER):
        names = [p.name for p in ref.provinces_at(at)]
        assert len(names) == len(set(names)), at
    for p in ref.provinces():
        assert p.name_ascii.isascii() and p.name_ascii, p


def test_csv_headers_and_iso_dates():
    folder = schemas_dir() / "reference"
    expected = {
        "provinces.csv": ["code", "name", "name_ascii", "valid_from", "valid_to", "successor_code"],
        "agency_types.csv": ["code", "name", "role"],
        "agencies_extra.csv": [
            "agency_id",
            "name",
            "valid_from",
            "valid_to",
            "successor_agency_id",
        ],
    }
    for name, header in expected.items():
        with (folder / name).open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == header
        for row in rows[1:]:
            record = dict(zip(header, row, strict=True))
            for key in ("valid_from", "valid_to"):
                if record.get(key):
                    date.fromisoformat(record[key])


# --------------------------------------------------------------------------- agencies


def test_agency_types():
    types = ref.agency_types()
    assert tuple(types) == TYPES
    assert {t.role for t in types.values()} <= set(ref.ROLES)
    assert types["POLICE"].role == "investigation"
    assert types["PROC"].role == "prosecution"
    assert types["COURT"].role == "trial"
    assert types["CJE"].role == "enforcement"
    assert types["INSP"].role == "detection"
    assert ref.agency_role("20-POLICE") == "investigation"


def test_province_of_and_agency_type():
    assert ref.province_of("20-POLICE") == "20"
    assert ref.agency_type("20-POLICE") == "POLICE"
    assert ref.agency_type("00-AUDIT") == "AUDIT"
    for bad in ("20POLICE", "2-POLICE", "20-police", "", "20-POLICE-1", "20-POLICE\n", "٢٠-POLICE"):
        with pytest.raises(ValueError, match="malformed agency_id"):
            ref.province_of(bad)


def test_every_valid_province_times_type_is_an_agency():
    assert len(ref.agencies_at(BEFORE)) == 64 * 13
    assert len(ref.agencies_at(MERGER)) == 35 * 13
    assert "20-POLICE" in ref.agencies_at(MERGER)
    assert "34-POLICE" in ref.agencies_at(BEFORE)
    assert "34-POLICE" not in ref.agencies_at(MERGER)
    assert len(ref.all_agencies()) == 64 * 13


@pytest.mark.parametrize(
    "agency_id, at, known",
    [
        ("20-POLICE", date(2024, 3, 5), True),
        ("20-POLICE", MERGER, True),
        ("34-POLICE", BEFORE, True),
        ("34-POLICE", MERGER, False),
        ("33-POLICE", BEFORE, True),
        ("45-INSP", date(2025, 8, 1), False),
        ("44-INSP", date(2025, 8, 1), True),
        ("00-AUDIT", date(2024, 1, 1), True),
        ("00-SC", MERGER, True),
        ("20-FBI", BEFORE, False),
        ("03-POLICE", BEFORE, False),
        ("20-police", BEFORE, False),
        ("34-POLICE", None, True),  # None = ever known
        ("03-POLICE", None, False),
    ],
)
def test_is_known_agency(agency_id, at, known):
    assert ref.is_known_agency(agency_id, at) is known


def test_agency_names_and_successors():
    central = ref.agency("00-AUDIT", date(2024, 1, 1))
    assert "State Audit" in central.name
    lang_son_police = ref.agency("20-POLICE", date(2024, 1, 1))
    assert "Police investigation" in lang_son_police.name and "Lạng Sơn" in lang_son_police.name
    thai_binh = ref.agency("34-POLICE", BEFORE)
    assert thai_binh.valid_to == BEFORE and thai_binh.successor_agency_id == "33-POLICE"
    assert ref.agency("34-POLICE", MERGER) is None
    assert ref.current_agency("34-POLICE", MERGER) == "33-POLICE"
    assert ref.current_agency("45-PROC", MERGER) == "44-PROC"
    assert ref.current_agency("20-PROC", MERGER) == "20-PROC"
    assert ref.current_agency("34-POLICE", BEFORE) == "34-POLICE"


def test_extra_agencies_reference_known_types_and_provinces():
    data = ref.reference()
    assert any(a.agency_id == "00-AUDIT" for a in data.extra_agencies)
    for a in data.extra_agencies:
        assert a.type_code in data.agency_types
        assert ref.is_known_province(a.province_code)


# --------------------------------------------------------------------------- custom data (exceptions, chains)


def write_reference(folder: Path, provinces: str, extra: str = "") -> ref.ReferenceData:
    folder.mkdir(exist_ok=True)
    (folder / "provinces.csv").write_text(
        "code,name,name_ascii,valid_from,valid_to,successor_code\n" + provinces, encoding="utf-8"
    )
    (folder / "agency_types.csv").write_text(
        "code,name,role\nPOLICE,Police,investigation\nINSP,Inspectorate,detection\n",
        encoding="utf-8",
    )
    (folder / "agencies_extra.csv").write_text(
        "agency_id,name,valid_from,valid_to,successor_agency_id\n" + extra, encoding="utf-8"
    )
    return ref.load_reference(folder)


def test_successor_chains_are_followed(tmp_path):
    data = write_reference(
        tmp_path,
        "10,A,A,,2020-12-31,20\n20,B,B,,2022-12-31,30\n30,C,C,2021-01-01,,\n",
    )
    assert ref.current_province("10", date(2021, 6, 1), data) == "20"
    assert ref.current_province("10", date(2023, 6, 1), data) == "30"
    assert ref.current_province("20", date(2023, 6, 1), data) == "30"
    assert ref.current_agency("10-POLICE", date(2023, 6, 1), data) == "30-POLICE"
    with pytest.raises(ValueError):
        ref.current_province("30", date(2019, 1, 1), data)  # C did not exist yet


def test_extra_rows_override_the_derived_agency(tmp_path):
    data = write_reference(
        tmp_path,
        "10,A,A,,,\n20,B,B,,,\n",
        "10-INSP,Inspectorate of A (abolished),,2023-12-31,20-INSP\n",
    )
    assert ref.is_known_agency("10-POLICE", date(2024, 6, 1), data)  # derived: province valid
    assert ref.is_known_agency("10-INSP", date(2023, 6, 1), data)
    assert not ref.is_known_agency("10-INSP", date(2024, 6, 1), data)  # exception: ended
    assert ref.current_agency("10-INSP", date(2024, 6, 1), data) == "20-INSP"
    assert ref.agency("10-INSP", date(2023, 1, 1), data).name == "Inspectorate of A (abolished)"


def test_bad_reference_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="malformed"):
        write_reference(tmp_path, "1,A,A,,,\n")
    with pytest.raises(ValueError, match="malformed agency_id"):
        write_reference(tmp_path, "10,A,A,,,\n", "10_POLICE,x,,,\n")
