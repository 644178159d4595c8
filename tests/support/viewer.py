"""Helpers of the viewer tests: a node with the viewer roles' tokens, studies analysed by
the real models (real SRs)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_node.pipeline import AnalysisPipeline
from ai_node.registry import ModelSet
from ai_node.synth import StudySpec
from radnode.assembly import build_node
from radnode_core.node import Node
from radnode_core.settings import Settings
from tests.support.analysis import add_study, run_all

RADIOLOGIST = "rad-token-0123456789"
VIEWER = "viewer-token-0123456789"
ADMIN = "admin-token-0123456789"


@dataclass
class Analysed:
    node: Node
    study_uid: str
    sop_instance_uids: list[str]


def make_node(data_dir: Path, auth: bool, **settings: Any) -> Node:
    extra: dict[str, Any] = dict(settings)
    if auth:
        extra |= {
            "auth_enabled": True,
            "api_tokens": {RADIOLOGIST: "radiologist", VIEWER: "viewer", ADMIN: "admin"},
            "radiologist_names": {RADIOLOGIST: "Doe^Jane"},
            "verifying_organization": "General Hospital",
        }
    return build_node(Settings(data_dir=data_dir, fsync=False, **extra))


def analyse_studies(node: Node, models: ModelSet, out: Path, specs: list[StudySpec]) -> list[str]:
    uids = [add_study(node, spec, out / str(i)).study_instance_uid for i, spec in enumerate(specs)]
    run_all(node, AnalysisPipeline(node, models))
    return uids


PROBE_JS = """
window.addEventListener("DOMContentLoaded", async () => {
  const root = window.config.dataSources[0].configuration.wadoRoot;
  const r = await fetch(root + "/studies", { headers: { Accept: "application/dicom+json" } });
  const body = r.ok ? await r.json() : [];
  const p = document.getElementById("probe");
  p.dataset.studies = body.map((s) => s["0020000D"].Value[0]).join(",");
  p.dataset.status = String(r.status);
});
"""


def stand_in_ohif(dist: Path) -> Path:
    """A stand-in for OHIF's dist/ (the default suite does not need `make ohif`), built like
    the real one: root-relative links, ``PUBLIC_URL``, a webpack runtime's public path. Its
    page reads QIDO-RS at the DICOMweb root of our app-config.js, as OHIF's data source
    does, and shows the answer's status and study UIDs on ``#probe``."""
    dist.mkdir(parents=True)
    (dist / "index.html").write_text(
        '<!doctype html><html><head><script>window.PUBLIC_URL="/"</script>'
        '<script src="/app-config.js"></script><script src="/probe.js"></script></head>'
        '<body><p id="probe">stand-in OHIF</p></body></html>'
    )
    (dist / "probe.js").write_text(PROBE_JS)
    (dist / "app.bundle.js").write_text('/* bundle */ __webpack_require__.p = "/";')
    (dist / "logo.svg").write_text("<svg/>")
    return dist


def set_viewport(driver: Any, width: int, height: int) -> None:
    """The page's viewport exactly ``width`` x ``height`` CSS pixels (a laptop screen)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


HORIZONTAL_OVERFLOW_JS = """
const page = document.documentElement;
const w = page.clientWidth;
const out = [];
if (page.scrollWidth > w) out.push("page " + page.scrollWidth);
for (const el of document.body.querySelectorAll("*")) {
  const r = el.getBoundingClientRect();
  const name = el.tagName + "#" + el.id + "." + el.className;
  if (r.width && r.right > w + 0.5) out.push(name + " ends at " + r.right);
  const clips = ["auto", "scroll", "hidden"].includes(getComputedStyle(el).overflowX);
  if (clips && el.scrollWidth > el.clientWidth + 1)
    out.push("inside " + name + " " + el.scrollWidth + ">" + el.clientWidth);
}
return out;
"""
"""Elements past the right edge of the viewport, and boxes whose content is wider than them."""


NODE_LOGGERS = ("radnode", "dicomweb", "viewer_plugin", "ai_node", "pacs_link", "dimse_scp")


def records_mentioning(records: list[logging.LogRecord], secret: str) -> list[str]:
    """radnode's log records (not the test harness's) whose message or any extra field
    contains ``secret``."""
    found = []
    for record in records:
        if record.name.split(".")[0] not in NODE_LOGGERS and record.name != "uvicorn.error":
            continue
        text = record.getMessage() + " " + " ".join(str(v) for v in vars(record).values())
        if secret in text:
            found.append(f"{record.name}: {record.getMessage()}")
    return found


CANVAS_HAS_PIXELS_JS = """
const c = document.querySelector('canvas.cornerstone-canvas');
if (!c || !c.width) return false;
const x = document.createElement('canvas');
x.width = c.width; x.height = c.height;
const g = x.getContext('2d'); g.drawImage(c, 0, 0);
const p = g.getImageData(0, 0, c.width, c.height).data;
for (let i = 0; i < p.length; i += 4 * 97) if (p[i] > 20) return true;
return false;
"""
"""True once OHIF's viewport canvas shows image pixels (not only black)."""
