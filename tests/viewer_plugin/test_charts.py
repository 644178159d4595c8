"""The dashboard's server-drawn SVG: what it draws from the values, and that text in it
is escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from viewer_plugin.review.charts import Line, chart

SVG = "{http://www.w3.org/2000/svg}"


def test_values_become_points_gaps_split_the_line_and_text_is_escaped() -> None:
    svg = chart(
        'rate <script>alert("x")</script>',
        [Line("a & b", [0.2, None, 0.4, 0.6]), Line("n", [1, 0, 3, 0], "bar")],
        ("11-29 10:00", "11-30 10:00"),
        band=(0.3, 0.7),
        floor=0.5,
    )
    root = ET.fromstring(svg)  # well-formed: every text escaped
    assert root.get("data-points") == "7"
    assert len(root.findall(f"{SVG}circle")) == 3  # the None is a gap, not a point
    assert len(root.findall(f"{SVG}polyline")) == 2  # one segment each side of the gap
    assert len(root.findall(f"{SVG}rect[@class='bar']")) == 2  # zero bars are not drawn
    assert root.find(f"{SVG}rect[@class='band']") is not None
    assert root.find(f"{SVG}line[@class='floor']") is not None
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert 'rate <script>alert("x")</script>' in texts and "a & b" in texts


def test_an_empty_period_draws_axes_and_no_data() -> None:
    root = ET.fromstring(chart("empty", [Line("a", [None] * 24)], ("a", "b")))
    assert root.get("data-points") == "0"
    assert root.findall(f"{SVG}circle") == [] and root.findall(f"{SVG}polyline") == []
