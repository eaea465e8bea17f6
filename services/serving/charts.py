"""Tiny inline SVG charts for the reports: pure Python, no JavaScript, no CDN, no build step.

Every function returns one self-contained ``<svg>`` element as a string (well-formed XML, colours
as attributes so it renders without any stylesheet), ready to paste into an HTML page:

* :func:`bar_chart` — vertical bars, one per label (e.g. pending cases by age bucket).
* :func:`hbar_chart` — horizontal bars, labels on the left (e.g. provinces by pending cases).
* :func:`percentile_chart` — one row per group with the p50 / p90 / max of a distribution
  (e.g. transfer lag by agency pair): a dark bar to the median, a light bar to p90 and a whisker
  to the maximum, on a linear or logarithmic axis.

Empty data gives a small chart saying "no data". Negative values are drawn as zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

BAR = "#3b6ea5"
BAR_HIGHLIGHT = "#d9822b"
LIGHT = "#a9c4e0"
AXIS = "#888888"
GRID = "#e3e3e3"
TEXT = "#222222"
FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif\""


@dataclass(frozen=True)
class PercentileRow:
    """One group of a :func:`percentile_chart` (values in the chart's unit; None = unknown)."""

    label: str
    p50: float | None
    p90: float | None
    max: float | None
    count: int | None = None


def _attr(value: object) -> str:
    return escape(str(value), {'"': "&quot;"})


def _text(
    x: float,
    y: float,
    content: str,
    *,
    size: int = 12,
    anchor: str = "start",
    weight: str = "normal",
    fill: str = TEXT,
    extra: str = "",
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'font-weight="{weight}" fill="{fill}"{extra}>{escape(content)}</text>'
    )


def _svg(width: int, height: int, title: str, body: Iterable[str]) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_attr(title)}" {FONT}>'
    )
    parts = [head, f"<title>{escape(title)}</title>"]
    if title:
        parts.append(_text(8, 18, title, size=14, weight="bold"))
    parts.extend(body)
    parts.append("</svg>")
    return "".join(parts)


def _empty(title: str, width: int) -> str:
    return _svg(width, 70, title, [_text(width / 2, 50, "no data", anchor="middle", fill=AXIS)])


def format_number(value: float | None, digits: int = 1) -> str:
    """Compact human number: 1234567 → 1.2M, 12345 → 12.3k, 12.34 → 12.3, 3.0 → 3."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    sign = "-" if value < 0 else ""
    v = abs(value)
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e4, "k")):
        if v >= limit:
            shown = v / (limit if suffix != "k" else 1e3)
            return f"{sign}{shown:.{digits}f}".rstrip("0").rstrip(".") + suffix
    if float(v).is_integer():
        return f"{sign}{int(v)}"
    return f"{sign}{v:.{digits}f}"


def nice_ticks(maximum: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values from 0 to at least ``maximum`` (about ``count`` intervals).

    ``integer=True`` (counts) keeps the step a whole number.
    """
    if maximum <= 0 or not math.isfinite(maximum):
        return [0.0, 1.0]
    raw = maximum / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    ticks = [0.0]
    while ticks[-1] < maximum - 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def text_width(text: str, size: int = 12) -> float:
    """Rough rendered width of ``text`` in px (average glyph ≈ 0.6 em)."""
    return len(text) * size * 0.6


def _clean(values: Iterable[float | None]) -> list[float]:
    out = []
    for v in values:
        if v is None or not math.isfinite(float(v)):
            out.append(0.0)
        else:
            out.append(max(0.0, float(v)))
    return out


