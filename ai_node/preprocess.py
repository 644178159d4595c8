"""From stored DICOM to model input: series selection, decoding, Hounsfield units, windows.

The worker, the training command and the benchmarks call the same functions, so a
model sees at inference exactly what it saw in training.

Order of work (chosen for speed, see docs/benchmarks.md): each frame is decoded and
reduced to the model's 128x128 grid by area averaging straight from its stored
integers, and only then converted to Hounsfield units with its Modality LUT
(Rescale Slope/Intercept, PS3.3 C.11.1.1.2; both are linear, so the order does not
change the result). Windowing (PS3.3 C.11.2.1.2) and the per-slice normalisation
run on the small grid.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
)

from ai_node.card import IMAGENET_MEAN, IMAGENET_STD
from ai_node.card import Input as CardInput

logger = logging.getLogger(__name__)

INPUT_SIZE = 128
"""Rows = columns of every model input."""

CT_SOP_CLASSES = frozenset(
    {str(CTImageStorage), str(EnhancedCTImageStorage), str(LegacyConvertedEnhancedCTImageStorage)}
)
"""CT Image (PS3.4 B.5), Enhanced CT and Legacy Converted Enhanced CT Image Storage."""

MAX_SLICES = 2000
"""Most frames one study may contribute; beyond it the series is refused."""

_NATIVE_LE = frozenset({str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)})
_NATIVE_SYNTAXES = _NATIVE_LE | {"1.2.840.10008.1.2.2"}  # + explicit VR big endian


class InputError(ValueError):
    """The study cannot be analysed as it is (no CT series, no decodable slice ...).

    Not worth retrying: the pipeline records it as the study's result.
    """


@dataclass(frozen=True)
class Window:
    """A display window (PS3.3 C.11.2.1.2): centre and width in HU."""

    center: float
    width: float

    @property
    def low(self) -> float:
        return self.center - self.width / 2.0

    @property
    def high(self) -> float:
        return self.center + self.width / 2.0


LUNG_WINDOW = Window(-600.0, 1500.0)
"""Lung window, the finding model's input."""

WIDE_WINDOW = Window(0.0, 2000.0)
"""A wide window (-1000 .. 1000 HU) that keeps air, fat, soft tissue and bone apart: the
region model's input."""

WINDOWS = {"lung": LUNG_WINDOW, "wide": WIDE_WINDOW}


@dataclass(frozen=True)
class SliceRef:
    """Which image (and frame, for multi-frame objects) a slice came from."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


@dataclass
class SliceStack:
    """A series reduced to the model grid, in Hounsfield units, ordered head to feet."""

    hu: np.ndarray  # (N, INPUT_SIZE, INPUT_SIZE) float32
    positions: np.ndarray  # (N,) patient z in mm (or the ordering key when unknown)
    refs: list[SliceRef]
    skipped: list[str] = field(default_factory=list)  # why frames were left out
    headers: dict[str, Dataset] = field(default_factory=dict)  # SOP Instance UID -> header
    order: np.ndarray | None = None  # slice i came i-th from order[i] in decoding order
    extra: dict[int, np.ndarray] = field(default_factory=dict)  # other grid sizes, same order
    monochrome1: np.ndarray | None = None  # (N,) bool: PhotometricInterpretation MONOCHROME1

    def __len__(self) -> int:
        return int(self.hu.shape[0])

    def grid(self, size: int) -> np.ndarray:
        """The slices on a ``size`` x ``size`` grid (decoded for it, never resampled)."""
        if self.hu.shape[1] == size:
            return self.hu
        if size not in self.extra:
            raise KeyError(f"the stack was not decoded at {size}x{size}")
        return self.extra[size]


@dataclass(frozen=True)
class SeriesChoice:
    """The series to analyse: its UID and the stored files of its instances."""

    series_uid: str
    paths: list[Path]
    n_frames: int
    compressed: bool = False  # any instance in an encapsulated (compressed) transfer syntax


# --------------------------------------------------------------------------- series


def is_localizer(ds: Dataset) -> bool:
    image_type = ds.get("ImageType") or []
    values = [
        str(v).upper() for v in (image_type if not isinstance(image_type, str) else [image_type])
    ]
    return "LOCALIZER" in values


def is_axial(ds: Dataset) -> bool:
    """True when the orientation is axial or unknown (PS3.3 C.7.6.2.1.1)."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        shared = ds.get("SharedFunctionalGroupsSequence")
        try:
            iop = shared[0].PlaneOrientationSequence[0].ImageOrientationPatient
        except (AttributeError, IndexError, TypeError, KeyError):
            return True
    try:
        row = np.asarray([float(v) for v in iop[:3]])
        col = np.asarray([float(v) for v in iop[3:6]])
    except (TypeError, ValueError):
        return True
    normal = np.cross(row, col)
    return bool(abs(normal[2]) >= 0.8 * (np.linalg.norm(normal) or 1.0))


