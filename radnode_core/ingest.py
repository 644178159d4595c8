"""Ingest one encoded instance: validate, store, index, count (for C-STORE and STOW-RS).

The statuses are those of the Storage Service Class (PS3.4 B.2.3), which
STOW-RS reuses as FailureReason (PS3.18 10.5.3):

* 0x0000 success (also for a duplicate under the ``keep_first`` policy),
* 0xA700 out of resources: the store cannot write (disk full, I/O error, index down),
  or the dataset is larger than ``max_instance_bytes``,
* 0xA900 data set does not match SOP class: the UIDs the store needs are
  missing or malformed, the dataset's SOP Class/Instance UID differ from
  the ones the transfer announced, or its SOP Instance UID is already stored
  under another study or series,
* 0xC000 cannot understand: the bytes do not decode as a complete dataset.

The dataset bytes are stored exactly as received (no re-encoding), behind a
new File Meta Information group with a zeroed preamble.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom import Dataset
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian

from radnode_core.index import InstanceConflict, dataset_value, record_fields_from_dataset
from radnode_core.metrics import Metrics
from radnode_core.store import InstanceStore, StoreResult, file_meta_bytes
from radnode_core.uids import InvalidUID

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

# Syntaxes whose whole dataset is deflated: Deflated Explicit VR LE, JPIP Referenced Deflate.
DEFLATED_DATASET_SYNTAXES = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})
_UNDEFINED_LENGTH = 0xFFFFFFFF
# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 4-byte length; the others have 2.
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_PIXEL_STOP = 0x7FE00008  # Float Pixel Data, the first of the three Pixel Data elements
_DATASET, _ITEMS, _FRAGMENTS = 0, 1, 2


class IngestError(Exception):
    """An instance that is refused, with its PS3.4 status and a short reason."""

    def __init__(self, status: int, reason: str, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.reason = reason  # metric label
        self.comment = comment[:64]  # Error Comment (0000,0902) is LO: 64 characters


@dataclass(frozen=True)
class IngestResult:
    status: int
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    duplicate: bool
    size: int


def _parse_sequences(ds: Dataset) -> None:
    """Parse every sequence, nested ones included, so a broken item structure is found now.

    Other elements keep pydicom's lazy conversion: their bytes are already
    checked for length, and a value that does not convert cannot break the structure.
    """
    for tag in list(ds._dict):
        raw = ds._dict[tag]
        vr = getattr(raw, "VR", None)
        if vr is None and isinstance(raw, RawDataElement):
            vr = dictionary_vr_or_none(tag)
        if vr == "SQ":
            for item in ds[tag].value:
                _parse_sequences(item)


def dictionary_vr_or_none(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _undecodable(exc: Exception, what: str = "cannot decode dataset") -> IngestError:
    """pydicom could not read the dataset (or an element of it): 0xC000."""
    return IngestError(CANNOT_UNDERSTAND, "undecodable", f"{what}: {type(exc).__name__}")


def _empty() -> IngestError:
    return IngestError(CANNOT_UNDERSTAND, "empty", "empty dataset")


def _truncated(tag: int) -> IngestError:
    return IngestError(CANNOT_UNDERSTAND, "truncated", f"truncated value of {BaseTag(tag)}")


def _malformed(detail: str) -> IngestError:
    return IngestError(CANNOT_UNDERSTAND, "malformed", f"malformed dataset: {detail}")


def _implicit_is_sequence(tag: int, length: int) -> bool:
    """Implicit VR: a sequence by the dictionary, or any undefined-length value (PS3.5 7.5)."""
    vr = dictionary_vr_or_none(tag)
    return vr == "SQ" or (length == _UNDEFINED_LENGTH and vr in (None, "UN"))


class TopLevel:
    """What :func:`check_structure` collects of a dataset's top level on its walk: the
    elements before (7FE0,0008) as the :class:`RawDataElement` pydicom's reader yields
    (``complete`` is False if the reader would make one of them otherwise: it parses an
    undefined-length sequence at once and leaves a value over ``_DEFER_BYTES`` in the
    file), and the length of Pixel Data (None: absent, or of undefined length)."""

    def __init__(self, ts: UID) -> None:
        self.implicit = ts.is_implicit_VR
        self.little = ts.is_little_endian
        self.elements: dict[BaseTag, RawDataElement] = {}
        self.complete = True
        self.pixel_length: int | None = None
        self._stopped = False

    def add(self, tag: int, vr: bytes | None, length: int, value: bytes | memoryview) -> None:
        if tag >= _PIXEL_STOP:  # where pydicom's reading stops (_before_pixel_data)
            if not self._stopped and tag == _PIXEL_DATA and length != _UNDEFINED_LENGTH:
                self.pixel_length = length
            self._stopped = True
            return
        if length == _UNDEFINED_LENGTH or length > _DEFER_BYTES:
            self.complete = False
            return
        name = vr.decode("ascii") if vr is not None else None
        key = BaseTag(tag)
        self.elements[key] = RawDataElement(
            key,
            name,
            length,
            bytes(value) if length else cast(bytes | None, empty_value_for_VR(name, raw=True)),
            0,
            self.implicit,
            self.little,
        )

    def dataset(self) -> Dataset:
        """The elements as the Dataset pydicom's ``read_dataset`` makes of them."""
        ds = Dataset(cast("dict[BaseTag, RawDataElement | DataElement]", self.elements))
        charset = self.elements.get(BaseTag(0x00080005))
        encoding: str | MutableSequence[str] = default_encoding
        if charset is not None:
            encoding = convert_encodings(convert_raw_data_element(charset).value)
        ds.set_original_encoding(self.implicit, self.little, encoding)
        return ds