def bar_chart(
    items: Sequence[tuple[str, float | None]],
    *,
    title: str = "",
    unit: str = "",
    width: int = 640,
    height: int = 280,
    highlight: Iterable[str] = (),
) -> str:
    """Vertical bars, one per (label, value); bar heights are proportional to the values."""
    if not items:
        return _empty(title, width)
    labels = [str(label) for label, _ in items]
    values = _clean(v for _, v in items)
    marked = set(highlight)
    left, right, top = 56, 16, 44
    rotate = len(items) > 8 or max(len(s) for s in labels) > 12
    bottom = 80 if rotate else 40
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = nice_ticks(max(values), integer=all(v.is_integer() for v in values))
    scale_max = ticks[-1]
    body = []
    for tick in ticks:
        y = top + plot_h - plot_h * tick / scale_max
        body.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
            f'stroke="{GRID}" stroke-width="1"/>'
        )
        body.append(_text(left - 6, y + 4, format_number(tick), size=11, anchor="end", fill=AXIS))
    slot = plot_w / len(items)
    bar_w = max(2.0, slot * 0.7)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = left + i * slot + (slot - bar_w) / 2
        h = plot_h * value / scale_max
        y = top + plot_h - h
        colour = BAR_HIGHLIGHT if label in marked else BAR
        body.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
            f'fill="{colour}" data-value="{value:g}"><title>{escape(label)}: '
            f"{escape(format_number(value))}{escape(unit)}</title></rect>"
        )
        body.append(_text(x + bar_w / 2, y - 4, format_number(value), size=11, anchor="middle"))
        cx, cy = x + bar_w / 2, top + plot_h + 14
        if rotate:
            body.append(
                _text(
                    cx,
                    cy,
                    label,
                    size=11,
                    anchor="end",
                    extra=f' transform="rotate(-40 {cx:.1f} {cy:.1f})"',
                )
            )
        else:
            body.append(_text(cx, cy + 2, label, size=11, anchor="middle"))
    base = top + plot_h
    body.append(
        f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" '
        f'stroke="{AXIS}" stroke-width="1"/>'
    )
    if unit:
        body.append(_text(width - right, top - 6, unit.strip(), size=11, anchor="end", fill=AXIS))
    return _svg(width, height, title, body)


def hbar_chart(
    items: Sequence[tuple[str, float | None]],
    *,
    title: str = "",
    unit: str = "",
    width: int = 640,
    bar_height: int = 20,
    label_width: int | None = None,
    highlight: Iterable[str] = (),
) -> str:
    """Horizontal bars, labels on the left; bar lengths are proportional to the values.

    ``label_width`` (px) defaults to what the longest label needs (at most half the width).
    """
    if not items:
        return _empty(title, width)
    labels = [str(label) for label, _ in items]
    if label_width is None:
        label_width = int(min(width / 2, max(text_width(s) for s in labels) + 16))
    values = _clean(v for _, v in items)
    marked = set(highlight)
    top, gap, right = 34, 6, 56
    height = top + len(items) * (bar_height + gap) + 28
    plot_w = width - label_width - right
    ticks = nice_ticks(max(values), integer=all(v.is_integer() for v in values))
    scale_max = ticks[-1]
    body = []
    plot_bottom = top + len(items) * (bar_height + gap)
    for tick in ticks:
        x = label_width + plot_w * tick / scale_max
        body.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{plot_bottom}" '
            f'stroke="{GRID}" stroke-width="1"/>'
        )
        body.append(
            _text(x, plot_bottom + 16, format_number(tick), size=11, anchor="middle", fill=AXIS)
        )
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = top + i * (bar_height + gap)
        w = plot_w * value / scale_max
        colour = BAR_HIGHLIGHT if label in marked else BAR
        body.append(_text(label_width - 8, y + bar_height * 0.72, label, size=12, anchor="end"))
        body.append(
            f'<rect x="{label_width}" y="{y}" width="{w:.1f}" height="{bar_height}" '
            f'fill="{colour}" data-value="{value:g}"><title>{escape(label)}: '
            f"{escape(format_number(value))}{escape(unit)}</title></rect>"
        )
        body.append(
            _text(label_width + w + 4, y + bar_height * 0.72, format_number(value), size=11)
        )
    body.append(
        f'<line x1="{label_width}" y1="{top - 4}" x2="{label_width}" y2="{plot_bottom}" '
        f'stroke="{AXIS}" stroke-width="1"/>'
    )
    if unit:
        body.append(_text(width - 8, 18, unit.strip(), size=11, anchor="end", fill=AXIS))
    return _svg(width, height, title, body)