def select_series(
    instances: Sequence[dict[str, Any]], open_header: Callable[[str], Dataset]
) -> SeriesChoice | None:
    """The axial CT series with the most slices (frames), or None.

    ``instances`` are index rows (``sop_class_uid``, ``series_uid``, ``path``);
    ``open_header(path)`` reads one instance without its pixels. SR, SC and other
    non-CT objects are ignored by SOP class; localizers (ImageType LOCALIZER) and
    non-axial reformats by one header of the series.
    """
    by_series: dict[str, list[dict[str, Any]]] = {}
    for row in instances:
        if str(row["sop_class_uid"]) in CT_SOP_CLASSES:
            by_series.setdefault(str(row["series_uid"]), []).append(row)
    best: SeriesChoice | None = None
    for series_uid, rows in by_series.items():
        try:
            header = open_header(rows[0]["path"])
        except Exception as exc:  # noqa: BLE001 - an unreadable header rules the series out
            logger.warning(
                "series header unreadable", extra={"series_uid": series_uid, "error": str(exc)}
            )
            continue
        if is_localizer(header) or not is_axial(header):
            continue
        frames = len(rows)
        if len(rows) == 1:
            try:
                frames = int(header.get("NumberOfFrames") or 1)
            except (TypeError, ValueError):
                frames = 1
        if best is None or frames > best.n_frames:
            compressed = any(
                str(r.get("transfer_syntax_uid") or "") not in _NATIVE_SYNTAXES for r in rows
            )
            best = SeriesChoice(series_uid, [Path(r["path"]) for r in rows], frames, compressed)
    return best


# --------------------------------------------------------------------------- decoding


def _bin_edges(size: int, out: int) -> np.ndarray:
    return np.linspace(0, size, out + 1).astype(np.intp)[:-1]


def area_resize(img: np.ndarray, size: int = INPUT_SIZE, pad_max: bool = False) -> np.ndarray:
    """Area-average a 2-D image of any shape onto a ``size`` x ``size`` float32 grid.

    Non-square images are padded to a square first, so anatomy keeps its aspect ratio:
    with their minimum (black), or with ``pad_max`` their maximum (black in MONOCHROME1).
    Smaller images are enlarged by nearest neighbour.
    """
    rows, cols = img.shape
    if rows != cols:
        side = max(rows, cols)
        fill = img.max() if pad_max else img.min()
        square = np.full((side, side), fill, dtype=img.dtype)
        r0, c0 = (side - rows) // 2, (side - cols) // 2
        square[r0 : r0 + rows, c0 : c0 + cols] = img
        img, rows = square, side
    if rows == size:
        return img.astype(np.float32, copy=True)
    if rows < size:
        idx = (np.arange(size) * rows) // size
        return img[np.ix_(idx, idx)].astype(np.float32)
    if rows % size == 0:
        # k strided adds per axis: several times faster than a reshape-sum over two axes
        k = rows // size
        x = img.astype(np.float32)
        cols_sum = x[:, 0::k].copy()
        for i in range(1, k):
            cols_sum += x[:, i::k]
        out = cols_sum[0::k].copy()
        for i in range(1, k):
            out += cols_sum[i::k]
        out *= np.float32(1.0 / (k * k))
        return out
    edges = _bin_edges(rows, size)
    summed = np.add.reduceat(np.add.reduceat(img, edges, axis=0, dtype=np.float32), edges, axis=1)
    counts = np.diff(np.append(edges, rows)).astype(np.float32)
    summed /= counts[:, None] * counts[None, :]
    return summed


