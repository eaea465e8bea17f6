"""Unit tests of the inline SVG chart helpers: well-formed XML, proportional bars, empty data."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from services.serving import charts
from services.serving.charts import PercentileRow

pytestmark = pytest.mark.unit

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert float(root.get("width")) > 0 and float(root.get("height")) > 0
    return root


def bars(root: ET.Element) -> list[ET.Element]:
    """The data bars (rects carrying data-value), in drawing order."""
    return [r for r in root.iter(f"{SVG}rect") if r.get("data-value") is not None]


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def test_bar_chart_is_well_formed_and_heights_scale_with_values():
    root = parse(
        charts.bar_chart([("2021", 10), ("2022", 20), ("2023", 40)], title="Pending", unit="cases")
    )
    heights = [float(r.get("height")) for r in bars(root)]
    assert len(heights) == 3
    assert heights[1] == pytest.approx(2 * heights[0], rel=1e-3)
    assert heights[2] == pytest.approx(4 * heights[0], rel=1e-3)
    # bars stand on the same baseline
    bottoms = {round(float(r.get("y")) + float(r.get("height")), 1) for r in bars(root)}
    assert len(bottoms) == 1
    assert "Pending" in texts(root) and "2022" in texts(root)


def test_hbar_chart_widths_scale_with_values_and_highlight():
    root = parse(
        charts.hbar_chart(
            [("Hà Nội (01)", 30), ("Lạng Sơn (20)", 15), ("x", 0)], highlight=["Lạng Sơn (20)"]
        )
    )
    rects = bars(root)
    widths = [float(r.get("width")) for r in rects]
    assert widths[0] == pytest.approx(2 * widths[1], rel=1e-3)
    assert widths[2] == 0
    assert rects[1].get("fill") == charts.BAR_HIGHLIGHT != rects[0].get("fill")
    assert "Lạng Sơn (20)" in texts(root)


@pytest.mark.parametrize("log", [False, True])
def test_percentile_chart_orders_p50_p90_max(log):
    rows = [
        PercentileRow("INSP → POLICE", 2.0, 9.2, 10.0, 2),
        PercentileRow("COURT → CJE", 7.0, 35.0, 600.0, 40),
    ]
    root = parse(charts.percentile_chart(rows, title="Lag", unit="days", log=log))
    rects = bars(root)
    assert len(rects) == 4  # p90 then p50 bar per row
    for p90_bar, p50_bar in (rects[0:2], rects[2:4]):
        assert float(p50_bar.get("width")) < float(p90_bar.get("width"))
    all_text = " ".join(texts(root))
    assert "INSP → POLICE" in all_text and "n=40" in all_text and "max 600" in all_text


def test_linear_percentile_chart_is_proportional():
    root = parse(charts.percentile_chart([PercentileRow("a", 10, 40, 40)]))
    p90_bar, p50_bar = bars(root)
    assert float(p90_bar.get("width")) == pytest.approx(4 * float(p50_bar.get("width")), rel=1e-3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: charts.bar_chart([], title="Empty"),
        lambda: charts.hbar_chart([], title="Empty"),
        lambda: charts.percentile_chart([], title="Empty"),
        lambda: charts.percentile_chart([PercentileRow("a", None, None, None)], title="Empty"),
    ],
)
def test_empty_data_gives_a_valid_no_data_chart(make):
    root = parse(make())
    assert "no data" in texts(root)
    assert bars(root) == []


def test_zero_none_nan_and_negative_values_draw_as_zero():
    root = parse(charts.bar_chart([("a", 0), ("b", None), ("c", math.nan), ("d", -5)]))
    assert [float(r.get("height")) for r in bars(root)] == [0, 0, 0, 0]


def test_labels_are_escaped():
    svg = charts.hbar_chart([('<script>&"x"', 3)], title="a < b & c")
    root = parse(svg)
    assert "<script>" not in svg
    assert '<script>&"x"' in texts(root)


def test_many_long_labels_are_rotated_and_still_parse():
    items = [(f"province number {i}", i) for i in range(1, 20)]
    root = parse(charts.bar_chart(items))
    assert any("rotate" in (t.get("transform") or "") for t in root.iter(f"{SVG}text"))
    assert len(bars(root)) == 19


def test_nice_ticks_and_number_format():
    assert charts.nice_ticks(441) == [0, 100, 200, 300, 400, 500]
    assert charts.nice_ticks(1, integer=True) == [0, 1]
    assert charts.nice_ticks(0) == [0, 1]
    assert charts.format_number(1_234_567) == "1.2M"
    assert charts.format_number(12_345) == "12.3k"
    assert charts.format_number(3.0) == "3"
    assert charts.format_number(None) == "–"
