"""The SCP's Application Entity: presentation contexts, limits and the server.

Every storage SOP class is accepted: the ones pynetdicom knows with every transfer syntax it
knows (uncompressed, deflated, big endian, JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG...),
and, through pynetdicom's unrestricted storage service, retired, private and newer SOP
classes too (a CT's private raw-data class is still an instance the site wants kept).
Datasets are stored as received, spooled to disk as they arrive
(:mod:`dimse_scp.upper_layer`). With Query/Retrieve on, the AE also accepts the Patient Root
and Study Root FIND, MOVE and GET SOP classes, and accepts the SCU role for every storage
SOP class besides the SCP role, so a C-GET's requestor can take the Storage SCP role
(SCP/SCU Role Selection, PS3.7 D.3.3.4).
"""

from __future__ import annotations

import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, _config
from pynetdicom._globals import ALL_TRANSFER_SYNTAXES
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.utils import make_target

from dimse_scp.handlers import StorageHandlers
from dimse_scp.identifier import MODELS
from dimse_scp.negotiation import GuardedAssociationServer, NegotiationGuard, lift_association_limit
from dimse_scp.query_retrieve import QueryRetrieveHandlers
from dimse_scp.tls import TlsAssociationServer
from dimse_scp.upper_layer import SpoolSettings
from radnode_core.settings import Settings
from radnode_core.tls import server_context

logger = logging.getLogger(__name__)

# Identifiers may carry patient names; pynetdicom must not log them.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# Accept any storage SOP class proposed, not only those pynetdicom lists.
_config.UNRESTRICTED_STORAGE_SERVICE = True


# The syntaxes pynetdicom can negotiate that pydicom can also decode (validation needs it).
TRANSFER_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES if UID(ts).is_transfer_syntax]
# Implicit, Explicit, Deflated Explicit VR Little Endian, Explicit VR Big Endian.
UNCOMPRESSED = TRANSFER_SYNTAXES[:4]


def build_ae(settings: Settings, query_retrieve: bool = False) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    # max_associations is counted by the handlers over admitted associations only.
    lift_association_limit(ae)
    ae.network_timeout = settings.network_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.acse_timeout = settings.acse_timeout_s
    # The called-AE check is done by AccessPolicy (with a metric and a log line).
    ae.require_called_aet = False
    # The SCU role is only taken where a requestor proposes the SCP role (a C-GET).
    roles = {"scu_role": True, "scp_role": True} if query_retrieve else {}
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), TRANSFER_SYNTAXES, **roles)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:3])
    if query_retrieve:
        for sop_class in MODELS:
            ae.add_supported_context(sop_class, UNCOMPRESSED)
    return ae


SYNC_AHEAD_THREADS = 4
"""Spool files fsynced at once, across the process's associations (each waits on its own
C-STORE's, so more help only where more associations store at the same moment)."""


def _started_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads are all running before it is returned (the executor
    starts them one per submission otherwise): the process's thread count stays the same
    from then on, whatever the load."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
    started = threading.Barrier(threads + 1)
    for _ in range(threads):
        pool.submit(started.wait)
    started.wait()
    return pool


