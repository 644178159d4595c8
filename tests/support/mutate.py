"""Deterministic mutations of encoded DICOM datasets, and an independent structure check.

Seeds are pydicom-data's test files and synthetic CT slices (ai_node.synth). Each
mutant is a pure function of (seed number, source): the same run sends the same bytes.
``well_formed`` walks a dataset's bytes without pydicom (iteratively, so any nesting
depth is fine) and says whether it is a structurally valid PS3.5 dataset: elements
contiguous, tags ascending, lengths inside their parent, sequences and items closed.
A receiver may store only what passes it.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ai_node.synth import StudySpec, generate_study
from tests.support.dicom_bytes import part10, pydicom_test_file

PYDICOM_DATA_SEEDS = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "JPEG2000.dcm",
    "SC_rgb.dcm",
    "SC_rgb_rle.dcm",
    "emri_small.dcm",
    "MR_small_RLE.dcm",
    "image_dfl.dcm",
    "liver.dcm",
)
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
     b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class Sample:
    """One source instance: its dataset bytes as encoded in ``transfer_syntax``."""

    name: str
    sop_class_uid: str
    transfer_syntax: str
    dataset: bytes


@dataclass(frozen=True)
class Mutant:
    number: int
    kind: str
    source: str
    sop_class_uid: str
    sop_instance_uid: str  # what the request announces
    transfer_syntax: str  # what the request announces
    dataset: bytes  # the dataset bytes sent (after the File Meta Information)

    def part10(self) -> bytes:
        return part10(self.dataset, self.sop_class_uid, self.sop_instance_uid, self.transfer_syntax)


def encode(ds, ts: str) -> bytes:
    syntax = UID(ts)
    fp = DicomBytesIO()
    fp.is_little_endian = syntax.is_little_endian
    fp.is_implicit_VR = syntax.is_implicit_VR
    write_dataset(fp, ds)
    raw = fp.getvalue()
    if ts == DeflatedExplicitVRLittleEndian:
        c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        raw = c.compress(raw) + c.flush()
    return raw


def load_samples(synthetic_slices: int = 4) -> list[Sample]:
    """pydicom-data seeds (their own syntax) and small synthetic CT slices."""
    samples = []
    for name in PYDICOM_DATA_SEEDS:
        ds = dcmread(pydicom_test_file(name))
        ts = str(ds.file_meta.TransferSyntaxUID)
        samples.append(Sample(name, str(ds.SOPClassUID), ts, encode(ds, ts)))
    spec = StudySpec(region="chest", slices=synthetic_slices, seed=90, rows=64, columns=64,
                     pixel_spacing_mm=5.6)
    _study, datasets = generate_study(spec)
    for i, synthetic in enumerate(datasets):
        ts = UNCOMPRESSED[i % 3]
        samples.append(
            Sample(f"synth-{i}", str(synthetic.SOPClassUID), ts, encode(synthetic, ts))
        )
    return samples


# -- an independent structure walker -------------------------------------------------


class Malformed(ValueError):
    pass


def _reader(raw: bytes, little: bool) -> tuple[Callable[[int], int], Callable[[int], int]]:
    e = "<" if little else ">"

    def u16(at: int) -> int:
        if at + 2 > len(raw):
            raise Malformed("cut")
        return int(struct.unpack_from(e + "H", raw, at)[0])

    def u32(at: int) -> int:
        if at + 4 > len(raw):
            raise Malformed("cut")
        return int(struct.unpack_from(e + "I", raw, at)[0])

    return u16, u32


def _tag(u16: Callable[[int], int], at: int) -> int:
    return (u16(at) << 16) | u16(at + 2)


def _implicit_vr(tag: int) -> bytes:
    try:
        return str(dictionary_VR(tag)).encode()[:2]
    except KeyError:
        return b"UN"


def well_formed(dataset: bytes, transfer_syntax: str) -> bool:
    """True when the bytes are a complete, structurally valid dataset (PS3.5 7.1, 7.5)."""
    try:
        syntax = UID(transfer_syntax)
        raw = dataset
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            d = zlib.decompressobj(-zlib.MAX_WBITS)
            raw = d.decompress(dataset)
            if d.unused_data or not d.eof:
                return False
        _walk(raw, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_compressed)
    except (Malformed, zlib.error, struct.error):
        return False
    return True


def _walk(raw: bytes, implicit: bool, little: bool, encapsulated: bool) -> None:
    u16, u32 = _reader(raw, little)
    # A frame is one dataset level: (end offset or None for undefined, last tag).
    stack: list[list] = [[len(raw), -1, "dataset"]]
    pos = 0
    if not raw:
        raise Malformed("empty")
    while stack:
        frame = stack[-1]
        end, last_tag, kind = frame
        if end is not None and pos == end:
            stack.pop()
            if kind == "item" and stack and stack[-1][2] == "sequence":
                pass
            continue
        if end is not None and pos > end:
            raise Malformed("element overruns its parent")
        tag = _tag(u16, pos)
        if kind == "sequence":  # expect an item or the sequence delimiter
            length = u32(pos + 4)
            if tag == SEQ_END and end is None:
                if length != 0:
                    raise Malformed("delimiter length")
                pos += 8
                stack.pop()
                continue
            if tag != ITEM:
                raise Malformed("not an item in a sequence")
            pos += 8
            if length != UNDEFINED and pos + length > (end if end is not None else len(raw)):
                raise Malformed("item overruns")
            stack.append([pos + length if length != UNDEFINED else None, -1, "item"])
            continue
        if kind == "fragments":
            length = u32(pos + 4)
            if tag == SEQ_END:
                if length != 0:
                    raise Malformed("delimiter length")
                pos += 8
                stack.pop()
                continue
            if tag != ITEM or length == UNDEFINED:
                raise Malformed("bad fragment")
            pos += 8 + length
            if pos > len(raw):
                raise Malformed("fragment cut")
            continue
        # a dataset or an item's dataset
        if tag == ITEM_END and kind == "item" and end is None:
            if u32(pos + 4) != 0:
                raise Malformed("delimiter length")
            pos += 8
            stack.pop()
            continue
        if tag >> 16 == 0xFFFE:
            raise Malformed("delimiter out of place")
        if tag <= last_tag:
            raise Malformed("tags not ascending")
        frame[1] = tag
        if implicit:
            vr = _implicit_vr(tag)
            length = u32(pos + 4)
            pos += 8
        else:
            if pos + 6 > len(raw):
                raise Malformed("cut")
            vr = raw[pos + 4 : pos + 6]
            if vr in LONG_VRS:
                if raw[pos + 6 : pos + 8] != b"\0\0":
                    raise Malformed("reserved bytes")
                length = u32(pos + 8)
                pos += 12
            elif vr in SHORT_VRS:
                length = u16(pos + 6)
                pos += 8
            else:
                raise Malformed(f"unknown VR {vr!r}")
        limit = end if end is not None else len(raw)
        if length == UNDEFINED:
            if vr in (b"SQ", b"UN"):
                stack.append([None, -1, "sequence"])
            elif tag == PIXEL_DATA and encapsulated and vr in (b"OB", b"OW"):
                stack.append([None, -1, "fragments"])
            else:
                raise Malformed("undefined length on a non-sequence")
            continue
        if pos + length > limit:
            raise Malformed("value overruns")
        if vr == b"SQ":
            stack.append([pos + length, -1, "sequence"])
        pos += length
    if pos != len(raw):
        raise Malformed("trailing bytes")


# -- element positions (top level) ---------------------------------------------------


@dataclass(frozen=True)
class Element:
    header_at: int
    tag: int
    vr_at: int | None  # explicit VR only
    length_at: int
    length_size: int
    value_at: int
    length: int


def top_level(raw: bytes, ts: str) -> list[Element]:
    """The top-level elements of an uncompressed-syntax dataset, via pydicom."""
    from pydicom.filereader import data_element_generator

    syntax = UID(ts)
    out = []
    fp = BytesIO(raw)
    for elem in data_element_generator(fp, syntax.is_implicit_VR, syntax.is_little_endian):
        if not isinstance(elem, RawDataElement):  # an undefined-length sequence, already parsed
            at = elem.file_tell
            assert at is not None
            if syntax.is_implicit_VR:
                out.append(Element(at, elem.tag, None, at + 4, 4, at + 8, UNDEFINED))
            else:
                out.append(Element(at, elem.tag, at + 4, at + 8, 4, at + 12, UNDEFINED))
            continue
        tell = elem.value_tell
        if syntax.is_implicit_VR:
            out.append(Element(tell - 8, elem.tag, None, tell - 4, 4, tell, elem.length))
        elif raw[tell - 8 : tell - 6] in LONG_VRS and raw[tell - 6 : tell - 4] == b"\0\0":
            out.append(Element(tell - 12, elem.tag, tell - 8, tell - 4, 4, tell, elem.length))
        else:
            out.append(Element(tell - 8, elem.tag, tell - 4, tell - 2, 2, tell, elem.length))
    return out


# -- mutators --------------------------------------------------------------------------


def _pack(value: int, size: int, little: bool) -> bytes:
    return value.to_bytes(size, "little" if little else "big")


def _bit_flips(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    buf = bytearray(raw)
    for _ in range(rng.randint(1, 16)):
        at = rng.randrange(len(buf))
        buf[at] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _header_bit_flips(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    """Flips among the first elements' headers, where structure lives."""
    buf = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(min(len(buf), 600))
        buf[at] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _truncate(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    return raw[: rng.randrange(len(raw))]


def _truncate_in_header(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    elem = rng.choice(top_level(raw, sample.transfer_syntax))
    return raw[: elem.header_at + rng.randint(1, elem.value_at - elem.header_at - 1)]


def _trailing_garbage(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    return raw + rng.randbytes(rng.choice((1, 2, 7, 8, 13, 200)))


def _wrong_length(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    elem = rng.choice(top_level(raw, sample.transfer_syntax))
    little = UID(sample.transfer_syntax).is_little_endian
    limit = (1 << (8 * elem.length_size)) - 1
    delta = rng.choice((-4, -2, -1, 1, 2, 3, 4, 100, -100))
    new = min(max(0, (elem.length if elem.length != UNDEFINED else 0) + delta), limit - 1)
    return raw[: elem.length_at] + _pack(new, elem.length_size, little) + raw[
        elem.length_at + elem.length_size :]


def _huge_length(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    elems = top_level(raw, sample.transfer_syntax)
    elem = rng.choice([e for e in elems if e.length_size == 4] or elems)
    little = UID(sample.transfer_syntax).is_little_endian
    new = rng.choice((0xFFFFFFFE, 0xFFFFFFF0, 0x7FFFFFFF, 0x80000000, 0x10000000)) \
        if elem.length_size == 4 else 0xFFFF
    if rng.random() < 0.3:
        new = UNDEFINED if elem.length_size == 4 else 0xFFFF
    return raw[: elem.length_at] + _pack(new, elem.length_size, little) + raw[
        elem.length_at + elem.length_size :]


_BAD_VRS = (b"??", b"\0\0", b"ob", b"XX", b"SQ", b"UN", b"OB", b"US", b"UT", b"  ", b"\xff\xff")


def _bad_vr(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    elems = [e for e in top_level(raw, sample.transfer_syntax) if e.vr_at is not None]
    if not elems:  # implicit VR: no VR on the wire; damage a tag's element number instead
        elem = rng.choice(top_level(raw, sample.transfer_syntax))
        return raw[: elem.header_at + 2] + rng.randbytes(2) + raw[elem.header_at + 4 :]
    elem = rng.choice(elems)
    assert elem.vr_at is not None
    return raw[: elem.vr_at] + rng.choice(_BAD_VRS) + raw[elem.vr_at + 2 :]


def _swap_elements(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    """Two adjacent elements in the wrong order, or one element twice."""
    elems = top_level(raw, sample.transfer_syntax)
    i = rng.randrange(len(elems) - 1)
    a, b = elems[i], elems[i + 1]
    a_bytes, b_bytes = raw[a.header_at : b.header_at], raw[b.header_at : b.value_at + b.length]
    if b.length == UNDEFINED:
        return raw + raw[a.header_at : b.header_at]  # a duplicate after the end
    if rng.random() < 0.5:
        return raw[: a.header_at] + b_bytes + a_bytes + raw[b.value_at + b.length :]
    return raw[: b.header_at] + a_bytes + raw[b.header_at :]


def _delimiter_in_place(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    little = UID(sample.transfer_syntax).is_little_endian
    elem = rng.choice(top_level(raw, sample.transfer_syntax))
    tag = rng.choice((ITEM, ITEM_END, SEQ_END))
    header = _pack(tag >> 16, 2, little) + _pack(tag & 0xFFFF, 2, little)
    header += _pack(rng.choice((0, 8, UNDEFINED)), 4, little)
    return raw[: elem.header_at] + header + raw[elem.header_at :]


def _deep_nesting(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    """A Referenced Image Sequence nested ``depth`` deep (undefined or defined lengths)."""
    syntax = UID(sample.transfer_syntax)
    little, implicit = syntax.is_little_endian, syntax.is_implicit_VR
    depth = rng.choice((2, 8, 40, 120, 400, 3000, 20000))
    defined = rng.random() < 0.5 and depth <= 400
    tag = 0x00081140

    def tag_bytes(t: int) -> bytes:
        return _pack(t >> 16, 2, little) + _pack(t & 0xFFFF, 2, little)

    def seq_header(length: int) -> bytes:
        if implicit:
            return tag_bytes(tag) + _pack(length, 4, little)
        return tag_bytes(tag) + b"SQ\0\0" + _pack(length, 4, little)

    if defined:
        nested = b""
        for _ in range(depth):  # from the innermost item outwards
            item = tag_bytes(ITEM) + _pack(len(nested), 4, little) + nested
            nested = seq_header(len(item)) + item
    else:
        open_ = seq_header(UNDEFINED) + tag_bytes(ITEM) + _pack(UNDEFINED, 4, little)
        close = tag_bytes(ITEM_END) + _pack(0, 4, little) + tag_bytes(SEQ_END) + _pack(0, 4, little)
        nested = open_ * depth + close * depth
    elems = top_level(raw, sample.transfer_syntax)
    after = [e for e in elems if e.tag > tag]
    if any(e.tag == tag for e in elems):
        return raw + nested  # out of order then: also a mutant
    at = after[0].header_at if after else len(raw)
    return raw[:at] + nested + raw[at:]


def _wrong_syntax(rng: random.Random, raw: bytes, sample: Sample) -> bytes:
    return raw  # the dataset is intact; the announced syntax changes (see ``mutants``)


MUTATORS: dict[str, Callable[[random.Random, bytes, Sample], bytes]] = {
    "bit_flips": _bit_flips,
    "header_bit_flips": _header_bit_flips,
    "truncate": _truncate,
    "truncate_in_header": _truncate_in_header,
    "trailing_garbage": _trailing_garbage,
    "wrong_length": _wrong_length,
    "huge_length": _huge_length,
    "bad_vr": _bad_vr,
    "swap_or_duplicate": _swap_elements,
    "stray_delimiter": _delimiter_in_place,
    "deep_nesting": _deep_nesting,
    "wrong_syntax": _wrong_syntax,
}


def _fresh_uid(rng: random.Random) -> str:
    return f"2.25.{rng.getrandbits(120)}"


def _with_uid(sample: Sample, uid: str) -> bytes:
    """The sample re-encoded with a new SOP Instance UID (so every mutant is a new instance)."""
    from pydicom.filereader import read_dataset

    syntax = UID(sample.transfer_syntax)
    raw = sample.dataset
    if sample.transfer_syntax == DeflatedExplicitVRLittleEndian:
        raw = zlib.decompress(raw, -zlib.MAX_WBITS)
    ds = read_dataset(BytesIO(raw), syntax.is_implicit_VR, syntax.is_little_endian)
    ds.SOPInstanceUID = uid
    return encode(ds, sample.transfer_syntax)


def mutants(samples: list[Sample], count: int, seed: int) -> list[Mutant]:
    """``count`` mutants, cycling through the mutators; deterministic by ``seed``."""
    rng = random.Random(seed)
    kinds = sorted(MUTATORS)
    out = []
    for n in range(count):
        kind = kinds[n % len(kinds)]
        sample = samples[rng.randrange(len(samples))]
        uid = _fresh_uid(rng)
        ts = sample.transfer_syntax
        structural = kind not in ("bit_flips", "trailing_garbage", "truncate", "wrong_syntax")
        if structural and ts not in UNCOMPRESSED:
            # element surgery needs the plain encoding: re-encode in an uncompressed syntax
            # when the source's own syntax is deflated; compressed pixel data stays as is.
            if ts == DeflatedExplicitVRLittleEndian:
                ts = ExplicitVRLittleEndian
        source = Sample(sample.name, sample.sop_class_uid, ts, b"")
        raw = _with_uid(sample, uid) if ts == sample.transfer_syntax else _reencode(sample, uid, ts)
        data = MUTATORS[kind](random.Random(rng.getrandbits(64)), raw, source)
        announced = ts
        if kind == "wrong_syntax":
            announced = rng.choice([s for s in (*UNCOMPRESSED, DeflatedExplicitVRLittleEndian)
                                    if s != ts])
        out.append(Mutant(n, kind, sample.name, sample.sop_class_uid, uid, announced, data))
    return out


def _reencode(sample: Sample, uid: str, ts: str) -> bytes:
    from pydicom.filereader import read_dataset

    syntax = UID(sample.transfer_syntax)
    raw = zlib.decompress(sample.dataset, -zlib.MAX_WBITS)
    ds = read_dataset(BytesIO(raw), syntax.is_implicit_VR, syntax.is_little_endian)
    ds.SOPInstanceUID = uid
    return encode(ds, ts)


def write_mutant(mutant: Mutant, path: Path) -> Path:
    path.write_bytes(mutant.part10())
    return path