def _float(value: Any, default: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default


def _frame_groups(ds: Dataset, index: int) -> list[Dataset]:
    """The per-frame then shared functional group items for a multi-frame frame."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    return groups


def _from_groups(groups: list[Dataset], sequence: str, keyword: str) -> Any:
    for group in groups:
        seq = group.get(sequence)
        if seq and keyword in seq[0]:
            return seq[0].get(keyword)
    return None


def _position_z(value: Any) -> float | None:
    try:
        return float(value[2])
    except (TypeError, ValueError, IndexError):
        return None


@dataclass
class _Frame:
    grid: np.ndarray
    key: float | None
    ref: SliceRef
    extra: dict[int, np.ndarray] = field(default_factory=dict)
    monochrome1: bool = False


def _pixels(ds: Dataset) -> np.ndarray:
    """The stored pixel values; a zero-copy view for the common native 16-bit case."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if (
        ts in _NATIVE_LE
        and ds.get("BitsAllocated") == 16
        and ds.get("BitsStored") == 16
        and ds.get("SamplesPerPixel", 1) == 1
        and "PixelData" in ds
    ):
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(_float(ds.get("NumberOfFrames"), 1.0))
        count = rows * cols * frames
        data = ds.PixelData
        if len(data) < 2 * count:
            raise InputError(f"pixel data has {len(data)} bytes, {2 * count} expected")
        dtype = "<i2" if ds.get("PixelRepresentation") == 1 else "<u2"
        arr = np.frombuffer(data, dtype=dtype, count=count)
        return arr.reshape(rows, cols) if frames == 1 else arr.reshape(frames, rows, cols)
    return np.asarray(ds.pixel_array)


def frames_of_dataset(
    ds: Dataset, size: int = INPUT_SIZE, extra_sizes: Sequence[int] = ()
) -> list[_Frame]:
    """Decode every frame of one instance onto the model grid (and any ``extra_sizes``
    grids), through its Modality LUT: Hounsfield units for CT, the stored values of a
    radiograph (which has no rescale) otherwise.

    Handles the transfer syntaxes pydicom decodes with the installed plugins
    (pylibjpeg: JPEG, JPEG-LS, JPEG 2000, RLE), 10 to 16 bits stored, multi-frame
    Enhanced CT (per-frame rescale and position), and missing optional tags: no Rescale
    Slope/Intercept means identity, no position falls back to Instance Number. MONOCHROME1
    frames are marked (the model input inverts them, :func:`card_input`). Raises on
    undecodable pixels.
    """
    pixels = _pixels(ds)
    n_frames = int(_float(ds.get("NumberOfFrames"), 1.0))
    if n_frames == 1 and pixels.ndim == 2:
        pixels = pixels[None]
    elif pixels.ndim != 3:
        raise InputError(f"unexpected pixel array shape {pixels.shape} (colour or malformed)")
    sop_class = str(ds.get("SOPClassUID", ""))
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    multi = (
        "NumberOfFrames" in ds and pixels.shape[0] >= 1 and "PerFrameFunctionalGroupsSequence" in ds
    )
    out = []
    instance_key = _float(ds.get("InstanceNumber"), np.nan)
    monochrome1 = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    sizes = [s for s in dict.fromkeys(extra_sizes) if s != size]
    for i in range(pixels.shape[0]):
        if multi:
            groups = _frame_groups(ds, i)
            slope = _float(
                _from_groups(groups, "PixelValueTransformationSequence", "RescaleSlope"), 1.0
            )
            intercept = _float(
                _from_groups(groups, "PixelValueTransformationSequence", "RescaleIntercept"), 0.0
            )
            key = _position_z(_from_groups(groups, "PlanePositionSequence", "ImagePositionPatient"))
            ref = SliceRef(sop_class, sop_uid, i + 1)
        else:
            slope = _float(ds.get("RescaleSlope"), 1.0)
            intercept = _float(ds.get("RescaleIntercept"), 0.0)
            key = _position_z(ds.get("ImagePositionPatient"))
            ref = SliceRef(sop_class, sop_uid, None)
        if key is None and np.isfinite(instance_key):
            key = -instance_key  # head-to-feet order follows increasing Instance Number
        grids = [area_resize(pixels[i], s, pad_max=monochrome1) for s in (size, *sizes)]
        for grid in grids:
            if slope != 1.0:
                grid *= np.float32(slope)
            if intercept != 0.0:
                grid += np.float32(intercept)
        extra = dict(zip(sizes, grids[1:], strict=True))
        out.append(_Frame(grids[0], key, ref, extra, monochrome1))
    return out


DecodedFile = tuple[list[_Frame], Dataset]
"""One file's frames on the model grids and its header (pixel data dropped)."""


def decode_file(path: Path, size: int, extra_sizes: Sequence[int] = ()) -> DecodedFile:
    """The frames of one file and its header (pixel data dropped, for the SR's evidence)."""
    ds = pydicom.dcmread(path)
    frames = frames_of_dataset(ds, size, extra_sizes)
    del ds.PixelData
    return frames, ds


