"""Server-side SVG charts of the monitoring dashboard (``/ui/dashboard/``).

Plain SVG strings, no JavaScript library: the dashboard works offline and in the
embedded node, and every value is drawn on the server from the index. Text is escaped;
colours are presentation attributes (no inline style, so the UI's Content Security
Policy applies unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 36, 26
COLOURS = ("#1f77b4", "#d62728", "#7f7f7f", "#2ca02c", "#9467bd")


@dataclass(frozen=True)
class Line:
    """One series of a chart; None values are gaps."""

    name: str
    values: Sequence[float | None]
    kind: str = "line"  # line | bar


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}"


def chart(
    title: str,
    lines: Sequence[Line],
    span: tuple[str, str],
    y_max: float | None = None,
    band: tuple[float, float] | None = None,
    floor: float | None = None,
) -> str:
    """An SVG chart of ``lines`` (one value per bucket) from ``span[0]`` to ``span[1]``:
    bars and lines, an optional shaded ``band`` (the expected range) and a dashed ``floor``
    (a threshold). ``data-points`` on the root counts the values drawn."""
    n = max((len(line.values) for line in lines), default=1) or 1
    values = [v for line in lines for v in line.values if v is not None]
    top = y_max if y_max is not None else max([*values, *(band or ()), floor or 0.0, 1.0])
    top = top or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / n

    def x(i: int) -> float:
        return LEFT + (i + 0.5) * step

    def y(v: float) -> float:
        return TOP + plot_h * (1.0 - min(max(v / top, 0.0), 1.0))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'data-points="{len(values)}">',
        f'<text x="{LEFT}" y="15" font-size="12" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ccc"/>',
    ]
    if band is not None:
        parts.append(
            f'<rect class="band" x="{LEFT}" y="{y(band[1]):.1f}" width="{plot_w}" '
            f'height="{max(y(band[0]) - y(band[1]), 0.5):.1f}" fill="#2ca02c" fill-opacity="0.12"/>'
        )
    if floor is not None:
        parts.append(
            f'<line class="floor" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(floor):.1f}" '
            f'y2="{y(floor):.1f}" stroke="#d62728" stroke-dasharray="4 3"/>'
        )
    for tick in (0.0, top / 2, top):
        parts.append(
            f'<text x="{LEFT - 4}" y="{y(tick) + 4:.1f}" font-size="10" '
            f'text-anchor="end">{_fmt(tick)}</text>'
        )
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 8}" font-size="10">{escape(span[0])}</text>')
    parts.append(
        f'<text x="{LEFT + plot_w}" y="{HEIGHT - 8}" font-size="10" '
        f'text-anchor="end">{escape(span[1])}</text>'
    )
    bars = [line for line in lines if line.kind == "bar"]
    for k, line in enumerate(lines):
        colour = COLOURS[k % len(COLOURS)]
        if line.kind == "bar":
            width = max(step / max(len(bars), 1) - 1, 1)
            offset = bars.index(line) * width
            for i, v in enumerate(line.values):
                if v:
                    parts.append(
                        f'<rect class="bar" x="{LEFT + i * step + offset:.1f}" y="{y(v):.1f}" '
                        f'width="{width:.1f}" height="{TOP + plot_h - y(v):.1f}" '
                        f'fill="{colour}"><title>{escape(line.name)} {_fmt(v)}</title></rect>'
                    )
            continue
        segment: list[str] = []
        for i, v in enumerate([*line.values, None]):
            if v is not None:
                segment.append(f"{x(i):.1f},{y(v):.1f}")
                parts.append(
                    f'<circle class="point" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" '
                    f'fill="{colour}"><title>{escape(line.name)} {_fmt(v)}</title></circle>'
                )
            elif segment:
                parts.append(
                    f'<polyline points="{" ".join(segment)}" fill="none" stroke="{colour}" '
                    'stroke-width="1.5"/>'
                )
                segment = []
    for k, line in enumerate(lines):
        lx = LEFT + k * 120
        parts.append(
            f'<rect x="{lx}" y="20" width="10" height="10" fill="{COLOURS[k % len(COLOURS)]}"/>'
            f'<text x="{lx + 14}" y="29" font-size="10">{escape(line.name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