def percentile_chart(
    rows: Sequence[PercentileRow],
    *,
    title: str = "",
    unit: str = "",
    width: int = 760,
    row_height: int = 24,
    label_width: int | None = None,
    log: bool = False,
) -> str:
    """Distribution summary per group: dark bar to p50, light bar to p90, whisker to max.

    With ``log=True`` the axis is logarithmic (base 10), which keeps medians of a few days
    visible next to stalled maxima of many months. The figures are printed right of the plot.
    """
    drawable = [r for r in rows if r.max is not None or r.p90 is not None or r.p50 is not None]
    if not drawable:
        return _empty(title, width)
    summaries = [
        (f"n={r.count} · " if r.count is not None else "")
        + f"p50 {format_number(r.p50)} · p90 {format_number(r.p90)} · max {format_number(r.max)}"
        for r in drawable
    ]
    if label_width is None:
        label_width = int(min(width / 3, max(text_width(r.label) for r in drawable) + 16))
    top, gap = 52, 8
    right = int(min(width / 3, max(text_width(s, 11) for s in summaries) + 16))
    plot_w = width - label_width - right
    n = len(drawable)
    plot_bottom = top + n * (row_height + gap)
    height = plot_bottom + 30
    peaks = [max(_clean([r.p50, r.p90, r.max])) for r in drawable]
    peak = max(peaks) if peaks else 0.0
    body = []
    if log:
        positives = [v for r in drawable for v in _clean([r.p50, r.p90, r.max]) if v > 0]
        low_exp = math.floor(math.log10(min(positives))) if positives else 0
        high_exp = math.ceil(math.log10(peak)) if peak > 0 else 1
        if high_exp <= low_exp:
            high_exp = low_exp + 1
        ticks = [10.0**e for e in range(low_exp, high_exp + 1)]

        def pos(v: float) -> float:
            if v <= 0:
                return 0.0
            frac = (math.log10(v) - low_exp) / (high_exp - low_exp)
            return plot_w * min(1.0, max(0.0, frac))
    else:
        ticks = nice_ticks(peak)

        def pos(v: float) -> float:
            return plot_w * max(0.0, v) / ticks[-1]

    for tick in ticks:
        x = label_width + pos(tick)
        body.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{plot_bottom}" '
            f'stroke="{GRID}" stroke-width="1"/>'
        )
        body.append(
            _text(x, plot_bottom + 16, format_number(tick), size=11, anchor="middle", fill=AXIS)
        )
    # legend
    lx = label_width
    body.append(f'<rect x="{lx}" y="28" width="12" height="10" fill="{BAR}"/>')
    body.append(_text(lx + 16, 37, "to p50", size=11))
    body.append(f'<rect x="{lx + 70}" y="28" width="12" height="10" fill="{LIGHT}"/>')
    body.append(_text(lx + 86, 37, "p50–p90", size=11))
    body.append(
        f'<line x1="{lx + 150}" y1="33" x2="{lx + 168}" y2="33" stroke="{TEXT}" '
        f'stroke-width="1.5"/><line x1="{lx + 168}" y1="28" x2="{lx + 168}" y2="38" '
        f'stroke="{TEXT}" stroke-width="1.5"/>'
    )
    body.append(_text(lx + 174, 37, "max", size=11))
    axis_note = ", ".join(x for x in (unit.strip(), "log scale" if log else "") if x)
    if axis_note:
        body.append(_text(width - 8, 18, axis_note, size=11, anchor="end", fill=AXIS))
    for i, row in enumerate(drawable):
        y = top + i * (row_height + gap)
        mid = y + row_height / 2
        p50, p90, mx = _clean([row.p50, row.p90, row.max])
        body.append(_text(label_width - 8, mid + 4, row.label, size=12, anchor="end"))
        x0 = label_width
        if mx > 0:
            body.append(
                f'<line x1="{x0 + pos(p90):.1f}" y1="{mid:.1f}" x2="{x0 + pos(mx):.1f}" '
                f'y2="{mid:.1f}" stroke="{TEXT}" stroke-width="1.5"/>'
                f'<line x1="{x0 + pos(mx):.1f}" y1="{y + 4}" x2="{x0 + pos(mx):.1f}" '
                f'y2="{y + row_height - 4}" stroke="{TEXT}" stroke-width="1.5"/>'
            )
        body.append(
            f'<rect x="{x0}" y="{y + 3}" width="{pos(p90):.1f}" height="{row_height - 6}" '
            f'fill="{LIGHT}" data-value="{p90:g}"/>'
        )
        body.append(
            f'<rect x="{x0}" y="{y + 3}" width="{pos(p50):.1f}" height="{row_height - 6}" '
            f'fill="{BAR}" data-value="{p50:g}"/>'
        )
        body.append(_text(label_width + plot_w + 8, mid + 4, summaries[i], size=11))
    body.append(
        f'<line x1="{label_width}" y1="{top - 4}" x2="{label_width}" y2="{plot_bottom}" '
        f'stroke="{AXIS}" stroke-width="1"/>'
    )
    return _svg(width, height, title, body)
