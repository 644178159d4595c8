"""Synthetic PA chest radiographs: the X-ray demo model's training and test data.

No real radiographs can be downloaded where radnode is built, so this module draws
postero-anterior chest projections from analytic shapes and wraps each one as a
single-frame DICOM image: Digital X-Ray Image Storage - For Presentation
(1.2.840.10008.5.1.4.1.1.1.1, PS3.3 A.26) by default, or Computed Radiography Image
Storage (1.2.840.10008.5.1.4.1.1.1, PS3.3 A.2). highdicom has no class for either IOD,
so the modules are written with pydicom: Patient (C.7.1.1), General Study (C.7.2.1),
Patient Study (C.7.2.2), General Series (C.7.3.1), DX Series (C.8.11.1) or CR Series
(C.8.1.1), General Equipment (C.7.5.1), General Acquisition (C.7.10.1), General Image
(C.7.6.1), Image Pixel (C.7.6.3), DX Anatomy Imaged (C.8.11.2), DX Image (C.8.11.3),
DX Detector (C.8.11.4), DX Positioning (C.8.11.5) or CR Image (C.8.1.2), VOI LUT
(C.11.2), Acquisition Context (C.7.6.14) and SOP Common (C.12.1).

The image is an attenuation map in "density" units (0 = direct exposure, 1 = the
full soft-tissue thickness of the torso) built from the patient's anatomy: body
outline with neck and shoulders, two lung fields (air lowers the density) with
vascular markings and hila, mediastinum and heart shadow, spine, posterior and
anterior ribs, clavicles, diaphragm domes and a gastric air bubble, and Gaussian
quantum noise. Focal opacities are soft-edged, slightly elliptical blobs of raised
density that lie wholly inside a lung field. Density maps linearly to stored
values (MONOCHROME2: bright = dense); MONOCHROME1 stores ``2**BitsStored - 1 - v``.

Geometry: the detector is square, ``detector_mm`` wide, with ``size`` pixels a side;
Imager Pixel Spacing (PS3.3 C.8.11.4.1.1) is ``detector_mm / size`` and every length
in the ground truth (opacity radius) is measured in that detector plane. The image
is displayed as a PA chest is read: the patient's right on the viewer's left
(Patient Orientation ``L\\F``, PS3.3 C.7.6.1.1.1), so the heart bulges to the right
of the image.

Everything is a pure function of the :class:`XraySpec`: pixels, UIDs, dates and the
ground truth repeat exactly for the same spec. The anatomy depends on the seed only,
so the same seed with and without opacities is the same patient.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from ai_node.labels import NO_OPACITY, OPACITY

logger = logging.getLogger(__name__)

__all__ = [
    "SOP_CLASSES",
    "Opacity",
    "SyntheticRadiograph",
    "XraySpec",
    "generate_radiograph",
    "write_radiographs",
]

SOP_CLASSES: dict[str, str] = {
    "dx": str(DigitalXRayImageStorageForPresentation),
    "cr": str(ComputedRadiographyImageStorage),
}
"""The SOP classes the generator writes, by their ``--sop-class`` name."""

MIN_SIZE, MAX_SIZE = 64, 4096
"""Rows = columns accepted; sizes are checked before anything is allocated."""

MIN_BITS, MAX_BITS = 10, 16
"""Bits Stored accepted (Bits Allocated is always 16)."""

MAX_OPACITIES = 8
"""Most opacities one radiograph may hold."""

MAX_COUNT = 100_000
"""Most radiographs one call of :func:`write_radiographs` writes."""

OPACITY_RADIUS_MM = (6.0, 24.0)
"""Range of opacity radii (detector plane) drawn from the seed."""

OPACITY_CONTRAST = (0.08, 0.30)
"""Range of opacity peak density (the lung lowers the density by about 0.5)."""

_DENSITY_MAX = 1.45
"""Density mapped to the largest stored value; the denser spine and ribs stay below it."""

_SOURCE_TO_DETECTOR_MM = 1800.0
_SOURCE_TO_PATIENT_MM = 1650.0
_MAGNIFICATION = _SOURCE_TO_DETECTOR_MM / _SOURCE_TO_PATIENT_MM
"""Estimated Radiographic Magnification Factor (PS3.3 C.8.11.7): detector over patient."""

_UID_ROOT = "radnode-xray-synth-v1"


@dataclass(frozen=True)
class XraySpec:
    """What to generate; every output is a deterministic function of these fields.

    Raises ``ValueError`` naming the field when a value is out of range.
    """

    seed: int = 0
    opacities: int = 0
    size: int = 1024
    bits: int = 12
    sop_class: str = "dx"
    monochrome1: bool = False
    detector_mm: float = 430.0
    patient_id: str | None = None
    patient_name: str | None = None

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0 <= self.opacities <= MAX_OPACITIES:
            raise ValueError(f"opacities must be in 0..{MAX_OPACITIES}, got {self.opacities}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be in {MIN_SIZE}..{MAX_SIZE}, got {self.size}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        if self.sop_class not in SOP_CLASSES:
            raise ValueError(
                f"sop_class must be one of {sorted(SOP_CLASSES)}, got {self.sop_class!r}"
            )
        if not (math.isfinite(self.detector_mm) and 250.0 <= self.detector_mm <= 500.0):
            raise ValueError(f"detector_mm must be in 250..500 mm, got {self.detector_mm}")
        if self.patient_id is not None and not 0 < len(self.patient_id) <= 64:
            raise ValueError("patient_id must be 1..64 characters (LO, PS3.5 6.2)")

    @property
    def pixel_spacing_mm(self) -> float:
        """Imager Pixel Spacing in mm, rounded as it is written (PS3.5 DS)."""
        return round(self.detector_mm / self.size, 6)

    def resolved_patient_id(self) -> str:
        """PatientID: the given one, or ``SYX`` and six digits derived from the seed."""
        return self.patient_id if self.patient_id is not None else f"SYX{self.seed % 1_000_000:06d}"

    def resolved_patient_name(self) -> str:
        """PatientName: the given one, or ``Synthetic^Xray<seed>``."""
        return self.patient_name if self.patient_name is not None else f"Synthetic^Xray{self.seed}"


@dataclass(frozen=True)
class Opacity:
    """Ground truth for one focal opacity.

    ``center_px`` is (row, column) in 0-based pixel indices of the written image (the
    centre of the top-left pixel is (0, 0)); ``radius_mm`` is its semi-major axis,
    measured in the detector plane (Imager Pixel Spacing). The blob is an ellipse with
    semi-minor axis ``aspect * radius_mm``, its major axis ``angle_deg`` from the rows;
    ``contrast`` is its peak density.
    """

    center_px: tuple[float, float]
    radius_mm: float
    contrast: float
    aspect: float = 1.0
    angle_deg: float = 0.0

    def radius_px(self, pixel_spacing_mm: float) -> float:
        return self.radius_mm / pixel_spacing_mm


@dataclass(frozen=True)
class SyntheticRadiograph:
    """Description of one generated radiograph and its ground truth."""

    spec: XraySpec
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    patient_id: str
    opacities: tuple[Opacity, ...]

    @property
    def label(self) -> str:
        """Image-level label: ``opacity`` when it holds at least one, else ``no opacity``."""
        return OPACITY if self.opacities else NO_OPACITY


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Patient:
    """Everything about one synthetic patient that the seed decides, in mm.

    x runs left to right across the image (towards the patient's left), y top to
    bottom (towards the feet), both from the centre of the detector.
    """

    cx: float
    half_width: float
    apex_y: float
    lung_height: float
    shoulder_y: float
    neck_half_width: float
    dome_y: tuple[float, float]
    mediastinum: float
    heart: tuple[float, float, float, float]
    rib_y0: float
    rib_gap: float
    rib_height: float
    noise: float
    lung_depth: float
    texture: np.ndarray
    vessels: np.ndarray


def _make_patient(seed: int) -> _Patient:
    rng = np.random.default_rng([seed, 1])
    cx = float(rng.uniform(-10.0, 10.0))
    half_width = float(rng.uniform(138.0, 168.0))
    apex_y = float(rng.uniform(-165.0, -145.0))
    lung_height = float(rng.uniform(265.0, 300.0))
    base = apex_y + lung_height
    right_dome = base - float(rng.uniform(32.0, 44.0))
    left_dome = right_dome + float(rng.uniform(8.0, 22.0))
    heart_w = half_width * float(rng.uniform(0.40, 0.50))
    heart_h = heart_w * float(rng.uniform(0.75, 0.9))
    heart = (cx + half_width * float(rng.uniform(0.12, 0.18)), left_dome, heart_w, heart_h)
    texture = np.column_stack(
        [
            rng.uniform(0.01, 0.05, 12),
            rng.uniform(0.0, 2.0 * math.pi, 12),
            rng.uniform(0.0, 2.0 * math.pi, 12),
        ]
    )
    vessels = rng.uniform(0.0, 1.0, (2, 9, 6))
    return _Patient(
        cx=cx,
        half_width=half_width,
        apex_y=apex_y,
        lung_height=lung_height,
        shoulder_y=apex_y - float(rng.uniform(25.0, 40.0)),
        neck_half_width=float(rng.uniform(48.0, 62.0)),
        dome_y=(right_dome, left_dome),
        mediastinum=float(rng.uniform(22.0, 30.0)),
        heart=heart,
        rib_y0=apex_y + float(rng.uniform(4.0, 12.0)),
        rib_gap=lung_height * float(rng.uniform(0.092, 0.104)),
        rib_height=float(rng.uniform(8.0, 11.0)),
        noise=float(rng.uniform(0.008, 0.018)),
        lung_depth=float(rng.uniform(0.45, 0.55)),
        texture=texture,
        vessels=vessels,
    )


def _sigmoid(d: np.ndarray, width: float) -> np.ndarray:
    """A soft step from 0 to 1 over about ``4 * width`` mm around ``d = 0``."""
    return 0.5 * (1.0 + np.tanh(d / (2.0 * width)))


class _Grid:
    """Pixel-centre coordinates in mm, as broadcastable column and row vectors."""

    def __init__(self, size: int, spacing: float) -> None:
        self.size = size
        self.spacing = spacing
        centres = (np.arange(size, dtype=np.float32) + 0.5) * spacing - size * spacing / 2.0
        self.x = centres[None, :]
        self.y = centres[:, None]

    def rows(self, y0: float, y1: float) -> slice:
        """Row indices whose centres may lie between ``y0`` and ``y1`` mm (clamped)."""
        half = self.size * self.spacing / 2.0
        r0 = max(0, math.floor((y0 + half) / self.spacing) - 1)
        r1 = min(self.size, math.ceil((y1 + half) / self.spacing) + 1)
        return slice(r0, max(r0, r1))

    def cols(self, x0: float, x1: float) -> slice:
        return self.rows(x0, x1)

    def to_mm(self, row: float, col: float) -> tuple[float, float]:
        """(x, y) mm of a (possibly fractional) pixel index."""
        half = self.size * self.spacing / 2.0
        return (col + 0.5) * self.spacing - half, (row + 0.5) * self.spacing - half

    def to_px(self, x: float, y: float) -> tuple[float, float]:
        """(row, column) pixel index of a point in mm."""
        half = self.size * self.spacing / 2.0
        return (y + half) / self.spacing - 0.5, (x + half) / self.spacing - 0.5


def _lung_fields(p: _Patient, g: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """(soft mask, relative thickness) of both lung fields, each (size, size) float32.

    A lung is a tall ellipse, cut medially by the mediastinum and the heart and below
    by its diaphragm dome; its edges are soft over about 3 mm.
    """
    mask = np.zeros((g.size, g.size), np.float32)
    depth = np.zeros((g.size, g.size), np.float32)
    hx, hy, ha, hb = p.heart
    heart_d = (1.0 - np.sqrt(((g.x - hx) / ha) ** 2 + ((g.y - hy) / hb) ** 2)) * min(ha, hb)
    for k, side in enumerate((-1.0, 1.0)):
        ax = 0.47 * p.half_width
        ay = 0.62 * p.lung_height
        ex = p.cx + side * 0.52 * p.half_width
        ey = p.apex_y + ay
        q = np.sqrt(((g.x - ex) / ax) ** 2 + ((g.y - ey) / ay) ** 2)
        d_ellipse = (1.0 - q) * ax
        u = side * (g.x - p.cx)
        aortic = 9.0 * np.exp(-(((g.y - (p.apex_y + 55.0)) / 14.0) ** 2)) if side > 0 else 0.0
        d_med = u - (p.mediastinum + aortic)
        dome = p.dome_y[k]
        peak_u = 0.42 * p.half_width
        d_dia = dome + 40.0 * ((u - peak_u) / p.half_width) ** 2 - g.y
        d = np.minimum(np.minimum(d_ellipse, d_med), np.minimum(d_dia, -heart_d))
        soft = _sigmoid(d, 0.8).astype(np.float32)
        mask += soft
        thickness = np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0))
        depth += soft * (0.45 + 0.55 * thickness).astype(np.float32)
    return np.clip(mask, 0.0, 1.0), depth


def _band(d: np.ndarray, half: float) -> np.ndarray:
    """A bone band across distance ``d`` mm from its centre line: soft edges, a brighter
    cortex at both edges than in the middle."""
    edge = _sigmoid(half - np.abs(d), 0.5)
    return edge * (0.65 + 0.35 * np.clip(np.abs(d) / half, 0.0, 1.0) ** 2)


def _draw_ribs(img: np.ndarray, p: _Patient, g: _Grid) -> None:
    """Posterior ribs (near horizontal, from the spine) and fainter anterior ribs
    (from the lateral chest wall, sloping down towards the midline)."""
    w = p.half_width
    half = p.rib_height / 2.0
    for k in range(10):
        y_spine = p.rib_y0 + k * p.rib_gap
        rs = g.rows(y_spine - 40.0, y_spine + 40.0 + 0.3 * w)
        if rs.start >= rs.stop:
            continue
        y = g.y[rs]
        for side in (-1.0, 1.0):
            u = side * (g.x - p.cx)
            t = np.clip(u / w, 0.0, 1.15)
            centre = y_spine - 16.0 * np.sin(np.pi * np.clip(t, 0.0, 1.0) * 0.85) + 38.0 * t**4
            reach = _sigmoid(u - 14.0, 1.0) * _sigmoid(1.02 * w - u, 2.0)
            img[rs] += 0.13 * reach * _band(y - centre, half + 0.5 * t)
            if k < 7:
                anterior = y_spine + 32.0 + 0.38 * (0.96 * w - u)
                span = _sigmoid(u - 0.3 * w, 6.0) * _sigmoid(0.98 * w - u, 2.0)
                img[rs] += 0.07 * span * _band(y - anterior, 0.8 * half)


def _draw_spine_and_clavicles(img: np.ndarray, p: _Patient, g: _Grid) -> None:
    u = g.x - p.cx
    body = _sigmoid(19.0 - np.abs(u), 1.5)
    vert = p.rib_gap * 0.95
    segments = 0.9 + 0.1 * np.cos(2.0 * np.pi * (g.y - p.rib_y0) / vert)
    img += (0.12 * body * segments).astype(np.float32)
    rs = g.rows(p.apex_y - 60.0, p.apex_y + 40.0)
    y = g.y[rs]
    w = p.half_width
    for side in (-1.0, 1.0):
        s = side * u
        t = np.clip(s / (0.95 * w), 0.0, 1.0)
        centre = p.apex_y + 12.0 - 30.0 * t + 10.0 * np.sin(2.0 * np.pi * t)
        span = _sigmoid(s - 12.0, 1.5) * _sigmoid(0.97 * w - s, 3.0)
        img[rs] += 0.18 * span * _band(y - centre, 6.0)


def _draw_vessels(img: np.ndarray, p: _Patient, g: _Grid, lung: np.ndarray) -> None:
    """Vascular markings: tapered branches fanning out of each hilum, two levels deep."""
    vessels = np.zeros_like(img)
    w = p.half_width
    for k, side in enumerate((-1.0, 1.0)):
        hx = p.cx + side * (p.mediastinum + 0.16 * w)
        hy = p.apex_y + 0.46 * p.lung_height
        hilum = np.exp(-(((g.x - hx) / 14.0) ** 2 + ((g.y - hy) / 22.0) ** 2))
        vessels += (0.07 * hilum).astype(np.float32)
        for params in p.vessels[k]:
            angle = math.radians(-80.0 + 200.0 * params[0])
            length = 45.0 + 55.0 * params[1]
            dx, dy = side * math.cos(angle), math.sin(angle)
            x1, y1 = hx + dx * length, hy + dy * length
            _segment(vessels, g, (hx, hy), (x1, y1), 3.2, 1.8, 0.06 + 0.04 * params[2])
            for j in range(2):
                a2 = angle + math.radians((-35.0 + 70.0 * j) * (0.5 + params[3 + j]))
                l2 = 25.0 + 35.0 * params[5]
                x2 = x1 + side * math.cos(a2) * l2
                y2 = y1 + math.sin(a2) * l2
                _segment(vessels, g, (x1, y1), (x2, y2), 1.8, 0.9, 0.035 + 0.03 * params[2])
    img += vessels * lung


def _segment(
    img: np.ndarray,
    g: _Grid,
    a: tuple[float, float],
    b: tuple[float, float],
    r_a: float,
    r_b: float,
    value: float,
) -> None:
    """Add a tube from ``a`` to ``b`` (mm) whose radius tapers from ``r_a`` to ``r_b``."""
    pad = max(r_a, r_b) + 3.0
    rs = g.rows(min(a[1], b[1]) - pad, max(a[1], b[1]) + pad)
    cs = g.cols(min(a[0], b[0]) - pad, max(a[0], b[0]) + pad)
    if rs.start >= rs.stop or cs.start >= cs.stop:
        return
    x, y = g.x[:, cs], g.y[rs]
    vx, vy = b[0] - a[0], b[1] - a[1]
    length2 = vx * vx + vy * vy or 1.0
    t = np.clip(((x - a[0]) * vx + (y - a[1]) * vy) / length2, 0.0, 1.0)
    dist = np.hypot(x - (a[0] + t * vx), y - (a[1] + t * vy))
    radius = r_a + (r_b - r_a) * t
    profile = np.exp(-2.0 * (dist / radius) ** 2) * (1.0 - 0.6 * t)
    img[rs, cs] = np.maximum(img[rs, cs], (value * profile).astype(np.float32))


def _density(p: _Patient, g: _Grid) -> np.ndarray:
    """The patient's density on grid ``g``, without opacities or noise."""
    u = g.x - p.cx
    w = p.half_width
    torso = w + 22.0 + 0.06 * np.clip(g.y - p.apex_y, 0.0, None)
    shoulders = _sigmoid(g.y - p.shoulder_y, 10.0)
    half_width = p.neck_half_width + (torso - p.neck_half_width) * shoulders
    ratio = np.clip(np.abs(u) / half_width, 0.0, 1.0)
    img = (np.sqrt(1.0 - ratio**2) * _sigmoid(half_width - np.abs(u), 1.5)).astype(np.float32)
    img *= 0.8 + 0.2 * _sigmoid(g.y - (p.apex_y - 20.0), 25.0)
    lung, depth = _lung_fields(p, g)
    texture = np.zeros_like(img)
    for amplitude, direction, phase in p.texture:
        # cos(a + b) = cos a cos b - sin a sin b: two outer products instead of a full cos
        a = g.x / 9.0 * math.cos(direction)
        b = g.y / 9.0 * math.sin(direction) + phase
        texture += np.float32(0.25 * amplitude) * (np.cos(a) * np.cos(b) - np.sin(a) * np.sin(b))
    img -= p.lung_depth * depth * (1.0 + texture)
    hx, hy, ha, hb = p.heart
    heart = _sigmoid((1.0 - np.sqrt(((g.x - hx) / ha) ** 2 + ((g.y - hy) / hb) ** 2)) * ha, 1.5)
    above_domes = _sigmoid(max(p.dome_y) - g.y, 6.0)
    img += (0.05 * heart * above_domes).astype(np.float32)
    _draw_vessels(img, p, g, lung)
    _draw_spine_and_clavicles(img, p, g)
    _draw_ribs(img, p, g)
    bx, by = p.cx + 0.45 * w, p.dome_y[1] + 28.0
    bubble = _sigmoid(1.0 - np.sqrt(((g.x - bx) / 30.0) ** 2 + ((g.y - by) / 17.0) ** 2), 0.08)
    img -= (0.25 * bubble).astype(np.float32)
    return np.clip(img, 0.0, None)


# --------------------------------------------------------------------------- opacities

_PLACEMENT_MM = 1.0
"""Sampling of the lung mask that opacities are placed on: fixed, so that the same seed
puts its opacities at the same place in mm whatever the image's pixel count."""


@dataclass(frozen=True)
class _Blob:
    """An opacity in mm (x, y from the detector centre), before it is tied to a grid."""

    x: float
    y: float
    radius: float
    contrast: float
    aspect: float
    angle_deg: float


def _place_opacities(spec: XraySpec, patient: _Patient) -> tuple[_Blob, ...]:
    """Draw ``spec.opacities`` blobs that lie wholly inside a lung field.

    A candidate disc (radius plus a 2 mm rim) must have every sample of the lung mask
    under it at >= 0.9 and stay clear of the earlier opacities; the radius shrinks when
    no place fits, and ``ValueError`` is raised when not even a 2 mm one does.
    """
    if spec.opacities == 0:
        return ()
    g = _Grid(
        round(spec.detector_mm / _PLACEMENT_MM),
        spec.detector_mm / round(spec.detector_mm / _PLACEMENT_MM),
    )
    lung, _ = _lung_fields(patient, g)
    inside = np.argwhere(lung > 0.95)
    rng = np.random.default_rng([spec.seed, 2, spec.opacities])
    blobs: list[_Blob] = []
    for _ in range(spec.opacities):
        radius = float(rng.uniform(*OPACITY_RADIUS_MM))
        contrast = round(float(rng.uniform(*OPACITY_CONTRAST)), 4)
        aspect = round(float(rng.uniform(0.75, 1.0)), 3)
        angle = round(float(rng.uniform(0.0, 180.0)), 2)
        found: _Blob | None = None
        while found is None:
            for _try in range(200):
                r, c = inside[int(rng.integers(0, len(inside)))]
                jitter = rng.uniform(-0.5, 0.5, 2)
                x, y = g.to_mm(float(r + jitter[0]), float(c + jitter[1]))
                x, y = round(x, 3), round(y, 3)
                reach = radius + 2.0
                if any(math.dist((x, y), (b.x, b.y)) < reach + b.radius for b in blobs):
                    continue
                rs, cs = g.rows(y - reach, y + reach), g.cols(x - reach, x + reach)
                disc = np.hypot(g.x[:, cs] - x, g.y[rs] - y) <= reach
                if disc.any() and bool((lung[rs, cs][disc] >= 0.9).all()):
                    found = _Blob(x, y, round(radius, 3), contrast, aspect, angle)
                    break
            else:
                radius *= 0.8
                if radius < 2.0:
                    raise ValueError(
                        f"cannot fit {spec.opacities} opacities in the lung fields; ask for fewer"
                    )
        blobs.append(found)
    return tuple(blobs)


def _opacity(blob: _Blob, g: _Grid) -> Opacity:
    row, column = g.to_px(blob.x, blob.y)
    return Opacity(
        (round(row, 3), round(column, 3)), blob.radius, blob.contrast, blob.aspect, blob.angle_deg
    )


def _draw_opacity(img: np.ndarray, g: _Grid, blob: _Blob, rng: np.random.Generator) -> None:
    """A soft-edged elliptical blob: a flat top, then a smooth step down to nothing at
    the radius (its border wobbles inwards by up to 12 %), with a faint mottle so that
    it is not a perfect disc; nothing of it lies outside the radius."""
    x, y = blob.x, blob.y
    a = blob.radius
    b = a * blob.aspect
    rs, cs = g.rows(y - a, y + a), g.cols(x - a, x + a)
    dx, dy = g.x[:, cs] - x, g.y[rs] - y
    theta = math.radians(blob.angle_deg)
    along = dx * math.cos(theta) + dy * math.sin(theta)
    across = -dx * math.sin(theta) + dy * math.cos(theta)
    rho = np.sqrt((along / a) ** 2 + (across / b) ** 2)
    phase = rng.uniform(0.0, 2.0 * math.pi, 3)
    angle = np.arctan2(across, along)
    wobble = (
        1.0
        - 0.035 * (1.0 - np.sin(3.0 * angle + phase[0]))
        - 0.025 * (1.0 - np.sin(5.0 * angle + phase[1]))
    )
    t = np.clip((1.0 - rho / wobble) / 0.45, 0.0, 1.0)
    edge = t * t * (3.0 - 2.0 * t)
    mottle = 1.0 + 0.08 * np.sin(along / 3.0 + phase[2]) * np.cos(across / 3.5)
    img[rs, cs] += (blob.contrast * edge * mottle).astype(np.float32)


# --------------------------------------------------------------------------- pixels


def _stored_values(spec: XraySpec, density: np.ndarray) -> np.ndarray:
    """Density to stored values: 0 .. 2**bits - 1, bright = dense (MONOCHROME2), or the
    inverse for MONOCHROME1 (PS3.3 C.7.6.3.1.2)."""
    top = (1 << spec.bits) - 1
    values = np.rint(np.clip(density / _DENSITY_MAX, 0.0, 1.0) * top).astype(np.uint16)
    if spec.monochrome1:
        values = np.uint16(top) - values
    return values.astype("<u2")


def _pixels(spec: XraySpec) -> tuple[np.ndarray, tuple[Opacity, ...]]:
    grid = _Grid(spec.size, spec.pixel_spacing_mm)
    patient = _make_patient(spec.seed)
    density = _density(patient, grid)
    blobs = _place_opacities(spec, patient)
    blob_rng = np.random.default_rng([spec.seed, 3, spec.opacities])
    for blob in blobs:
        _draw_opacity(density, grid, blob, blob_rng)
    noise_rng = np.random.default_rng([spec.seed, 4, spec.size])
    # quantum noise: larger where fewer photons arrive (dense parts), per detector pixel
    sigma = patient.noise * (0.6 + 0.4 * density) * math.sqrt(1024.0 / spec.size)
    density += noise_rng.standard_normal(density.shape, dtype=np.float32) * sigma.astype(np.float32)
    return _stored_values(spec, density), tuple(_opacity(b, grid) for b in blobs)


# --------------------------------------------------------------------------- DICOM


def _ds(value: float) -> DSfloat:
    """A Decimal String that fits PS3.5 6.2's 16 characters."""
    return DSfloat(round(float(value), 6), auto_format=True)


def _uid(spec: XraySpec, *parts: object) -> str:
    spec_key = json.dumps(asdict(spec), sort_keys=True)
    return generate_uid(entropy_srcs=[_UID_ROOT, spec_key, *(str(p) for p in parts)])


def _code_item(code: object) -> Dataset:
    return CodedConcept.from_code(code)  # type: ignore[arg-type]


def _make_dataset(spec: XraySpec, image: SyntheticRadiograph, pixels: np.ndarray) -> FileDataset:
    """Wrap the pixels as a DX (For Presentation) or CR image, explicit VR little endian."""
    sop_class = SOP_CLASSES[spec.sop_class]
    dx = spec.sop_class == "dx"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(image.sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RADNODE_SYNTH"

    rng = np.random.default_rng([spec.seed, 5])
    days = int(rng.integers(0, 730))
    secs = int(rng.integers(7 * 3600, 19 * 3600))
    study_dt = _dt.datetime(2024, 1, 1) + _dt.timedelta(days=days, seconds=secs)
    acq_dt = study_dt + _dt.timedelta(seconds=30)
    age = int(rng.integers(18, 91))
    birth = study_dt.date().replace(year=study_dt.year - age, day=1)
    sex = str(rng.choice(["F", "M"]))
    top = (1 << spec.bits) - 1
    photometric = "MONOCHROME1" if spec.monochrome1 else "MONOCHROME2"
    spacing = _ds(spec.pixel_spacing_mm)
    modality = spec.sop_class.upper()

    ds = FileDataset("XR.dcm", {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""] if dx else ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate = study_dt.strftime("%Y%m%d")
    ds.InstanceCreationTime = study_dt.strftime("%H%M%S")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = image.sop_instance_uid
    ds.StudyDate = study_dt.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.AcquisitionDate = acq_dt.strftime("%Y%m%d")
    ds.ContentDate = ds.AcquisitionDate
    ds.StudyTime = study_dt.strftime("%H%M%S")
    ds.SeriesTime = ds.StudyTime
    ds.AcquisitionTime = acq_dt.strftime("%H%M%S")
    ds.ContentTime = ds.AcquisitionTime
    ds.AccessionNumber = f"ACX{spec.seed % 10**9:09d}"
    ds.Modality = modality
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "radnode synth"
    ds.InstitutionName = "radnode synthetic hospital"
    ds.ReferringPhysicianName = "Synthetic^Referrer"
    ds.StationName = "SYNTHXR01"
    ds.StudyDescription = "XR CHEST PA (synthetic)"
    ds.SeriesDescription = "Chest PA"
    ds.ManufacturerModelName = f"radnode synth {modality}"
    ds.AnatomicRegionSequence = [_code_item(codes.SCT.Chest)]
    ds.PatientName = image.spec.resolved_patient_name()
    ds.PatientID = image.patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = _ds(float(rng.integers(110, 126)))
    ds.DeviceSerialNumber = "SYNTH-0001"
    ds.SoftwareVersions = "radnode-xray-synth-1"
    ds.DistanceSourceToDetector = _ds(_SOURCE_TO_DETECTOR_MM)
    ds.DistanceSourceToPatient = _ds(_SOURCE_TO_PATIENT_MM)
    ds.ExposureTime = int(rng.integers(4, 20))
    ds.XRayTubeCurrent = int(rng.integers(200, 400))
    if dx:
        ds.ImagerPixelSpacing = [spacing, spacing]
        ds.DetectorType = "SCINTILLATOR"
        ds.DetectorID = "SYNTH-DET-1"
        ds.DetectorActiveShape = "RECTANGLE"
        ds.DetectorActiveDimensions = [_ds(spec.detector_mm), _ds(spec.detector_mm)]
        ds.ViewPosition = "PA"
        ds.ViewCodeSequence = [_code_item(codes.SCT.PosteroAnterior)]
        ds.PositionerType = "NONE"
        ds.EstimatedRadiographicMagnificationFactor = _ds(_MAGNIFICATION)
        ds.PixelSpacing = [_ds(spec.pixel_spacing_mm / _MAGNIFICATION)] * 2
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "Imager Pixel Spacing / ERMF"
    else:
        ds.ViewPosition = "PA"
        ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PatientOrientation = ["L", "F"]
    ds.StudyInstanceUID = image.study_instance_uid
    ds.SeriesInstanceUID = image.series_instance_uid
    ds.StudyID = f"X{spec.seed % 100_000:05d}"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.ImageLaterality = "U"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = spec.size
    ds.Columns = spec.size
    ds.BitsAllocated = 16
    ds.BitsStored = spec.bits
    ds.HighBit = spec.bits - 1
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    if dx:
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if spec.monochrome1 else -1
        ds.RescaleIntercept = _ds(0)
        ds.RescaleSlope = _ds(1)
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "INVERSE" if spec.monochrome1 else "IDENTITY"
    ds.WindowCenter = _ds((top + 1) / 2)
    ds.WindowWidth = _ds(top + 1)
    ds.WindowCenterWidthExplanation = "FULL RANGE"
    ds.LossyImageCompression = "00"
    if dx:
        ds.AcquisitionContextSequence = []
    ds.add_new(Tag(0x7FE0, 0x0010), "OW", pixels.tobytes())
    return ds


# --------------------------------------------------------------------------- public API


def generate_radiograph(spec: XraySpec) -> tuple[SyntheticRadiograph, FileDataset]:
    """Draw one radiograph; returns its description (UIDs, ground truth) and the
    dataset, with ``file_meta`` set for explicit VR little endian (write it with
    ``save_as(path, enforce_file_format=True)``)."""
    pixels, opacities = _pixels(spec)
    image = SyntheticRadiograph(
        spec=spec,
        study_instance_uid=_uid(spec, "study"),
        series_instance_uid=_uid(spec, "series"),
        sop_instance_uid=_uid(spec, "instance"),
        patient_id=spec.resolved_patient_id(),
        opacities=opacities,
    )
    return image, _make_dataset(spec, image, pixels)


def _truth(image: SyntheticRadiograph, path: Path) -> dict[str, object]:
    spacing = image.spec.pixel_spacing_mm
    return {
        "file": path.name,
        "seed": image.spec.seed,
        "label": image.label,
        "study_instance_uid": image.study_instance_uid,
        "series_instance_uid": image.series_instance_uid,
        "sop_instance_uid": image.sop_instance_uid,
        "patient_id": image.patient_id,
        "opacities": [
            {
                "center_px": {"row": o.center_px[0], "column": o.center_px[1]},
                "radius_mm": o.radius_mm,
                "radius_px": round(o.radius_px(spacing), 3),
                "contrast": o.contrast,
                "aspect": o.aspect,
                "angle_deg": o.angle_deg,
            }
            for o in image.opacities
        ],
    }


def write_radiographs(
    spec: XraySpec,
    out_dir: Path,
    count: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[SyntheticRadiograph], list[Path]]:
    """Write ``count`` radiographs (seeds ``spec.seed`` .. ``spec.seed + count - 1``, one
    patient and study each) as ``out_dir/XR000001.dcm`` ... and ``truth.json``.

    Files carry the 128-byte zero preamble, ``DICM`` prefix and File Meta Information
    (PS3.10 7.1) and are encoded explicit VR little endian. ``truth.json`` holds the
    spec, the pixel spacing and, per file, its UIDs, image-level label and opacities.
    ``progress(done, total)`` is called after each file is written.
    """
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be in 1..{MAX_COUNT}, got {count}")
    if spec.seed + count - 1 < 0:
        raise ValueError("seeds must be >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images: list[SyntheticRadiograph] = []
    paths: list[Path] = []
    entries: list[dict[str, object]] = []
    for index in range(count):
        image, ds = generate_radiograph(replace(spec, seed=spec.seed + index))
        path = out_dir / f"XR{index + 1:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        images.append(image)
        paths.append(path)
        entries.append(_truth(image, path))
        if progress is not None:
            progress(index + 1, count)
    truth = {
        "generator": "radnode ai_node.xray_synth",
        "spec": asdict(spec),
        "count": count,
        "sop_class_uid": SOP_CLASSES[spec.sop_class],
        "pixel_spacing_mm": spec.pixel_spacing_mm,
        "images": entries,
    }
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    logger.info(
        "wrote %d synthetic radiographs (%d with opacities) to %s",
        count,
        sum(1 for i in images if i.opacities),
        out_dir,
    )
    return images, paths