def check_structure(raw: bytes | memoryview, ts: UID, top: TopLevel | None = None) -> None:
    """Walk the encoded dataset and refuse anything that is not well formed (PS3.5 7.1-7.5).

    pydicom reads leniently (it even switches explicit/implicit VR when a dataset
    looks like the other); a receiver must not store bytes that a strict reader cannot
    parse under the negotiated syntax. Checked, at every nesting level: tags ascending
    and unique, known VRs, every value, item and sequence inside its parent, delimiters
    only where they belong, undefined lengths only on sequences and encapsulated Pixel
    Data, no trailing bytes. Iterative: any nesting depth costs no stack. ``top``
    collects the top level's elements on the way (see :class:`TopLevel`).
    """
    order = "<" if ts.is_little_endian else ">"
    header = struct.Struct(order + "HHI")  # tag and a 4-byte length (implicit VR, items)
    short_length = struct.Struct(order + "H")
    long_length = struct.Struct(order + "I")
    size = len(raw)
    # One frame per open level: [end (None: undefined length), last tag, kind, implicit VR]
    stack: list[list[Any]] = [[size, -1, _DATASET, ts.is_implicit_VR]]
    pos = 0
    while stack:
        frame = stack[-1]
        end, kind, implicit = frame[0], frame[2], frame[3]
        if end is not None and pos >= end:
            if pos > end:
                raise _malformed("element overruns its item or sequence")
            stack.pop()
            continue
        limit = end if end is not None else size
        if pos + 8 > limit:
            raise _malformed("element header cut")
        group, element, length = header.unpack_from(raw, pos)
        tag = group << 16 | element
        if kind != _DATASET:  # inside a sequence or encapsulated Pixel Data: items only
            pos += 8
            if tag == _SEQUENCE_END and end is None and length == 0:
                stack.pop()
            elif tag != _ITEM or (kind == _FRAGMENTS and length == _UNDEFINED_LENGTH):
                raise _malformed("expected an item")
            elif length == _UNDEFINED_LENGTH:
                stack.append([None, -1, _DATASET, implicit])
            elif pos + length > limit:
                raise _malformed("item overruns its sequence")
            elif kind == _FRAGMENTS:
                pos += length
            else:
                stack.append([pos + length, -1, _DATASET, implicit])
            continue
        if group == 0xFFFE:
            if tag == _ITEM_END and end is None and length == 0:
                pos += 8
                stack.pop()
                continue
            raise _malformed("delimiter out of place")
        if tag <= frame[1]:
            raise _malformed("elements not in ascending tag order")
        frame[1] = tag
        if implicit:
            vr = None
            sequence = _implicit_is_sequence(tag, length)
            pos += 8
        else:
            vr = bytes(raw[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                if pos + 12 > limit:
                    raise _malformed("element header cut")
                (length,) = long_length.unpack_from(raw, pos + 8)
                pos += 12
            elif vr in _SHORT_VRS:
                (length,) = short_length.unpack_from(raw, pos + 6)
                pos += 8
            else:
                raise _malformed("unknown VR")
            sequence = vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED_LENGTH)
            # PS3.5 6.2.2: an undefined-length UN holds implicit VR little endian items.
            implicit = implicit or vr == b"UN"
        if top is not None and len(stack) == 1:
            if length == _UNDEFINED_LENGTH:
                top.add(tag, vr, length, b"")
            elif pos + length <= limit:
                top.add(tag, vr, length, raw[pos : pos + length])
        if length == _UNDEFINED_LENGTH:
            if sequence:
                stack.append([None, -1, _ITEMS, implicit])
            elif tag == _PIXEL_DATA and ts.is_compressed:  # also an icon's (PS3.5 A.4)
                stack.append([None, -1, _FRAGMENTS, implicit])
            else:
                raise _malformed("undefined length on a value that is not a sequence")
        elif pos + length > limit:
            if len(stack) == 1:  # past the end of the bytes: what pydicom reads comes short
                raise _truncated(tag)
            raise _malformed("value overruns its item or the dataset")
        elif sequence:
            stack.append([pos + length, -1, _ITEMS, implicit])
        else:
            pos += length
    if pos != size:
        raise _malformed("trailing bytes after the dataset")


def _inflate(raw: bytes | memoryview, max_bytes: int | None) -> bytes:
    """A raw deflate stream (PS3.5 A.5) that must end exactly where the bytes end; refused
    when it inflates beyond ``max_bytes`` (a deflate bomb is not inflated further)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(raw, max_bytes + 1 if max_bytes else 0)
    if max_bytes and len(out) > max_bytes:
        raise IngestError(
            OUT_OF_RESOURCES, "too_large", f"inflated dataset over the {max_bytes}-byte limit"
        )
    out += inflater.flush()
    # One 0x00 after the stream pads it to even length (pydicom and others write it).
    if not inflater.eof or inflater.unused_data not in (b"", b"\x00"):
        raise _malformed("deflated stream cut or followed by other bytes")
    return out


def decode_complete(
    raw: bytes | memoryview,
    transfer_syntax_uid: str,
    max_bytes: int | None = None,
    *,
    parse_sequences: bool = True,
) -> Dataset:
    """Decode a dataset and insist that every byte of it is there.

    pydicom reads leniently: a truncated value comes back short and a cut
    element header is dropped silently. A receiver must not acknowledge such a
    dataset, so each top-level value is checked against its declared length
    and the last one must end exactly at the end of the stream; then
    :func:`check_structure` walks the whole stream, nested items included, and every
    sequence is parsed (``parse_sequences=False``: left to pydicom's lazy reading, for
    bytes pydicom itself wrote from a dataset, see :meth:`Ingestor.ingest_built`).
    """
    ts = UID(transfer_syntax_uid)
    try:
        if not ts.is_transfer_syntax:
            raise IngestError(CANNOT_UNDERSTAND, "transfer_syntax", "unknown transfer syntax")
        if transfer_syntax_uid in DEFLATED_DATASET_SYNTAXES:  # PS3.5 A.5, A.7
            raw = _inflate(raw, max_bytes)
        ds = read_dataset(
            BytesIO(raw), is_implicit_VR=ts.is_implicit_VR, is_little_endian=ts.is_little_endian
        )
    except IngestError:
        raise
    except Exception as exc:
        raise _undecodable(exc) from exc
    _whole(ds)
    # Where the dataset ends is check_structure's to say: pydicom hands an undefined-length
    # sequence back parsed, without the offsets a check here would need.
    check_structure(raw, ts)
    if not parse_sequences:
        return ds
    try:
        _parse_sequences(ds)
    except Exception as exc:
        raise _undecodable(exc, "bad element") from exc
    return ds


def _whole(ds: Dataset) -> None:
    """What pydicom's lenient reader returned is refused if it is empty or a value came
    short of its declared length."""
    if not len(ds):
        raise _empty()
    _truncated_values(ds)


def _truncated_values(ds: Dataset) -> None:
    for elem in ds._dict.values():
        if not isinstance(elem, RawDataElement):
            continue
        if (
            elem.length != _UNDEFINED_LENGTH
            and elem.value is not None
            and len(elem.value) != elem.length
        ):
            raise _truncated(elem.tag)


def _before_pixel_data(tag: int, vr: str | None, length: int) -> bool:
    """Stop reading at Float, Double Float or plain Pixel Data (7FE0,0008-0010)."""
    return tag >= 0x7FE00008


def _pixel_data_header(fp: BinaryIO, ts: UID) -> int | None:
    """At the element where reading stopped: the length of a top-level Pixel Data
    (7FE0,0010) of defined length, else None."""
    head = fp.read(8)
    if len(head) < 8:
        return None
    order = "<" if ts.is_little_endian else ">"
    group, element = struct.unpack_from(order + "HH", head)
    if (group << 16 | element) != _PIXEL_DATA:
        return None
    if ts.is_implicit_VR:
        (length,) = struct.unpack_from(order + "I", head, 4)
    elif head[4:6] in _LONG_VRS:
        more = fp.read(4)
        if len(more) < 4:
            return None
        (length,) = struct.unpack(order + "I", more)
    else:
        (length,) = struct.unpack_from(order + "H", head, 6)
    return None if length == _UNDEFINED_LENGTH else int(length)


_DEFER_BYTES = 1024 * 1024
"""Values larger than this are left in the spooled file (read only if asked for)."""


def _reader_switches_vr(raw: bytes | memoryview, ts: UID) -> bool:
    """Whether pydicom's reader would read the dataset in the other VR encoding than ``ts``'s:
    it looks at the first element's bytes 4-5, two capital letters being a VR
    (``pydicom.filereader._is_implicit_vr``). The dataset is then read as the reader reads
    it, so that a receiver stores only what pydicom makes sense of."""
    return len(raw) >= 6 and (0x40 < raw[4] < 0x5B and 0x40 < raw[5] < 0x5B) == ts.is_implicit_VR


def _read_file_dataset(fp: BinaryIO, offset: int, ts: UID) -> tuple[Dataset, int | None]:
    """pydicom's reading of the elements before Pixel Data, values over 1 MiB left in the
    file, and the Pixel Data's length."""
    fp.seek(offset)
    try:
        ds = read_dataset(
            fp,
            is_implicit_VR=ts.is_implicit_VR,
            is_little_endian=ts.is_little_endian,
            stop_when=_before_pixel_data,
            defer_size=_DEFER_BYTES,
        )
        pixel_length = _pixel_data_header(fp, ts)
    except Exception as exc:
        raise _undecodable(exc) from exc
    _whole(ds)
    # A deferred value is read from the file when asked for.
    ds.filename, ds.fileobj_type, ds.timestamp, ds.buffer = fp.name, open, None, None
    return ds, pixel_length


def decode_complete_file(
    path: Path, offset: int, transfer_syntax_uid: str
) -> tuple[Dataset, int | None]:
    """:func:`decode_complete` for a dataset that starts at ``offset`` of a file (a spooled
    C-STORE), without reading its bulk data into memory: the structure is walked over a
    read-only map of the file, pydicom reads the elements before Pixel Data and leaves
    values over 1 MiB in the file. Returns the dataset and the length of its Pixel Data
    (None: none, or of undefined length). Not for deflated syntaxes (their bytes must be
    inflated first)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _decode_open_file(fd, os.fstat(fd).st_size, path, offset, transfer_syntax_uid)
    finally:
        os.close(fd)


def _decode_open_file(
    fd: int, size: int, path: Path, offset: int, transfer_syntax_uid: str
) -> tuple[Dataset, int | None]:
    """:func:`decode_complete_file` on ``fd``, the file at ``path`` opened for reading,
    ``size`` bytes long. The walk maps the file through the descriptor; a Python file
    object (a buffered reader: three more system calls to open, and a read per element)
    is opened only where pydicom's reader has to run."""
    ts = UID(transfer_syntax_uid)
    if not ts.is_transfer_syntax:
        raise IngestError(CANNOT_UNDERSTAND, "transfer_syntax", "unknown transfer syntax")
    if size <= offset:
        raise _empty()
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)[offset:]
        top = TopLevel(ts)
        try:
            check_structure(view, ts, top)
            switches = _reader_switches_vr(view, ts)
        finally:
            view.release()
    if not top.complete or switches:
        with open(path, "rb") as fp:
            ds, pixel_length = _read_file_dataset(fp, offset, ts)
    elif not top.elements:
        raise _empty()
    else:
        try:
            ds = top.dataset()
        except Exception as exc:  # its Specific Character Set does not convert
            raise _undecodable(exc, "bad element") from exc
        pixel_length = top.pixel_length
    try:
        _parse_sequences(ds)
    except Exception as exc:
        raise _undecodable(exc, "bad element") from exc
    return ds, pixel_length