def on_grids(
    decoded: DecodedFile, size: int, extra_sizes: Sequence[int] = ()
) -> DecodedFile | None:
    """A decoded file's frames with ``size`` as their grid and ``extra_sizes`` beside it
    (the same arrays, not copies), or None when a frame lacks one of those sizes."""
    frames, header = decoded
    wanted = [size, *(s for s in dict.fromkeys(extra_sizes) if s != size)]
    out = []
    for frame in frames:
        grids = {int(frame.grid.shape[-1]): frame.grid, **frame.extra}
        if any(s not in grids for s in wanted):
            return None
        extra = {s: grids[s] for s in wanted[1:]}
        out.append(_Frame(grids[size], frame.key, frame.ref, extra, frame.monochrome1))
    return out, header


def stack_frames(frames: Iterable[_Frame], skipped: list[str] | None = None) -> SliceStack:
    """Order frames head to feet (descending z, PS3.3 C.7.6.2.1.1) and stack them."""
    items = list(frames)
    if not items:
        reason = skipped[0] if skipped else "no frames"
        raise InputError(f"no decodable slice or image ({reason})")
    order = list(range(len(items)))
    if all(f.key is not None for f in items):
        order.sort(key=lambda i: -(items[i].key or 0.0))
        items = [items[i] for i in order]
    positions = np.asarray(
        [f.key if f.key is not None else float(-i) for i, f in enumerate(items)], dtype=np.float64
    )
    monochrome1 = np.asarray([f.monochrome1 for f in items], dtype=bool)
    return SliceStack(
        hu=np.stack([f.grid for f in items]),
        positions=positions,
        refs=[f.ref for f in items],
        skipped=list(skipped or []),
        order=np.asarray(order, dtype=np.intp),
        extra={s: np.stack([f.extra[s] for f in items]) for s in items[0].extra},
        monochrome1=monochrome1 if monochrome1.any() else None,
    )


