"""Clients of one PACS peer, built from its settings: DICOMweb (dicomweb-client),
Orthanc REST (orthanc-api-client), with its credentials and TLS options, and a
connection check that says in words what is wrong (for the log and ``/readyz``)."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from orthanc_api_client import OrthancApiClient
from orthanc_api_client import exceptions as orthanc_errors

from pacs_link.outbox import all_states, set_state
from pacs_link.scu import echo
from radnode_core.index import Index
from radnode_core.settings import PacsPeer
from radnode_core.tls import client_context

logger = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 30.0


class PeerSession(requests.Session):
    """A requests session whose TLS verification is the peer's, whatever the environment.

    requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override ``Session.verify``
    (the environment is merged per request, psf/requests#3829): a peer's own
    ``tls_ca_file`` would be ignored wherever those are set, as on many servers.
    """

    def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        merged: dict[str, Any] = super().merge_environment_settings(*args, **kwargs)
        merged["verify"] = self.verify
        return merged


def session(peer: PacsPeer) -> requests.Session:
    s = PeerSession()
    if peer.username and peer.password is not None:
        s.auth = (peer.username, peer.password.get_secret_value())
    s.verify = str(peer.tls_ca_file) if peer.tls_ca_file and peer.tls_verify else peer.tls_verify
    if peer.tls_cert_file:
        s.cert = (
            (str(peer.tls_cert_file), str(peer.tls_key_file))
            if peer.tls_key_file
            else str(peer.tls_cert_file)
        )
    return s


def dicomweb(peer: PacsPeer) -> DICOMwebClient:
    if not peer.dicomweb_url:
        raise ValueError(f"PACS peer {peer.name} has no dicomweb_url")
    web = DICOMwebClient(
        url=peer.dicomweb_url.rstrip("/"), session=session(peer), timeout=(10, 300)
    )
    # Its own retries (5 attempts, exponential, ~30 s) would hold the sender on one peer;
    # the outbox retries with its backoff and records each failure.
    web.set_http_retry_params(retry=False)
    return web


def orthanc(peer: PacsPeer) -> OrthancApiClient:
    url = peer.orthanc_url
    if not url:
        raise ValueError(f"PACS peer {peer.name} has neither rest_url nor dicomweb_url")
    password = peer.password.get_secret_value() if peer.password is not None else None
    client = OrthancApiClient(url, user=peer.username, pwd=password)
    # orthanc-api-client has no TLS options: it gets our session (credentials, CA, client
    # certificate); its own retries are not needed, the follower retries with backoff.
    client._http_session = session(peer)
    return client


def describe(peer: PacsPeer, exc: BaseException) -> str:
    """One line for an admin: what failed and what to check."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    status = status or getattr(exc, "http_status_code", None)
    where = peer.dicomweb_url or peer.orthanc_url or f"{peer.host}:{peer.port}"
    if status in (401, 403) or isinstance(exc, orthanc_errors.NotAuthorized):
        return (
            f"PACS peer {peer.name}: authentication refused (HTTP {status or 401}) at {where}; "
            "check username/password (pacs_peers) and the PACS's registered users"
        )
    if isinstance(exc, requests.exceptions.SSLError | ssl.SSLError):
        return f"PACS peer {peer.name}: TLS failed at {where}: {exc}; check tls_ca_file"
    if isinstance(exc, requests.ConnectionError | orthanc_errors.ConnectionError | ConnectionError):
        return f"PACS peer {peer.name}: unreachable at {where} ({type(exc).__name__})"
    if isinstance(exc, requests.Timeout | orthanc_errors.TimeoutError | TimeoutError):
        return f"PACS peer {peer.name}: no answer in time from {where}"
    if status:
        return f"PACS peer {peer.name}: HTTP {status} from {where}"
    return f"PACS peer {peer.name}: {type(exc).__name__}: {exc}"[:500]


def check(peer: PacsPeer) -> str | None:
    """None when the peer answers an authenticated request, else what is wrong."""
    try:
        if peer.dicomweb_url:
            response = session(peer).get(
                f"{peer.dicomweb_url.rstrip('/')}/studies",
                params={"limit": "1"},
                headers={"Accept": "application/dicom+json"},
                timeout=10,
            )
            response.raise_for_status()
        elif peer.host and peer.port:
            tls = None
            if peer.dicom_tls:
                tls = client_context(
                    peer.tls_ca_file, peer.tls_cert_file, peer.tls_key_file, peer.tls_verify
                )
            status = echo(peer.host, peer.port, "RADNODE", peer.ae_title, timeout=10, tls=tls)
            if status != 0:
                return f"PACS peer {peer.name}: C-ECHO status 0x{status:04X}"
        return None
    except Exception as exc:  # noqa: BLE001 - every failure becomes a readable status
        return describe(peer, exc)


class PeerStatus:
    """The last connection outcome per peer, kept in the index for ``/readyz`` (the API
    may run in another process than the sender and the follower)."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._last: dict[str, str | None] = {}

    def record(self, peer: PacsPeer, error: str | None) -> None:
        if self._last.get(peer.name, "unset") == error:
            return
        if error is None:
            logger.info("PACS peer reachable", extra={"peer": peer.name})
        else:
            logger.error(error, extra={"peer": peer.name})
        set_state(self.index, peer.name, "status", {"ok": error is None, "error": error})
        self._last[peer.name] = error


def readiness(index: Index, peers: list[PacsPeer]) -> dict[str, Any]:
    """Per configured peer: ok, error (None when fine), when last checked."""

    states = all_states(index, "status")
    out: dict[str, Any] = {}
    for peer in peers:
        state = states.get(peer.name)
        if state is None:
            out[peer.name] = {"ok": False, "error": "not checked yet", "updated_at": None}
        else:
            out[peer.name] = state
    return out
