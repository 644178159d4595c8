"""Synthetic CT studies: the data the demo, the tests, the benchmarks and the default models use.

No real imaging data can be downloaded where radnode is built, so this module draws
plausible axial CT series of the chest, head or abdomen from analytic ellipses, in
Hounsfield units, and wraps every slice as a CT Image Storage instance
(SOP Class 1.2.840.10008.5.1.4.1.1.2, PS3.4 B.5) carrying the modules PS3.3 A.3.3
requires for the CT Image IOD: Patient (C.7.1.1), General Study (C.7.2.1),
General Series (C.7.3.1), Frame of Reference (C.7.4.1), General Equipment (C.7.5.1),
General Image (C.7.6.1), Image Plane (C.7.6.2), Image Pixel (C.7.6.3),
CT Image (C.8.2.1) and SOP Common (C.12.1).

Everything is a pure function of the :class:`StudySpec`: pixel values, UIDs, dates and
ground-truth lesions repeat exactly for the same spec, and the slices are produced
lazily so a 300-slice study never sits in memory at once.

Geometry (PS3.3 C.7.6.2.1.1): patient coordinates are LPS (x to the patient's left,
y to the posterior, z to the head). The patient lies head-first supine (``HFS``),
slices are axial with ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]`` and are
acquired head to feet, so slice ``i`` sits at ``z = z_top - i * SliceThickness``.
The pixel at row ``r``, column ``c`` is centred at
``x = IPP[0] + c * PixelSpacing[1]``, ``y = IPP[1] + r * PixelSpacing[0]``.

Anatomy is laid out in body-relative units so the body fills the reconstruction field
of view as a scanner's chosen FOV would (the FOV is ``columns * pixel_spacing_mm``
wide), and along z the anatomy spans the scanned range (apex to base of the lungs,
vertex to skull base, dome of the liver to the pelvis). Lesion radii are in millimetres.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import DSfloat

logger = logging.getLogger(__name__)

__all__ = [
    "REGIONS",
    "Lesion",
    "StudySpec",
    "SyntheticStudy",
    "generate_study",
    "write_study",
]

REGIONS: tuple[str, ...] = ("chest", "head", "abdomen")
"""Body regions the generator can draw; BodyPartExamined is the upper-case name."""

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
LUNG_HU = -850.0

RESCALE_INTERCEPT = -1024
"""Stored value = HU - intercept, as many scanners do (PS3.3 C.11.1.1.2, Modality LUT)."""

MAX_MATRIX = 4096
"""Largest Rows/Columns accepted: sizes are checked before anything is allocated."""

MAX_SLICES = 5000
"""Largest number of slices in one synthetic series."""

MAX_NODULES = 50
"""Most nodules one chest study may hold."""

NODULE_RADIUS_MM = (3.0, 15.0)
"""Range of nodule radii drawn from the seed."""

_REGION_CODE = {"chest": 1, "head": 2, "abdomen": 3}

_WINDOWS = {"chest": (-600, 1500), "head": (40, 80), "abdomen": (40, 400)}
"""(WindowCenter, WindowWidth) per region (PS3.3 C.11.2.1.2): lung, brain, soft tissue."""

_WINDOW_EXPLANATION = {"chest": "LUNG", "head": "BRAIN", "abdomen": "SOFT TISSUE"}

_Z_CENTRE_MM = {"head": 60.0, "chest": -150.0, "abdomen": -380.0}
"""Table position of the middle of the scan per region, before a per-seed jitter."""

_UID_ROOT = "radnode-synth-v1"


@dataclass(frozen=True)
class Lesion:
    """Ground truth for one spherical lesion.

    ``center_mm`` is in patient coordinates (LPS, mm); ``slice_indices`` are the 0-based
    indices of the slices whose plane cuts the sphere (``|z_slice - z_centre| < radius``).
    Every listed slice shows at least one lesion pixel.
    """

    center_mm: tuple[float, float, float]
    radius_mm: float
    slice_indices: tuple[int, ...]


@dataclass(frozen=True)
class StudySpec:
    """What to generate; every output is a deterministic function of these fields.

    Raises ``ValueError`` naming the field when a value is out of range, and when
    nodules are asked for outside the chest.
    """

    region: str = "chest"
    slices: int = 100
    nodules: int = 0
    seed: int = 0
    rows: int = 512
    columns: int = 512
    slice_thickness_mm: float = 2.5
    pixel_spacing_mm: float = 0.7
    patient_id: str | None = None
    patient_name: str | None = None

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {self.region!r}")
        if not 1 <= self.slices <= MAX_SLICES:
            raise ValueError(f"slices must be in 1..{MAX_SLICES}, got {self.slices}")
        if not 0 <= self.nodules <= MAX_NODULES:
            raise ValueError(f"nodules must be in 0..{MAX_NODULES}, got {self.nodules}")
        if self.nodules and self.region != "chest":
            raise ValueError(f"nodules are only drawn in the chest, not in {self.region!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for name in ("rows", "columns"):
            value = getattr(self, name)
            if not 16 <= value <= MAX_MATRIX:
                raise ValueError(f"{name} must be in 16..{MAX_MATRIX}, got {value}")
        for name in ("slice_thickness_mm", "pixel_spacing_mm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.01 <= value <= 100.0):
                raise ValueError(f"{name} must be in 0.01..100 mm, got {value}")
        if self.patient_id is not None and not 0 < len(self.patient_id) <= 64:
            raise ValueError("patient_id must be 1..64 characters (LO, PS3.5 6.2)")

    def resolved_patient_id(self) -> str:
        """PatientID: the given one, or ``SYN`` and six digits derived from the seed."""
        return self.patient_id if self.patient_id is not None else f"SYN{self.seed % 1_000_000:06d}"

    def resolved_patient_name(self) -> str:
        """PatientName: the given one, or ``Synthetic^Patient<seed>``."""
        if self.patient_name is not None:
            return self.patient_name
        return f"Synthetic^Patient{self.seed}"


@dataclass(frozen=True)
class SyntheticStudy:
    """Description of a generated study, known before any pixel is drawn."""

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    region: str
    lesions: tuple[Lesion, ...]
    sop_instance_uids: tuple[str, ...]


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Geometry:
    """Where the slices sit in patient space (PS3.3 C.7.6.2)."""

    rows: int
    columns: int
    spacing: float
    thickness: float
    x0: float
    y0: float
    z_top: float
    slices: int

    def z(self, index: float) -> float:
        """Patient z of (possibly fractional) slice ``index``; head to feet."""
        return self.z_top - index * self.thickness

    def t(self, index: float) -> float:
        """Normalised position along the scanned range: 0 at the top, 1 at the bottom."""
        return (index + 0.5) / self.slices

    def index_of_t(self, t: float) -> float:
        return t * self.slices - 0.5

    @property
    def fov_x(self) -> float:
        return self.columns * self.spacing

    @property
    def fov_y(self) -> float:
        return self.rows * self.spacing


def _geometry(spec: StudySpec) -> _Geometry:
    ps = spec.pixel_spacing_mm
    rng = np.random.default_rng([spec.seed, _REGION_CODE[spec.region], 11])
    jitter = float(np.round(rng.uniform(-20.0, 20.0) * 2.0) / 2.0)
    z_mid = _Z_CENTRE_MM[spec.region] + jitter
    z_top = round(z_mid + (spec.slices - 1) * spec.slice_thickness_mm / 2.0, 4)
    return _Geometry(
        rows=spec.rows,
        columns=spec.columns,
        spacing=ps,
        thickness=spec.slice_thickness_mm,
        x0=round(-(spec.columns - 1) * ps / 2.0, 4),
        y0=round(-(spec.rows - 1) * ps / 2.0, 4),
        z_top=z_top,
        slices=spec.slices,
    )


class _Canvas:
    """One slice of HU values with cheap analytic drawing.

    Each shape is evaluated only inside its bounding box, on 1-D coordinate vectors
    broadcast to 2-D, so a slice costs a few large and many tiny numpy operations.
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray, background: float) -> None:
        self.xs = xs
        self.ys = ys
        self.x0 = float(xs[0])
        self.y0 = float(ys[0])
        self.dx = float(xs[1] - xs[0]) if xs.size > 1 else 1.0
        self.dy = float(ys[1] - ys[0]) if ys.size > 1 else 1.0
        self.img = np.full((ys.size, xs.size), background, dtype=np.float32)

    def _window(self, cx: float, cy: float, extent: float) -> tuple[slice, slice] | None:
        c0 = max(0, math.floor((cx - extent - self.x0) / self.dx))
        c1 = min(self.xs.size, math.ceil((cx + extent - self.x0) / self.dx) + 1)
        r0 = max(0, math.floor((cy - extent - self.y0) / self.dy))
        r1 = min(self.ys.size, math.ceil((cy + extent - self.y0) / self.dy) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def ellipse(
        self, cx: float, cy: float, ax: float, ay: float, value: float, angle_deg: float = 0.0
    ) -> None:
        """Set pixels inside the ellipse centred at (cx, cy) mm with semi-axes ax, ay mm."""
        if ax <= 0.0 or ay <= 0.0:
            return
        win = self._window(cx, cy, max(ax, ay))
        if win is None:
            return
        rs, cs = win
        dx = self.xs[cs] - cx
        dy = self.ys[rs] - cy
        if angle_deg == 0.0:
            inside = ((dy / ay) ** 2)[:, None] + ((dx / ax) ** 2)[None, :] <= 1.0
        else:
            a = math.radians(angle_deg)
            ca, sa = math.cos(a), math.sin(a)
            u = dx[None, :] * ca + dy[:, None] * sa
            v = -dx[None, :] * sa + dy[:, None] * ca
            inside = (u / ax) ** 2 + (v / ay) ** 2 <= 1.0
        np.copyto(self.img[rs, cs], np.float32(value), where=inside)


@dataclass(frozen=True)
class _Body:
    """Per-patient body frame: positions in (u, v) body units, sizes as fractions of ``a``."""

    a: float
    b: float
    cx: float
    cy: float

    def x(self, u: float) -> float:
        return self.cx + u * self.a

    def y(self, v: float) -> float:
        return self.cy + v * self.b

    def s(self, size: float) -> float:
        return size * self.a


@dataclass(frozen=True)
class _Patient:
    """Everything about one synthetic patient that the seed decides, before slicing."""

    body: _Body
    noise_sigma: float
    fat_frac: float
    fat_hu: float
    tissue_hu: float
    lung_hu: float
    organ_scale: float
    rib_phase: tuple[float, ...]
    rib_period_mm: float
    blobs: np.ndarray = field(repr=False)
    """Region-specific random features (vessels, bowel loops): columns u, v, phase, size."""


def _make_patient(spec: StudySpec, geo: _Geometry) -> _Patient:
    rng = np.random.default_rng([spec.seed, _REGION_CODE[spec.region], 7])
    half_x, half_y = geo.fov_x / 2.0, geo.fov_y / 2.0
    if spec.region == "head":
        a = half_x * rng.uniform(0.66, 0.76)
        aspect = rng.uniform(1.12, 1.25)
    elif spec.region == "chest":
        a = half_x * rng.uniform(0.80, 0.90)
        aspect = rng.uniform(0.62, 0.72)
    else:
        a = half_x * rng.uniform(0.84, 0.93)
        aspect = rng.uniform(0.68, 0.80)
    b = a * aspect
    if b > 0.92 * half_y:
        b = 0.92 * half_y
        a = min(a, b / aspect)
    body = _Body(
        a=a,
        b=b,
        cx=rng.uniform(-0.03, 0.03) * half_x,
        cy=rng.uniform(-0.03, 0.03) * half_y,
    )
    n_blobs = 16
    blobs = np.column_stack(
        [
            rng.uniform(-1.0, 1.0, n_blobs),
            rng.uniform(-1.0, 1.0, n_blobs),
            rng.uniform(0.0, 2.0 * math.pi, n_blobs),
            rng.uniform(0.0, 1.0, n_blobs),
        ]
    )
    return _Patient(
        body=body,
        noise_sigma=float(rng.uniform(10.0, 20.0)),
        fat_frac=float(
            rng.uniform(0.05, 0.09) if spec.region == "chest" else rng.uniform(0.07, 0.14)
        ),
        fat_hu=float(rng.uniform(-110.0, -90.0)),
        tissue_hu=float(rng.uniform(35.0, 45.0)),
        lung_hu=float(rng.uniform(-870.0, -830.0)),
        organ_scale=float(rng.uniform(0.9, 1.05)),
        rib_phase=tuple(float(p) for p in rng.uniform(0.0, 1.0, 10)),
        rib_period_mm=float(rng.uniform(22.0, 30.0)),
        blobs=blobs,
    )


# --------------------------------------------------------------------------- chest


def _lung_profile(t: float) -> float:
    """Lung size along z: small at the apex, widest at 70 % of the range, domes below."""
    if t <= 0.7:
        return 0.3 + 0.7 * math.sin(0.5 * math.pi * max(t, 0.0) / 0.7)
    return max(0.0, 1.0 - 0.6 * ((min(t, 1.0) - 0.7) / 0.3) ** 2)


def _lung_ellipses(p: _Patient, t: float) -> list[tuple[float, float, float, float]]:
    """(cx, cy, ax, ay) in mm of the right (patient's right, -x) and left lung at t."""
    body = p.body
    s = _lung_profile(t) * p.organ_scale
    out = []
    for side, size in ((-1.0, 1.03), (1.0, 0.97)):
        out.append(
            (
                body.x(side * 0.45),
                body.y(-0.02 + 0.06 * t),
                0.34 * s * size * body.a,
                0.68 * s * size * body.b,
            )
        )
    return out


def _heart_ellipse(p: _Patient, t: float) -> tuple[float, float, float, float] | None:
    if not 0.4 < t < 0.97:
        return None
    h = math.sin(math.pi * (t - 0.4) / 0.57) * p.organ_scale
    body = p.body
    return body.x(0.1), body.y(-0.22), 0.30 * h * body.a, 0.40 * h * body.b


def _draw_spine(cv: _Canvas, body: _Body, v: float, scale: float, tissue: float) -> None:
    x, y = body.x(0.0), body.y(v)
    r = body.s(0.11 * scale)
    cv.ellipse(x, y, r, r * 0.9, 1100.0)
    cv.ellipse(x, y, r - body.s(0.018), r * 0.9 - body.s(0.018), 650.0)
    canal_y = y + r + body.s(0.06 * scale)
    cv.ellipse(x, canal_y + body.s(0.02), body.s(0.09 * scale), body.s(0.06 * scale), 1000.0)
    cv.ellipse(x, canal_y + body.s(0.12 * scale), body.s(0.018), body.s(0.07 * scale), 1000.0)
    cv.ellipse(x, canal_y, body.s(0.045 * scale), body.s(0.04 * scale), 20.0)
    for side in (-1.0, 1.0):
        cv.ellipse(
            x + side * body.s(0.13 * scale),
            canal_y + body.s(0.05),
            body.s(0.06),
            body.s(0.05),
            tissue + 10.0,
        )


def _draw_ribs(cv: _Canvas, p: _Patient, z: float, ring: float, v_max: float) -> None:
    body = p.body
    for i, phase in enumerate(p.rib_phase):
        if math.cos(2.0 * math.pi * (z / p.rib_period_mm + phase)) < 0.0:
            continue
        theta = math.radians(-150.0 + 300.0 * i / (len(p.rib_phase) - 1))
        for side in (-1.0, 1.0):
            u = side * ring * math.sin(theta)
            v = -ring * math.cos(theta)
            if v > v_max:
                continue
            cv.ellipse(
                body.x(u),
                body.y(v),
                body.s(0.05),
                body.s(0.022),
                950.0,
                angle_deg=side * math.degrees(theta),
            )


def _draw_chest(cv: _Canvas, p: _Patient, t: float, z: float) -> None:
    body = p.body
    cv.ellipse(body.cx, body.cy, body.a, body.b, p.fat_hu)
    inner = 1.0 - p.fat_frac
    cv.ellipse(
        body.cx, body.cy, inner * body.a, inner * body.b - p.fat_frac * 0.3 * body.a, p.tissue_hu
    )
    if t > 0.72:
        g = min(1.0, (t - 0.72) / 0.2)
        cv.ellipse(body.x(-0.35), body.y(0.05), body.s(0.45 * g), body.s(0.42 * g), 60.0)
        cv.ellipse(body.x(0.4), body.y(-0.05), body.s(0.22 * g), body.s(0.2 * g), 30.0)
    cv.ellipse(body.x(0.0), body.y(-0.25), body.s(0.15), body.s(0.22), p.fat_hu + 15.0)
    lungs = _lung_ellipses(p, t)
    for cx, cy, ax, ay in lungs:
        cv.ellipse(cx, cy, ax, ay, p.lung_hu)
    for k, (u, v, phase, size) in enumerate(p.blobs):
        cx, cy, ax, ay = lungs[k % 2]
        r = 0.8 * math.sqrt((u * u + v * v) / 2.0)
        ang = math.atan2(v, u) + 0.4 * math.sin(2.0 * math.pi * t + phase)
        vr = body.s(0.006 + 0.01 * size) * max(_lung_profile(t), 0.4)
        cv.ellipse(cx + r * ax * math.cos(ang), cy + r * ay * math.sin(ang), vr, vr, 30.0)
    if t < 0.42:
        cv.ellipse(body.x(0.0), body.y(-0.1), body.s(0.055), body.s(0.05), AIR_HU)
    elif t < 0.55:
        for side in (-1.0, 1.0):
            cv.ellipse(body.x(side * 0.09), body.y(-0.05), body.s(0.035), body.s(0.03), AIR_HU)
    heart = _heart_ellipse(p, t)
    if heart is not None:
        hx, hy, hax, hay = heart
        cv.ellipse(hx, hy, hax + body.s(0.02), hay + body.s(0.02), p.fat_hu + 10.0)
        cv.ellipse(hx, hy, hax, hay, p.tissue_hu)
    if 0.15 < t < 0.45:
        cv.ellipse(body.x(0.03), body.y(-0.2), body.s(0.08), body.s(0.08), p.tissue_hu + 5.0)
    if t > 0.2:
        cv.ellipse(body.x(0.1), body.y(0.38), body.s(0.065), body.s(0.065), p.tissue_hu + 5.0)
    _draw_spine(cv, body, 0.55, 1.0, p.tissue_hu)
    _draw_ribs(cv, p, z, 0.96 - p.fat_frac, 0.85)
    if 0.1 < t < 0.85:
        cv.ellipse(body.x(0.0), body.y(-0.88), body.s(0.09), body.s(0.03), 700.0)
    if t < 0.5:
        for side in (-1.0, 1.0):
            cv.ellipse(
                body.x(side * 0.52),
                body.y(0.78),
                body.s(0.2),
                body.s(0.02),
                900.0,
                angle_deg=-side * 30.0,
            )


# --------------------------------------------------------------------------- head


def _draw_head(cv: _Canvas, p: _Patient, t: float, z: float) -> None:
    body = p.body
    h = math.sqrt(max(0.0, 1.0 - ((t - 0.6) / 0.78) ** 2))
    a, b = body.a * h, body.b * h
    cx, cy = body.cx, body.cy
    scalp, bone = body.s(0.05), body.s(0.07)
    cv.ellipse(cx, cy, a, b, p.tissue_hu - 10.0)
    cv.ellipse(cx, cy, a - scalp, b - scalp, 1000.0)
    cv.ellipse(cx, cy, a - scalp - bone * 0.35, b - scalp - bone * 0.35, 600.0)
    cv.ellipse(cx, cy, a - scalp - bone * 0.65, b - scalp - bone * 0.65, 1050.0)
    ia, ib = a - scalp - bone, b - scalp - bone
    cv.ellipse(cx, cy, ia, ib, 38.0)
    cv.ellipse(cx, cy, ia * 0.97, ib * 0.97, 8.0)
    cv.ellipse(cx, cy, ia * 0.95, ib * 0.95, 38.0)
    cv.ellipse(cx, cy, ia * 0.75, ib * 0.78, 27.0)
    for u, v, phase, size in p.blobs:
        ang = math.atan2(v, u) + 0.3 * math.sin(2 * math.pi * t + phase)
        cv.ellipse(
            cx + 0.8 * ia * math.cos(ang),
            cy + 0.8 * ib * math.sin(ang),
            body.s(0.01 + 0.015 * size),
            body.s(0.01 + 0.015 * size),
            38.0,
        )
    cv.ellipse(cx, cy, body.s(0.008), ib * 0.9, 45.0)
    s = p.organ_scale
    if 0.28 < t < 0.66:
        g = math.sin(math.pi * (t - 0.28) / 0.38)
        for side in (-1.0, 1.0):
            cv.ellipse(
                cx + side * body.s(0.1 * s),
                cy - body.s(0.02),
                body.s(0.045 * g * s),
                body.s(0.28 * g * s),
                5.0,
                angle_deg=side * 12.0,
            )
    if 0.55 < t < 0.72:
        cv.ellipse(cx, cy + body.s(0.05), body.s(0.012), body.s(0.08), 5.0)
    if t > 0.78:
        cv.ellipse(cx, cy + body.s(0.3), body.s(0.05), body.s(0.035), 5.0)
        for side in (-1.0, 1.0):
            cv.ellipse(
                cx + side * body.s(0.3),
                cy + body.s(0.12),
                body.s(0.3),
                body.s(0.06),
                1200.0,
                angle_deg=-side * 35.0,
            )
        cv.ellipse(cx, cy - body.s(0.35), body.s(0.12), body.s(0.08), AIR_HU)


# --------------------------------------------------------------------------- abdomen


def _draw_abdomen(cv: _Canvas, p: _Patient, t: float, z: float) -> None:
    body = p.body
    s = p.organ_scale
    cv.ellipse(body.cx, body.cy, body.a, body.b, p.fat_hu)
    wall = 1.0 - p.fat_frac
    cv.ellipse(
        body.cx, body.cy, wall * body.a, wall * body.b - p.fat_frac * 0.4 * body.a, p.tissue_hu
    )
    inner = wall - 0.06
    cv.ellipse(
        body.cx,
        body.cy + body.s(0.02),
        inner * body.a,
        inner * body.b - body.s(0.04),
        p.fat_hu + 15.0,
    )
    liver = max(0.0, 1.0 - t / 0.75)
    if liver > 0.0:
        g = math.sqrt(liver) * s
        cv.ellipse(
            body.x(-0.38), body.y(-0.02), body.s(0.4 * g), body.s(0.5 * g), 60.0, angle_deg=15.0
        )
    if t < 0.4:
        g = math.sin(math.pi * t / 0.4) * s
        cv.ellipse(
            body.x(0.62), body.y(0.3), body.s(0.13 * g), body.s(0.22 * g), 45.0, angle_deg=-30.0
        )
        cv.ellipse(body.x(0.3), body.y(-0.35), body.s(0.2 * s), body.s(0.15 * s), 30.0)
        cv.ellipse(body.x(0.3), body.y(-0.45), body.s(0.12 * s), body.s(0.05 * s), -950.0)
    if 0.15 < t < 0.75:
        g = math.sin(math.pi * (t - 0.15) / 0.6) * s
        for side in (-1.0, 1.0):
            kx, ky = body.x(side * 0.38), body.y(0.45)
            cv.ellipse(kx, ky, body.s(0.09 * g), body.s(0.16 * g), 32.0, angle_deg=side * 30.0)
            cv.ellipse(
                kx - side * body.s(0.03 * g),
                ky,
                body.s(0.03 * g),
                body.s(0.05 * g),
                -60.0,
                angle_deg=side * 30.0,
            )
    if t > 0.3:
        g = min(1.0, (t - 0.3) / 0.5)
        for side in (-1.0, 1.0):
            cv.ellipse(
                body.x(side * 0.2),
                body.y(0.55),
                body.s(0.06 + 0.06 * g),
                body.s(0.07 + 0.05 * g),
                48.0,
            )
    cv.ellipse(body.x(0.07), body.y(0.25), body.s(0.07), body.s(0.07), 42.0)
    cv.ellipse(body.x(-0.1), body.y(0.25), body.s(0.075), body.s(0.06), 38.0)
    bowel_top = 0.25
    if t > bowel_top:
        for u, v, phase, size in p.blobs:
            if math.sin(2.0 * math.pi * 1.5 * t + phase) < -0.2:
                continue
            bu = 0.55 * u + 0.06 * math.sin(2 * math.pi * t + phase)
            bv = -0.25 + 0.35 * v
            r = body.s(0.06 + 0.05 * size)
            cv.ellipse(body.x(bu), body.y(bv), r, r * 0.85, 25.0)
            if size > 0.35:
                gr = r * (0.3 + 0.3 * size)
                cv.ellipse(body.x(bu), body.y(bv) - 0.3 * r, gr, gr * 0.7, -900.0)
    _draw_spine(cv, body, 0.55, 1.2, p.tissue_hu)
    if t < 0.3:
        _draw_ribs(cv, p, z, 0.97 - p.fat_frac, 0.6)


_DRAW = {"chest": _draw_chest, "head": _draw_head, "abdomen": _draw_abdomen}


# --------------------------------------------------------------------------- lesions


def _inside(px: float, py: float, rho: float, ellipse: tuple[float, float, float, float]) -> bool:
    """Whether a disc of radius ``rho`` lies inside the ellipse (conservative test)."""
    cx, cy, ax, ay = ellipse
    if ax <= rho or ay <= rho:
        return False
    return ((px - cx) / (ax - rho)) ** 2 + ((py - cy) / (ay - rho)) ** 2 <= 1.0


def _outside(px: float, py: float, rho: float, ellipse: tuple[float, float, float, float]) -> bool:
    cx, cy, ax, ay = ellipse
    return ((px - cx) / (ax + rho)) ** 2 + ((py - cy) / (ay + rho)) ** 2 > 1.0


def _fits(
    patient: _Patient,
    geo: _Geometry,
    z_positions: np.ndarray,
    lesions: list[Lesion],
    side: int,
    px: float,
    py: float,
    z_c: float,
    radius: float,
    margin: float,
) -> bool:
    """Whether a sphere plus a rim of ``margin`` lung sits in one lung on every slice it cuts."""
    hits = np.nonzero(np.abs(z_positions - z_c) < radius)[0]
    if hits.size == 0:
        return False
    for i in hits:
        t_i = geo.t(int(i))
        rho = math.sqrt(max(radius**2 - (float(z_positions[i]) - z_c) ** 2, 0.0)) + margin
        if not _inside(px, py, rho, _lung_ellipses(patient, t_i)[side]):
            return False
        heart = _heart_ellipse(patient, t_i)
        if heart is not None and not _outside(px, py, rho, heart):
            return False
    return all(
        math.dist((px, py, z_c), other.center_mm) >= radius + other.radius_mm + margin
        for other in lesions
    )


def _place_lesions(spec: StudySpec, geo: _Geometry, patient: _Patient) -> tuple[Lesion, ...]:
    """Draw ``spec.nodules`` spheres that fit inside the lungs on every slice they cut.

    Each candidate disc, widened by a margin of lung around it, must lie inside one lung
    and clear of the heart on every slice it intersects, and clear of earlier lesions;
    radius and margin shrink together when no place fits (small fields of view), and
    ``ValueError`` is raised only when not even a sub-millimetre sphere fits.
    """
    if spec.nodules == 0:
        return ()
    rng = np.random.default_rng([spec.seed, _REGION_CODE[spec.region], 23])
    margin = 6.0 + 2.0 * geo.spacing
    z_positions = np.array([geo.z(i) for i in range(geo.slices)])
    lesions: list[Lesion] = []
    for _ in range(spec.nodules):
        radius = float(rng.uniform(*NODULE_RADIUS_MM))
        lesion_margin = margin
        placed: Lesion | None = None
        while placed is None:
            for _try in range(200):
                t_c = float(rng.uniform(0.35, 0.7))
                z_c = geo.z(geo.index_of_t(t_c))
                side = int(rng.integers(0, 2))
                cx, cy, ax, ay = _lung_ellipses(patient, t_c)[side]
                rr = math.sqrt(float(rng.uniform(0.0, 1.0)))
                ang = float(rng.uniform(0.0, 2.0 * math.pi))
                px, py = cx + rr * ax * math.cos(ang), cy + rr * ay * math.sin(ang)
                if _fits(
                    patient, geo, z_positions, lesions, side, px, py, z_c, radius, lesion_margin
                ):
                    placed = Lesion(
                        (round(px, 3), round(py, 3), round(z_c, 3)), round(radius, 3), ()
                    )
                    break
            else:
                radius *= 0.8
                lesion_margin *= 0.8
                if radius < 0.5:
                    raise ValueError(
                        f"cannot fit {spec.nodules} nodules in the lungs of this field of view; "
                        "increase rows/columns or pixel_spacing_mm, or ask for fewer"
                    )
        zc, r = placed.center_mm[2], placed.radius_mm
        indices = tuple(int(i) for i in np.nonzero(np.abs(z_positions - zc) < r)[0])
        lesions.append(Lesion(placed.center_mm, r, indices))
    return tuple(lesions)


def _draw_lesions(
    cv: _Canvas,
    lesions: tuple[Lesion, ...],
    values: list[float],
    index: int,
    z: float,
    spacing: float,
) -> None:
    """Draw the cross-section of each lesion this slice cuts; at least one pixel shows."""
    for lesion, value in zip(lesions, values, strict=True):
        if index not in lesion.slice_indices:
            continue
        x, y, zc = lesion.center_mm
        rho = math.sqrt(max(lesion.radius_mm**2 - (z - zc) ** 2, 0.0))
        rho = max(rho, 0.75 * spacing)
        cv.ellipse(x, y, rho, rho, value)


# --------------------------------------------------------------------------- DICOM


def _ds(value: float) -> DSfloat:
    """A Decimal String that fits PS3.5 6.2's 16 characters."""
    return DSfloat(round(float(value), 6), auto_format=True)


def _uid(spec: StudySpec, *parts: object) -> str:
    spec_key = json.dumps(asdict(spec), sort_keys=True)
    return generate_uid(entropy_srcs=[_UID_ROOT, spec_key, *(str(p) for p in parts)])


@dataclass(frozen=True)
class _Header:
    """Per-study attribute values shared by every slice."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    study_dt: _dt.datetime
    study_id: str
    accession: str
    frame_of_reference_uid: str
    series_number: int


def _header(spec: StudySpec) -> _Header:
    rng = np.random.default_rng([spec.seed, _REGION_CODE[spec.region], 31])
    days = int(rng.integers(0, 730))
    secs = int(rng.integers(7 * 3600, 19 * 3600))
    study_dt = _dt.datetime(2024, 1, 1) + _dt.timedelta(days=days, seconds=secs)
    age = int(rng.integers(25, 86))
    birth = study_dt.date().replace(year=study_dt.year - age, day=1)
    return _Header(
        patient_name=spec.resolved_patient_name(),
        patient_id=spec.resolved_patient_id(),
        birth_date=birth.strftime("%Y%m%d"),
        sex=str(rng.choice(["F", "M"])),
        age=f"{age:03d}Y",
        study_dt=study_dt,
        study_id=f"{spec.seed % 100_000:05d}",
        accession=f"ACC{spec.seed % 10**9:09d}{_REGION_CODE[spec.region]}",
        frame_of_reference_uid=_uid(spec, "frame-of-reference"),
        series_number=1 + _REGION_CODE[spec.region],
    )


def _make_dataset(
    spec: StudySpec,
    study: SyntheticStudy,
    header: _Header,
    geo: _Geometry,
    index: int,
    pixels: np.ndarray,
) -> FileDataset:
    """Wrap one slice as a CT Image Storage instance (PS3.3 A.3, explicit VR LE)."""
    sop_uid = study.sop_instance_uids[index]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RADNODE_SYNTH"

    ds = FileDataset(f"IM{index + 1:06d}.dcm", {}, file_meta=meta, preamble=b"\x00" * 128)
    study_date = header.study_dt.strftime("%Y%m%d")
    study_time = header.study_dt.strftime("%H%M%S")
    acq_dt = header.study_dt + _dt.timedelta(seconds=60)
    content_dt = acq_dt + _dt.timedelta(milliseconds=50 * index)
    z = geo.z(index)
    wc, ww = _WINDOWS[spec.region]

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = study_time
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.AcquisitionDate = acq_dt.strftime("%Y%m%d")
    ds.ContentDate = content_dt.strftime("%Y%m%d")
    ds.StudyTime = study_time
    ds.SeriesTime = study_time
    ds.AcquisitionTime = acq_dt.strftime("%H%M%S")
    ds.ContentTime = content_dt.strftime("%H%M%S.%f")
    ds.AccessionNumber = header.accession
    ds.Modality = "CT"
    ds.Manufacturer = "radnode synth"
    ds.InstitutionName = "radnode synthetic hospital"
    ds.ReferringPhysicianName = "Synthetic^Referrer"
    ds.StationName = "SYNTH01"
    ds.StudyDescription = f"CT {spec.region.upper()} (synthetic)"
    ds.SeriesDescription = f"Axial {spec.slice_thickness_mm:g}mm {spec.region}"
    ds.ManufacturerModelName = "radnode synth CT"
    ds.PatientName = header.patient_name
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = header.birth_date
    ds.PatientSex = header.sex
    ds.PatientAge = header.age
    ds.BodyPartExamined = spec.region.upper()
    ds.SliceThickness = _ds(spec.slice_thickness_mm)
    ds.KVP = _ds(120)
    ds.DataCollectionDiameter = _ds(500)
    ds.SoftwareVersions = "radnode-synth-1"
    ds.ReconstructionDiameter = _ds(geo.fov_x)
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = study.series_instance_uid
    ds.StudyID = header.study_id
    ds.SeriesNumber = header.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [_ds(geo.x0), _ds(geo.y0), _ds(z)]
    ds.ImageOrientationPatient = [_ds(v) for v in (1, 0, 0, 0, 1, 0)]
    ds.FrameOfReferenceUID = header.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(z)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geo.rows
    ds.Columns = geo.columns
    ds.PixelSpacing = [_ds(geo.spacing), _ds(geo.spacing)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = _ds(wc)
    ds.WindowWidth = _ds(ww)
    ds.WindowCenterWidthExplanation = _WINDOW_EXPLANATION[spec.region]
    ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
    ds.RescaleSlope = _ds(1)
    ds.RescaleType = "HU"
    ds.LossyImageCompression = "00"
    ds.add_new(Tag(0x7FE0, 0x0010), "OW", pixels.tobytes())
    return ds


# --------------------------------------------------------------------------- public API


def generate_study(spec: StudySpec) -> tuple[SyntheticStudy, Iterator[pydicom.Dataset]]:
    """Describe the study at once and return a lazy iterator over its slices.

    The description (UIDs, ground-truth lesions) is computed without drawing a pixel;
    each slice is drawn only when the iterator reaches it, so memory stays at one slice.
    Each yielded :class:`~pydicom.dataset.FileDataset` has ``file_meta`` set for
    explicit VR little endian and can be written with ``save_as(path,
    enforce_file_format=True)``.
    """
    geo = _geometry(spec)
    patient = _make_patient(spec, geo)
    lesions = _place_lesions(spec, geo, patient)
    study = SyntheticStudy(
        study_instance_uid=_uid(spec, "study"),
        series_instance_uid=_uid(spec, "series"),
        patient_id=spec.resolved_patient_id(),
        region=spec.region,
        lesions=lesions,
        sop_instance_uids=tuple(_uid(spec, "instance", i) for i in range(spec.slices)),
    )
    header = _header(spec)
    lesion_rng = np.random.default_rng([spec.seed, _REGION_CODE[spec.region], 29])
    lesion_hu = [float(v) for v in lesion_rng.uniform(30.0, 60.0, len(lesions))]

    def slices() -> Iterator[pydicom.Dataset]:
        xs = (geo.x0 + np.arange(geo.columns) * geo.spacing).astype(np.float64)
        ys = (geo.y0 + np.arange(geo.rows) * geo.spacing).astype(np.float64)
        draw = _DRAW[spec.region]
        for index in range(geo.slices):
            z, t = geo.z(index), geo.t(index)
            cv = _Canvas(xs, ys, AIR_HU)
            draw(cv, patient, t, z)
            _draw_lesions(cv, lesions, lesion_hu, index, z, geo.spacing)
            noise_rng = np.random.default_rng([spec.seed, _REGION_CODE[spec.region], 101, index])
            img = cv.img
            img += noise_rng.standard_normal(img.shape, dtype=np.float32) * np.float32(
                patient.noise_sigma
            )
            img -= np.float32(RESCALE_INTERCEPT)
            np.clip(img, 0.0, 4095.0, out=img)
            stored = np.rint(img).astype("<i2")
            yield _make_dataset(spec, study, header, geo, index, stored)

    return study, slices()


def _truth(spec: StudySpec, study: SyntheticStudy, files: list[Path]) -> dict[str, object]:
    return {
        "generator": "radnode ai_node.synth",
        "region": study.region,
        "study_instance_uid": study.study_instance_uid,
        "series_instance_uid": study.series_instance_uid,
        "patient_id": study.patient_id,
        "sop_instance_uids": list(study.sop_instance_uids),
        "files": [f.name for f in files],
        "lesions": [
            {
                "center_mm": list(lesion.center_mm),
                "radius_mm": lesion.radius_mm,
                "slice_indices": list(lesion.slice_indices),
            }
            for lesion in study.lesions
        ],
        "spec": asdict(spec),
    }


def write_study(
    spec: StudySpec,
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[SyntheticStudy, list[Path]]:
    """Write one PS3.10 file per slice as ``out_dir/IM000001.dcm`` ... and ``truth.json``.

    Files carry the 128-byte zero preamble, ``DICM`` prefix and File Meta Information
    (PS3.10 7.1) and are encoded explicit VR little endian. ``truth.json`` records the
    region, the lesions, the UIDs and the spec. ``progress(done, total)`` is called after
    each slice is written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study, datasets = generate_study(spec)
    files: list[Path] = []
    for index, ds in enumerate(datasets):
        path = out_dir / f"IM{index + 1:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        if progress is not None:
            progress(index + 1, spec.slices)
    truth_path = out_dir / "truth.json"
    truth_path.write_text(json.dumps(_truth(spec, study, files), indent=2) + "\n")
    logger.info(
        "wrote synthetic %s study %s: %d slices, %d lesions to %s",
        spec.region,
        study.study_instance_uid,
        len(files),
        len(study.lesions),
        out_dir,
    )
    return study, files