class DicomServer:
    """The running SCP (one thread per association): a plain DICOM port, a DICOM TLS port
    (PS3.15 B.9), or both, serving the same AE and handlers: storage, and Query/Retrieve
    when ``query_retrieve`` handlers are given.

    With ``channels`` (a receiver's ends, one per port: ``dicom``, ``tls``) it listens
    on neither port itself: a dispatcher process accepts on them and hands it connections
    (:mod:`dimse_scp.handoff`), so that several receiver processes serve one port
    (``scp_processes``)."""

    def __init__(
        self,
        settings: Settings,
        handlers: StorageHandlers,
        query_retrieve: QueryRetrieveHandlers | None = None,
        *,
        channels: dict[str, socket.socket] | None = None,
    ) -> None:
        self.settings = settings
        self.channels = channels or {}
        self.handlers = handlers
        self.query_retrieve = query_retrieve
        self.ae = build_ae(settings, query_retrieve is not None)
        self.guard = NegotiationGuard(
            settings.association_request_timeout_s,
            settings.max_negotiating_per_peer,
            handlers.metrics,
            max_waiting_per_peer=settings.max_waiting_per_peer,
            log_interval_s=settings.auth_failure_interval_s,
        )
        self._server: GuardedAssociationServer | None = None
        self._tls_server: TlsAssociationServer | None = None
        self._sync_ahead: ThreadPoolExecutor | None = None

    @property
    def port(self) -> int:
        """The plain DICOM port."""
        if self._server is None:
            raise RuntimeError("plain DICOM port not started")
        return int(self._server.server_address[1])

    @property
    def tls_port(self) -> int:
        if self._tls_server is None:
            raise RuntimeError("DICOM TLS port not started")
        return int(self._tls_server.server_address[1])

    def start(self) -> None:
        s = self.settings
        handlers = self.handlers.evt_handlers()
        if self.query_retrieve is not None:
            handlers += self.query_retrieve.evt_handlers()
        if s.dicom_plain:
            server = self.ae.make_server(
                (s.host, s.dicom_port),
                evt_handlers=handlers,  # type: ignore[arg-type]
                server_class=GuardedAssociationServer,
                guard=self.guard,
                spool=self._spool_settings(),
                on_pdu_refused=self.handlers.pdu_refused,
                channel=self.channels.get("dicom"),
            )
            assert isinstance(server, GuardedAssociationServer)
            self._serve(server, "radnode-dicom")
            self._server = server
            logger.info(
                self._listening("DICOM SCP"),
                extra={"aet": s.ae_title, "host": s.host, "port": self.port},
            )
        if s.dicom_tls_port is not None:
            self._start_tls(handlers)

    def _start_tls(self, handlers: list[tuple[object, object]]) -> None:
        s = self.settings
        assert s.dicom_tls_port is not None and s.tls_cert_file and s.tls_key_file
        context = server_context(
            s.tls_cert_file, s.tls_key_file, s.tls_ca_file, s.tls_require_client_cert
        )
        server = self.ae.make_server(
            (s.host, s.dicom_tls_port),
            ssl_context=context,
            evt_handlers=handlers,  # type: ignore[arg-type]
            server_class=TlsAssociationServer,
            guard=self.guard,
            spool=self._spool_settings(),
            on_pdu_refused=self.handlers.pdu_refused,
            channel=self.channels.get("tls"),
        )
        assert isinstance(server, TlsAssociationServer)
        server.handshake_timeout_s = s.tls_handshake_timeout_s
        server.on_handshake_failed = self.handlers.tls_refused
        self._serve(server, "radnode-dicom-tls")
        self._tls_server = server
        logger.info(
            self._listening("DICOM TLS SCP"),
            extra={
                "aet": s.ae_title,
                "host": s.host,
                "port": self.tls_port,
                "client_cert": "required" if s.tls_require_client_cert else "optional",
            },
        )

    def _listening(self, what: str) -> str:
        if self.channels:
            return f"{what} serving the connections its dispatcher hands over"
        return f"{what} listening"

    def _spool_settings(self) -> SpoolSettings:
        """C-STORE datasets are spooled where the store keeps its temp files, so a valid
        one is renamed into place, never copied."""
        store = self.handlers.ingestor.store
        if store.fsync and self._sync_ahead is None:
            self._sync_ahead = _started_pool(SYNC_AHEAD_THREADS, "radnode-sync")
        return SpoolSettings(store.tmp_dir, self.settings.max_instance_bytes, self._sync_ahead)

    def _serve(self, server: GuardedAssociationServer, name: str) -> None:
        """Accept connections on a thread of its own, as pynetdicom's non-blocking start."""
        threading.Thread(target=make_target(server.serve_forever), name=name, daemon=True).start()
        self.ae._servers.append(server)

    def stop(self) -> None:
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
        self._server = self._tls_server = None
        self.guard.stop()
        if self._sync_ahead is not None:
            self._sync_ahead.shutdown(wait=True)  # every begun fsync finishes
            self._sync_ahead = None
