"""Small SCU helpers behind ``radnode echo`` and ``radnode send``.

``send`` transmits each file's dataset exactly as encoded on disk (pynetdicom
reads it from the path), proposing one presentation context per SOP class and
transfer syntax found in the files. Both can run over DICOM TLS (PS3.15 B.9):
pass a client context from :func:`radnode_core.tls.client_context`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255


class AssociationFailed(ConnectionError):
    pass


def _tls_args(tls: ssl.SSLContext | None, host: str) -> tuple[ssl.SSLContext, str] | None:
    return (tls, host) if tls is not None else None


def echo(
    host: str,
    port: int,
    calling_aet: str,
    called_aet: str,
    timeout: float = 30,
    tls: ssl.SSLContext | None = None,
) -> int:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called_aet, tls_args=_tls_args(tls, host))
    if not assoc.is_established:
        raise AssociationFailed(f"association with {called_aet}@{host}:{port} failed")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    return int(status.Status) if "Status" in status else 0xFFFF


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Files under the given paths (folders recursively), sorted; DICOMDIRs skipped."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.is_file())
        elif path.is_file():
            found.append(path)
    return [p for p in found if p.name.upper() != "DICOMDIR" and not p.name.endswith(".json")]


def send_files(
    files: list[Path],
    host: str,
    port: int,
    calling_aet: str,
    called_aet: str,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 60,
    tls: ssl.SSLContext | None = None,
) -> dict[Path, int]:
    """C-STORE each file over one association; returns the status per file.

    A file that is not DICOM gets status 0xFFFF (not sent).
    """
    results: dict[Path, int] = {}
    contexts: dict[tuple[str, str], list[Path]] = {}
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            key = (str(ds.file_meta.MediaStorageSOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        except (InvalidDicomError, AttributeError, OSError) as exc:
            logger.warning(
                "not a DICOM file, skipped", extra={"path": str(path), "error": str(exc)}
            )
            results[path] = 0xFFFF
            continue
        contexts.setdefault(key, []).append(path)
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} SOP class/transfer syntax pairs exceed {MAX_CONTEXTS}")
    if not contexts:
        return results

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, transfer_syntax in contexts:
        ae.add_requested_context(sop_class, transfer_syntax)
    assoc = ae.associate(host, port, ae_title=called_aet, tls_args=_tls_args(tls, host))
    if not assoc.is_established:
        raise AssociationFailed(f"association with {called_aet}@{host}:{port} failed")
    done = 0
    try:
        for paths in contexts.values():
            for path in paths:
                status = assoc.send_c_store(path)
                results[path] = int(status.Status) if "Status" in status else 0xFFFF
                done += 1
                if progress:
                    progress(done, len(files))
    finally:
        if assoc.is_established:
            assoc.release()
    return results