def load_series(
    paths: Sequence[Path],
    size: int = INPUT_SIZE,
    workers: int | None = None,
    max_bad_fraction: float = 0.5,
    compressed: bool = True,
    on_chunk: Callable[[list[_Frame]], None] | None = None,
    chunk: int = 64,
    extra_sizes: Sequence[int] = (),
    decoded: Mapping[Path, DecodedFile] | None = None,
) -> SliceStack:
    """Decode a series' files onto the model grid, in HU.

    Compressed series are decoded by a thread per core (the codecs run outside the
    GIL); uncompressed ones in the calling thread, where parsing is bound by the GIL
    and threads measured slower (docs/benchmarks.md). Files that fail to decode are
    left out and named in ``skipped``; when more than ``max_bad_fraction`` of them
    fail the series is refused with :class:`InputError`.

    ``on_chunk(frames)`` is called with every ``chunk`` newly decoded frames, in
    decoding order (``SliceStack.order`` maps them to the final head-to-feet order):
    the pipeline runs inference on them while the next files decode. ``extra_sizes``:
    grids to decode besides ``size`` (models of other input sizes on the same series).
    ``decoded``: files already decoded onto those grids (:mod:`ai_node.prefetch` decodes a
    study while it arrives); they take their place in the order and only the others are
    decoded here, so the stack is the one a decode of every file makes.
    """
    if not paths:
        raise InputError("the series has no instances")
    if workers is None:
        workers = (os.cpu_count() or 1) if compressed else 1
    frames: list[_Frame] = []
    skipped: list[str] = []
    headers: dict[str, Dataset] = {}

    ready = decoded or {}

    def decode(path: Path) -> DecodedFile | str:
        try:
            return decode_file(path, size, extra_sizes)
        except Exception as exc:  # noqa: BLE001 - a corrupt file is reported, not fatal
            return f"{path.name}: {type(exc).__name__}: {exc}"[:300]

    pending: list[_Frame] = []

    def collect(result: DecodedFile | str, last: bool) -> None:
        if isinstance(result, str):
            skipped.append(result)
        else:
            frames.extend(result[0])
            pending.extend(result[0])
            headers[str(result[1].get("SOPInstanceUID", ""))] = result[1]
        if on_chunk is not None and pending and (last or len(pending) >= chunk):
            on_chunk(list(pending))
            pending.clear()

    missing = [p for p in paths if p not in ready]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        if workers == 1 or len(missing) <= 1:
            results: Iterator[DecodedFile | str] = (decode(p) for p in missing)
        else:
            chunksize = max(1, len(missing) // (4 * workers))
            results = pool.map(decode, missing, chunksize=chunksize)
        for i, path in enumerate(paths):
            done = ready.get(path)
            collect(done if done is not None else next(results), i == len(paths) - 1)
    if len(frames) > MAX_SLICES:
        raise InputError(f"series has {len(frames)} frames, more than {MAX_SLICES}")
    if skipped and len(skipped) > max_bad_fraction * len(paths):
        raise InputError(
            f"{len(skipped)} of {len(paths)} instances could not be decoded (first: {skipped[0]})"
        )
    if skipped:
        logger.warning("instances left out", extra={"count": len(skipped), "first": skipped[0]})
    stack = stack_frames(frames, skipped)
    stack.headers = headers
    return stack


def load_datasets(
    datasets: Iterable[Dataset], size: int = INPUT_SIZE, extra_sizes: Sequence[int] = ()
) -> SliceStack:
    """Like :func:`load_series` for in-memory datasets (training on generated studies)."""
    frames: list[_Frame] = []
    for ds in datasets:
        frames.extend(frames_of_dataset(ds, size, extra_sizes))
    return stack_frames(frames)


# --------------------------------------------------------------------------- model input


def windowed(hu: np.ndarray, window: Window) -> np.ndarray:
    """Clip to the window and scale to 0..1 (a new float32 array)."""
    out = np.clip(hu, window.low, window.high).astype(np.float32, copy=False)
    if out is hu:
        out = out.copy()
    out -= np.float32(window.low)
    out *= np.float32(1.0 / window.width)
    return out


def normalise_slices(x: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """Per-slice normalisation in place: zero mean, unit standard deviation per slice."""
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(axis=1, dtype=np.float32)
    std = flat.std(axis=1, dtype=np.float32)
    flat -= mean[:, None]
    flat /= (std + np.float32(eps))[:, None]
    return x


def model_input(hu: np.ndarray, window: Window | str) -> np.ndarray:
    """(N, S, S) HU -> (N, S, S, 1) float32: windowed, normalised per slice."""
    if isinstance(window, str):
        window = WINDOWS[window]
    x = normalise_slices(windowed(hu, window))
    return x[..., None]


def _unit_range(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per image: clip to [low, high] and scale to 0..1 (a flat image becomes 0)."""
    lo = low.astype(np.float32)[:, None, None]
    span = np.maximum(high.astype(np.float32) - low.astype(np.float32), np.float32(1e-6))
    span = span[:, None, None]
    out = np.clip(x, lo, lo + span).astype(np.float32, copy=True)
    out -= lo
    out /= span
    return out


def card_input(
    grids: np.ndarray, spec: CardInput, monochrome1: np.ndarray | None = None
) -> np.ndarray:
    """(N, S, S) slices or images on the model grid -> (N, S, S, C) model input, as the
    card's ``input`` says (docs/models.md): scale to 0..1 (HU window(s), per-image min-max
    or percentiles), invert MONOCHROME1 images, replicate a single channel, standardise
    (per image, or ImageNet's channel statistics).

    One window with per-image standardisation computes exactly :func:`model_input`.
    """
    norm = spec.normalisation
    n = grids.shape[0]
    if norm.scale == "hu_window":
        channels = [windowed(grids, Window(w.center, w.width)) for w in norm.windows or []]
    elif norm.scale == "min_max":
        flat = grids.reshape(n, -1)
        channels = [_unit_range(grids, flat.min(axis=1), flat.max(axis=1))]
    else:
        low, high = np.percentile(grids.reshape(n, -1), list(norm.percentiles), axis=1)
        channels = [_unit_range(grids, low, high)]
    if spec.invert_monochrome1 and monochrome1 is not None and monochrome1.any():
        for channel in channels:
            channel[monochrome1] = 1.0 - channel[monochrome1]
    if len(channels) == 1 and spec.channels == 1 and norm.standardise == "per_image":
        return normalise_slices(channels[0])[..., None]
    if len(channels) == 1:
        x = np.repeat(channels[0][..., None], spec.channels, axis=-1)
    else:
        x = np.stack(channels, axis=-1)
    if norm.standardise == "per_image":
        normalise_slices(x)
    elif norm.standardise == "imagenet":
        x -= np.asarray(IMAGENET_MEAN, dtype=np.float32)
        x /= np.asarray(IMAGENET_STD, dtype=np.float32)
    return x