def _check_native_pixel_length(ds: Dataset, ts: UID, actual: int | None = None) -> None:
    """For an uncompressed transfer syntax the Pixel Data length follows from the image.
    ``actual``: the length when Pixel Data was not read (a spooled dataset)."""
    if ts.is_compressed:
        return
    if actual is None:
        if "PixelData" not in ds:
            return
        actual = len(ds.PixelData)
    # The values as pydicom converts them (an absent one is None: int() refuses it),
    # without a DataElement built for each.
    try:
        frames = int(dataset_value(ds, "NumberOfFrames") or 1)
        bits = (
            int(dataset_value(ds, "BitsAllocated"))
            * int(dataset_value(ds, "Rows"))
            * int(dataset_value(ds, "Columns"))
            * int(dataset_value(ds, "SamplesPerPixel"))
        )
    except Exception as exc:  # absent, or a value pydicom cannot convert (a short US)
        raise IngestError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, "image_pixel", "Image Pixel module incomplete"
        ) from exc
    expected = (bits * frames + 7) // 8
    if actual < expected:
        raise IngestError(CANNOT_UNDERSTAND, "truncated", "Pixel Data shorter than the image")


class Ingestor:
    """Validate and store instances for one node; used by the C-STORE and STOW-RS edges."""

    def __init__(
        self, store: InstanceStore, metrics: Metrics, max_instance_bytes: int | None = None
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.max_instance_bytes = max_instance_bytes

    def too_large(self) -> IngestError:
        return IngestError(
            OUT_OF_RESOURCES,
            "too_large",
            f"dataset over the {self.max_instance_bytes}-byte limit (max_instance_bytes)",
        )

    def validate(
        self,
        raw: bytes | memoryview,
        transfer_syntax_uid: str,
        *,
        expected_sop_class_uid: str | None = None,
        expected_sop_instance_uid: str | None = None,
        calling_aet: str | None = None,
        parse_sequences: bool = True,
    ) -> dict[str, Any]:
        """Decode and check an instance; returns the index fields or raises IngestError.
        ``parse_sequences``: see :func:`decode_complete`."""
        if self.max_instance_bytes is not None and len(raw) > self.max_instance_bytes:
            raise self.too_large()
        ds = decode_complete(
            raw, transfer_syntax_uid, self.max_instance_bytes, parse_sequences=parse_sequences
        )
        return self._fields(
            ds,
            transfer_syntax_uid,
            None,
            expected_sop_class_uid=expected_sop_class_uid,
            expected_sop_instance_uid=expected_sop_instance_uid,
            calling_aet=calling_aet,
        )

    def validate_file(
        self,
        path: Path,
        offset: int,
        transfer_syntax_uid: str,
        *,
        expected_sop_class_uid: str | None = None,
        expected_sop_instance_uid: str | None = None,
        calling_aet: str | None = None,
    ) -> dict[str, Any]:
        """:meth:`validate` for a dataset that starts at ``offset`` of a file (a spooled
        C-STORE); its bulk data is never read into memory (a deflated dataset is). The
        file is opened once, for its size and the walk."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if self.max_instance_bytes is not None and size - offset > self.max_instance_bytes:
                raise self.too_large()
            expected: dict[str, Any] = {
                "expected_sop_class_uid": expected_sop_class_uid,
                "expected_sop_instance_uid": expected_sop_instance_uid,
                "calling_aet": calling_aet,
            }
            if transfer_syntax_uid in DEFLATED_DATASET_SYNTAXES:
                with open(path, "rb") as f:
                    f.seek(offset)
                    return self.validate(f.read(), transfer_syntax_uid, **expected)
            ds, pixel_length = _decode_open_file(fd, size, path, offset, transfer_syntax_uid)
        finally:
            os.close(fd)
        return self._fields(ds, transfer_syntax_uid, pixel_length, **expected)

    def _fields(
        self,
        ds: Dataset,
        transfer_syntax_uid: str,
        pixel_length: int | None,
        *,
        expected_sop_class_uid: str | None,
        expected_sop_instance_uid: str | None,
        calling_aet: str | None,
    ) -> dict[str, Any]:
        try:
            fields = record_fields_from_dataset(ds, transfer_syntax_uid, calling_aet)
        except InvalidUID as exc:
            raise IngestError(DATASET_DOES_NOT_MATCH_SOP_CLASS, "bad_uid", str(exc)) from exc
        except Exception as exc:  # a value that does not convert (pydicom raises many types)
            raise _undecodable(exc, "bad element value") from exc
        if expected_sop_class_uid and fields["sop_class_uid"] != expected_sop_class_uid:
            raise IngestError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "sop_class_mismatch",
                "SOP Class UID differs from the request",
            )
        if expected_sop_instance_uid and fields["sop_instance_uid"] != expected_sop_instance_uid:
            raise IngestError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "sop_instance_mismatch",
                "SOP Instance UID differs from the request",
            )
        _check_native_pixel_length(ds, UID(transfer_syntax_uid), pixel_length)
        return fields

    def ingest(
        self,
        raw: bytes | memoryview,
        transfer_syntax_uid: str,
        *,
        source: str,
        expected_sop_class_uid: str | None = None,
        expected_sop_instance_uid: str | None = None,
        calling_aet: str | None = None,
        analyze: bool = True,
        log_refused: bool = True,
        parse_sequences: bool = True,
    ) -> IngestResult:
        """Validate, write, fsync and index one instance. Raises IngestError when refused.

        Returns only once the instance is durable and indexed: the caller may
        then acknowledge it. ``analyze=False`` is for objects the node derives itself
        (its SRs): they are stored and indexed but do not make the study due again.
        ``log_refused=False``: the caller logs refusals itself (STOW-RS, once per request).
        """
        started = time.perf_counter()
        try:
            fields = self.validate(
                raw,
                transfer_syntax_uid,
                expected_sop_class_uid=expected_sop_class_uid,
                expected_sop_instance_uid=expected_sop_instance_uid,
                calling_aet=calling_aet,
                parse_sequences=parse_sequences,
            )
            fields["analyze"] = analyze
            meta = self._meta(fields, transfer_syntax_uid, calling_aet)
            result = self._store(lambda: self.store.store(raw, meta, fields))
        except IngestError as exc:
            self.refused(exc, source, calling_aet, log=log_refused)
            raise
        return self._stored(fields, result, source, started)

    def ingest_built(
        self, raw: bytes | memoryview, *, source: str, analyze: bool = False
    ) -> IngestResult:
        """:meth:`ingest` for an object the node built itself (its SRs), ``raw`` being the
        dataset as pydicom wrote it in explicit VR little endian.

        Every check of :meth:`ingest` is made (the size limit, the complete decode with the
        strict walk of the bytes, the UIDs and index fields) except parsing each nested
        sequence again: in bytes pydicom wrote from a dataset, that the walk found well
        formed at every level, it finds nothing more, and for a 300-slice study's SR it
        was most of the time the store took.
        """
        return self.ingest(
            raw, ExplicitVRLittleEndian, source=source, analyze=analyze, parse_sequences=False
        )

    def ingest_file(
        self,
        path: Path,
        offset: int,
        transfer_syntax_uid: str,
        *,
        source: str,
        expected_sop_class_uid: str | None = None,
        expected_sop_instance_uid: str | None = None,
        calling_aet: str | None = None,
        synced: Callable[[], bool] | None = None,
        written: tuple[bytes, int] | None = None,
    ) -> IngestResult:
        """:meth:`ingest` for a spooled dataset: ``path`` holds it from ``offset`` on, after
        a File Meta Information group the store keeps if it is the one the instance
        needs (the file is then fsynced and renamed into place, not written again). The
        caller removes ``path`` if it is still there afterwards. ``synced``, ``written``:
        see :meth:`InstanceStore.store_file`."""
        started = time.perf_counter()
        try:
            fields = self.validate_file(
                path,
                offset,
                transfer_syntax_uid,
                expected_sop_class_uid=expected_sop_class_uid,
                expected_sop_instance_uid=expected_sop_instance_uid,
                calling_aet=calling_aet,
            )
            fields["analyze"] = True
            meta = self._meta(fields, transfer_syntax_uid, calling_aet)
            result = self._store(
                lambda: self.store.store_file(path, offset, meta, fields, synced, written=written)
            )
        except IngestError as exc:
            self.refused(exc, source, calling_aet)
            raise
        return self._stored(fields, result, source, started)

    @staticmethod
    def _meta(fields: dict[str, Any], transfer_syntax_uid: str, calling_aet: str | None) -> bytes:
        return file_meta_bytes(
            fields["sop_class_uid"], fields["sop_instance_uid"], transfer_syntax_uid, calling_aet
        )

    @staticmethod
    def _store(write: Callable[[], StoreResult]) -> StoreResult:
        """Run the store's write; its failures as the statuses of PS3.4 B.2.3."""
        try:
            return write()
        except InstanceConflict as exc:
            raise IngestError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "uid_conflict",
                "SOP Instance UID already stored in another study/series",
            ) from exc
        except OSError as exc:
            logger.error("store cannot write", extra={"errno": exc.errno, "error": exc.strerror})
            raise IngestError(
                OUT_OF_RESOURCES, "write_failed", f"out of resources: {exc.strerror or exc}"
            ) from exc
        except Exception as exc:  # the index (database) failed
            logger.exception("index cannot record the instance")
            raise IngestError(
                OUT_OF_RESOURCES, "index_failed", "out of resources: index unavailable"
            ) from exc

    def refused(
        self, exc: IngestError, source: str, calling_aet: str | None, *, log: bool = True
    ) -> None:
        """Count (and log) a refused instance; also for refusals made before validation
        (a C-STORE dataset over ``max_instance_bytes`` while it arrives)."""
        self.metrics.instances_rejected.labels(source=source, reason=exc.reason).inc()
        if not log:
            return
        logger.warning(
            "instance refused",
            extra={
                "status": f"0x{exc.status:04X}",
                "reason": exc.reason,
                "detail": exc.comment,
                "calling_aet": calling_aet,
                "source": source,
            },
        )

    def _stored(
        self, fields: dict[str, Any], result: StoreResult, source: str, started: float
    ) -> IngestResult:
        if result.duplicate:
            self.metrics.instances_duplicate.labels(source=source).inc()
        else:
            self.metrics.instances_received.labels(source=source).inc()
            self.metrics.bytes_received.labels(source=source).inc(result.record.size)
        self.metrics.store_seconds.observe(time.perf_counter() - started)
        return IngestResult(
            status=SUCCESS,
            sop_class_uid=fields["sop_class_uid"],
            sop_instance_uid=fields["sop_instance_uid"],
            study_uid=fields["study_uid"],
            duplicate=result.duplicate,
            size=result.record.size,
        )
