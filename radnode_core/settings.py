"""One settings object for every radnode process.

Values come, highest precedence first, from keyword arguments (the CLI's
flags), ``RADNODE_*`` environment variables, an optional TOML config file
(``--config`` or ``RADNODE_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DuplicatePolicy = Literal["keep_first", "replace"]


class PacsPeer(BaseModel):
    """One PACS radnode sends results to and/or learns new studies from (Orthanc here).

    DICOMweb (``dicomweb_url``: STOW-RS out) and/or DIMSE
    (``ae_title``/``host``/``port``: C-STORE out). ``rest_url`` is Orthanc's REST root:
    its ``/changes`` feed tells radnode of new instances and stable studies, which the
    follower fetches from it.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Short name (logs, API).")
    dicomweb_url: str | None = Field(
        None, description="DICOMweb root, e.g. http://orthanc:8042/dicom-web."
    )
    rest_url: str | None = Field(
        None, description="Orthanc REST root (default: dicomweb_url without /dicom-web)."
    )
    username: str | None = Field(None, description="HTTP basic auth user.")
    password: SecretStr | None = Field(None, description="HTTP basic auth password.")
    ae_title: str = Field("ORTHANC", min_length=1, max_length=16, description="PACS AE title.")
    host: str | None = Field(None, description="PACS DICOM host (C-STORE delivery).")
    port: int | None = Field(None, ge=1, le=65535, description="PACS DICOM port.")
    delivery: Literal["stow", "cstore"] = Field(
        "stow", description="How results (and forwarded originals) go out."
    )
    forward_originals: bool = Field(
        True, description="Also send the instances radnode received (not those from this PACS)."
    )
    follow_changes: bool = Field(
        False, description="Follow the PACS's /changes feed and analyse its stable studies."
    )
    prefetch: bool = Field(
        True,
        description="While following the feed, fetch each new instance as it arrives, so a "
        "study is already here when the PACS declares it stable.",
    )
    fetch_workers: int = Field(
        8, ge=1, le=16, description="Instances fetched from this PACS at the same time."
    )
    quiet_s: float = Field(
        1.0,
        gt=0,
        description="A prefetched study with no new instance in the feed for this long is "
        "complete, unless the PACS's StableStudy comes first.",
    )
    tls_verify: bool = Field(True, description="Verify the HTTPS server certificate.")
    tls_ca_file: Path | None = Field(None, description="CA bundle for HTTPS and DICOM TLS.")
    tls_cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    tls_key_file: Path | None = Field(None, description="Client certificate's private key.")
    dicom_tls: bool = Field(False, description="C-STORE over TLS (PS3.15 B.1).")

    @property
    def orthanc_url(self) -> str | None:
        if self.rest_url:
            return self.rest_url.rstrip("/")
        if self.dicomweb_url:
            return self.dicomweb_url.rstrip("/").removesuffix("/dicom-web")
        return None


class MoveDestination(BaseModel):
    """An AE that a C-MOVE may name as its Move Destination (PS3.4 C.4.2.1.4.1): radnode
    sends the matching instances there by C-STORE, optionally over DICOM TLS."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(
        min_length=1, max_length=16, description="Its AE title (what a C-MOVE names)."
    )
    host: str = Field(min_length=1, description="Its host name or address.")
    port: int = Field(ge=1, le=65535, description="Its DICOM port.")
    tls: bool = Field(
        False,
        description="Connect over DICOM TLS (PS3.15 B.9): the destination is verified against "
        "tls_ca_file, and radnode presents tls_cert_file when asked.",
    )


class RoutingRule(BaseModel):
    """Which PACS peers get a study's result (``pacs_link.routing``): the rule's ``peers``,
    when every condition it sets holds for the result."""

    model_config = ConfigDict(extra="forbid")

    peers: list[str] = Field(min_length=1, description="Names of pacs_peers to send to.")
    model: str | None = Field(
        None,
        description='Prefix of a model that made the result, as "name/version" '
        '(e.g. "finding/1.", as `radnode model list` names it); unset: any.',
    )
    labels: list[str] = Field(
        default_factory=list, description='Result labels that match (e.g. ["lesion"]); empty: any.'
    )
    min_score: float | None = Field(
        None, ge=0, le=1, description="Lowest study score that matches; unset: any (or none)."
    )
    modalities: list[str] = Field(
        default_factory=list,
        description='Modality of the analysed series that match (e.g. ["CT"]); empty: any.',
    )
    originals: bool = Field(
        False, description="Also send the study's originals (never those from the peer itself)."
    )


class Settings(BaseSettings):
    """radnode configuration (env prefix ``RADNODE_``)."""

    model_config = SettingsConfigDict(env_prefix="RADNODE_", extra="forbid")

    # Where everything lives
    data_dir: Path = Field(Path("radnode-data"), description="Instance store and SQLite index.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the index; default sqlite in the data dir. "
        "postgresql+psycopg://user:pass@host/db for several processes on several hosts.",
    )

    # Network
    host: str = Field("127.0.0.1", description="Address the DICOM and HTTP servers bind to.")
    ae_title: str = Field(
        "RADNODE", min_length=1, max_length=16, description="Our AE title (called AE)."
    )
    dicom_port: int = Field(11112, ge=0, le=65535, description="DICOM (DIMSE) port.")
    http_port: int = Field(
        8080, ge=0, le=65535, description="HTTP port (health, metrics, DICOMweb)."
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of a plain Prometheus /metrics endpoint of this process (no "
        "authentication: bind it where only the scraper reaches it); 0: none. The worker "
        "role, which has no HTTP app, needs it to be scraped; the API also serves /metrics "
        "to admins.",
    )

    # Who may send (PS3.8 A-ASSOCIATE-RJ on mismatch)
    allowed_calling_aets: list[str] = Field(
        default_factory=list,
        description='Calling AE titles allowed to associate, each "AE" or "AE@host". '
        "Empty: any calling AE (bind to localhost or a private network then).",
    )
    require_called_aet: bool = Field(
        True, description="Reject associations whose called AE title is not ours."
    )

    # Query/Retrieve SCP (PS3.4 Annex C)
    query_retrieve: bool = Field(
        True,
        description="Answer C-FIND, C-MOVE and C-GET (Patient Root and Study Root) on the "
        "DICOM ports, for the callers the AE allow-list admits.",
    )
    move_destinations: list[MoveDestination] = Field(
        default_factory=list,
        description="AEs a C-MOVE may send to (JSON list in RADNODE_MOVE_DESTINATIONS, "
        "[[move_destinations]] tables in the config file); any other Move Destination gets "
        "0xA801. See docs/conformance.md.",
    )

    # DIMSE tuning
    max_pdu_size: int = Field(
        1024 * 1024,
        ge=0,
        description="Maximum Length Received we announce (PS3.8 D.1): a P-DATA-TF PDU longer "
        "than this aborts the association before it is read. 0 = unlimited: a PDU is then "
        "read whole at whatever length (up to 4 GiB) the peer declares.",
    )
    max_associations: int = Field(
        32,
        ge=1,
        description="Associations served at once; more are rejected (transient). Connections "
        "still sending their association request do not count (max_negotiating_per_peer).",
    )
    scp_processes: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1,
        description="Receiver processes of `radnode scp` and `radnode serve` over the same "
        "store and index; the process you start listens on the DICOM port(s) and hands each "
        "connection to the receiver serving the fewest (Unix only). auto: one per CPU this "
        "process may use (its affinity, capped by a cgroup v2 CPU limit). "
        "max_associations, max_associations_per_aet and "
        "max_negotiating_per_peer hold per process. See docs/deployment.md.",
    )
    network_timeout_s: float = Field(
        60.0, gt=0, description="Seconds an association may stay silent before it is aborted."
    )
    dimse_timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for a DIMSE message.")
    acse_timeout_s: float = Field(
        30.0, gt=0, description="Seconds to wait for association negotiation messages."
    )
    dimse_poll_interval_s: float = Field(
        0.0002,
        gt=0,
        le=0.01,
        description="How often an association's network thread polls when idle; shorter "
        "is lower latency per instance, longer is less CPU for idle associations.",
    )

    # Store
    duplicate_policy: DuplicatePolicy = Field(
        "keep_first",
        description="A second copy of a stored SOP Instance UID: keep_first (answer "
        "success, keep the stored bytes, count it) or replace (store the new bytes).",
    )
    min_free_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Refuse stores (0xA700) when the data dir's filesystem has less free space.",
    )
    fsync: bool = Field(True, description="fsync files and directories before acknowledging.")
    reconcile_on_start: bool = Field(
        True, description="After an unclean shutdown, index or remove files the index lacks."
    )

    # Study completion
    quiet_period_s: float = Field(
        2.0,
        gt=0,
        description="A study with no new instance for this long is complete "
        "(association release completes it sooner).",
    )

    # Worker
    worker_poll_s: float = Field(
        0.25, gt=0, description="Seconds an idle worker waits before looking for a job again."
    )
    job_lease_s: float = Field(
        300.0, gt=0, description="Seconds a claimed job is a worker's; then another may take it."
    )
    job_max_attempts: int = Field(
        3, ge=1, description="Attempts before a job is marked failed (with its error)."
    )
    prefetch_max_mb: int = Field(
        256,
        ge=0,
        description="Memory (MiB) the worker may hold of studies decoded while they arrive, "
        "so a completed study has only its tail left to decode; 0 turns prefetching off.",
    )
    prefetch_ttl_s: float = Field(
        300.0,
        gt=0,
        description="A study decoded ahead that gets no new instance for this long is dropped "
        "from memory (its job decodes it again).",
    )
    prefetch_poll_s: float = Field(
        0.05, gt=0, description="Seconds between the worker's looks for newly stored instances."
    )

    # HTTP edge: DICOMweb, authentication, CORS (dicomweb/)
    auth_enabled: bool = Field(
        False,
        description="Require a bearer token on every route but /healthz. Binding a "
        "non-loopback address with auth off is refused unless allow_insecure is set.",
    )
    api_tokens: dict[str, str] = Field(
        default_factory=dict,
        description='Static bearer tokens: {"<token>": "<role>"}, role one of admin, '
        "radiologist, modality, viewer. Put them in the environment or a config file "
        "readable only by the service, never in the repository.",
    )
    allow_insecure: bool = Field(
        False,
        description="Allow auth_enabled=false on a non-loopback address (not for production).",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (a viewer's origin)."
    )
    max_stow_bytes: int = Field(
        2 * 1024**3, ge=1, description="Largest STOW-RS request body accepted (413 beyond)."
    )
    public_url: str | None = Field(
        None,
        description="Base URL clients reach the HTTP edge at (e.g. https://pacs-ai.example.org), "
        "used in RetrieveURL and BulkDataURI; default: the address and port the request "
        "arrived at (never its Host header). Set it behind a reverse proxy.",
    )
    jwt_public_key_file: Path | None = Field(
        None,
        description="PEM public key (RSA or EC) of an OIDC provider: bearer tokens that are "
        "JWTs signed with it (RS/PS/ES 256-512) are accepted besides api_tokens.",
    )
    jwt_jwks_url: str | None = Field(
        None,
        description="JWKS URL of an OIDC provider (its jwks_uri), instead of jwt_public_key_file: "
        "the token's kid picks the key; fetched on first use, every 5 min and when a new kid "
        "appears. https, or http to a loopback address.",
    )
    jwt_issuer: str | None = Field(None, description="Required iss claim of JWTs, if set.")
    jwt_audience: str | None = Field(None, description="Required aud claim of JWTs, if set.")
    jwt_roles_claim: str = Field(
        "roles",
        description="Claim holding a JWT's roles (a list or a string); dotted for nested "
        "claims, e.g. realm_access.roles (Keycloak).",
    )

    # AI node (ai_node/)
    models_dir: Path | None = Field(
        None,
        description="Model registry folder (versions and the active one per task); "
        "default: the models shipped with radnode.",
    )
    finding_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Study score at or above which a finding is reported, for a finding model "
        "whose card has no operating threshold (a retrained model's card has one).",
    )
    inference_batch_size: int = Field(64, ge=1, description="Slices per inference batch.")

    # PACS peers (pacs_link/)
    pacs_peers: list[PacsPeer] = Field(
        default_factory=list,
        description="PACS to send results to and follow (JSON list in RADNODE_PACS_PEERS, "
        "[[pacs_peers]] tables in the config file); see docs/pacs.md.",
    )
    routing_rules: list[RoutingRule] = Field(
        default_factory=list,
        description="Which peers get which results ([[routing_rules]] tables in the config "
        "file); empty: every peer gets every result, and the originals where forward_originals. "
        "See docs/pacs.md.",
    )
    outbox_poll_s: float = Field(
        0.25, gt=0, description="Seconds an idle outbox sender waits before looking again."
    )
    outbox_backoff_s: float = Field(
        2.0, gt=0, description="First retry delay of a failed delivery; doubles per attempt."
    )
    outbox_backoff_max_s: float = Field(
        300.0, gt=0, description="Longest retry delay; deliveries are retried until they succeed."
    )
    changes_poll_s: float = Field(
        0.5, gt=0, description="Seconds between reads of a followed PACS's /changes feed."
    )

    # -- Security: DICOM TLS, input limits, audit trail (docs/security.md) ---------
    dicom_plain: bool = Field(
        True,
        description="Listen for plain (unencrypted) DICOM on dicom_port; false: TLS only.",
    )
    dicom_tls_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="DICOM TLS port (PS3.15 B.9, BCP 195: TLS 1.2 or later); unset: no TLS "
        "listener. Needs tls_cert_file and tls_key_file.",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) of the DICOM TLS port and radnode's SCUs."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_ca_file: Path | None = Field(
        None,
        description="PEM CA certificate(s) trusted for peers' certificates: clients of the "
        "TLS port (mutual TLS) and the servers radnode's SCUs connect to.",
    )
    tls_require_client_cert: bool = Field(
        False,
        description="Mutual TLS: refuse TLS clients without a certificate signed by tls_ca_file.",
    )
    tls_handshake_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a client has to complete the TLS handshake."
    )
    max_instance_bytes: int = Field(
        2 * 1024**3,
        ge=1,
        description="Largest dataset stored (C-STORE: 0xA700, STOW-RS: FailureReason 0xA700).",
    )
    max_associations_per_aet: int = Field(
        16,
        ge=1,
        description="Associations served at once per calling AE title; more are rejected "
        "(A-ASSOCIATE-RJ transient, local limit exceeded) while others keep working.",
    )
    association_request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds from a DICOM connection's accept until its whole A-ASSOCIATE-RQ "
        "must have arrived, however slowly it trickles in; then the connection is closed.",
    )
    max_negotiating_per_peer: int = Field(
        16,
        ge=1,
        description="DICOM connections from one IP address whose A-ASSOCIATE-RQ is being "
        "read at once; further ones wait (max_waiting_per_peer). They do not count against "
        "max_associations.",
    )
    max_waiting_per_peer: int = Field(
        64,
        ge=0,
        description="DICOM connections from one IP address held unread, without a thread, "
        "while max_negotiating_per_peer of its requests are being read; a further one is "
        "closed at once. A held connection's association_request_timeout_s runs from its "
        "accept.",
    )
    max_json_body_bytes: int = Field(
        64 * 1024,
        ge=1,
        description="Largest body of a JSON request (feedback, notifications): 413 beyond, "
        "checked on Content-Length and while reading, after the bearer token.",
    )
    max_stow_parts: int = Field(
        10000, ge=1, description="Most parts (instances) in one STOW-RS request: 413 beyond."
    )
    max_frames_per_request: int = Field(
        10000,
        ge=1,
        description="Most distinct frame numbers in one WADO-RS frames request (a repeated "
        "number counts once): 400 beyond.",
    )
    qido_max_results: int = Field(
        10000,
        ge=1,
        description="Most results of one QIDO-RS search; a search with more answers that "
        "many and says so in a Warning header (page with limit and offset).",
    )
    cfind_max_results: int = Field(
        10000,
        ge=1,
        description="Most matches one C-FIND answers; a query with more gets 0xA700 (out of "
        "resources, 'narrow the query') and no match, since C-FIND has no way to say a list "
        "is cut short.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="IP addresses of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; empty: those headers are ignored.",
    )
    auth_failure_interval_s: float = Field(
        60.0,
        gt=0,
        description="Failed logins from one address for one reason are audited (and logged) "
        "once per interval: the first at once, the rest as one message with their count.",
    )
    http_keep_alive_s: float = Field(
        5.0, gt=0, description="Seconds an idle HTTP keep-alive connection is kept open."
    )
    http_request_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a client may take to send a request's headers, or between two "
        "chunks of its body; then 408 / the connection is closed.",
    )
    audit_enabled: bool = Field(
        True, description="Write the DICOM audit trail (PS3.15 A.5) of stores, queries, ..."
    )
    audit_dir: Path | None = Field(
        None,
        description="Folder of the append-only audit log (one file per UTC day); default "
        "<data_dir>/audit. Readable only by the service and the auditors.",
    )
    audit_site_id: str = Field(
        "radnode", max_length=64, description="AuditEnterpriseSiteID (the hospital's name)."
    )
    audit_syslog_host: str | None = Field(
        None, description="Audit record repository to send each message to (syslog over TLS)."
    )
    audit_syslog_port: int = Field(6514, ge=1, le=65535, description="Its port (RFC 5425: 6514).")
    audit_syslog_ca_file: Path | None = Field(
        None, description="CA that signed the repository's certificate (default: tls_ca_file)."
    )
    audit_syslog_tls: bool = Field(
        True, description="Syslog over TLS (RFC 5425); false: plain TCP (RFC 6587), tests only."
    )

    # Logging
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object per line; text: for a terminal."
    )

    # Viewer and radiologist feedback (viewer_plugin/)
    radiologist_names: dict[str, str] = Field(
        default_factory=dict,
        description='Person name (DICOM PN, "Family^Given") of each static API token\'s '
        'holder, {"<token>": "Doe^Jane"}: the Verifying Observer of the SRs their '
        "feedback produces. JWTs name theirs in the name (or preferred_username) claim.",
    )
    demo_observer_name: str = Field(
        "Demo^Radiologist",
        max_length=64,
        description="Verifying Observer Name of feedback while auth_enabled is false (demo).",
    )
    verifying_organization: str = Field(
        "radnode",
        min_length=1,
        max_length=64,
        description="Verifying Organization of feedback SRs (the hospital's name).",
    )
    ohif_dir: Path | None = Field(
        None,
        description="The prebuilt OHIF viewer (npm @ohif/app's dist/); default: "
        "build/ohif/package/dist as `make ohif` unpacks it.",
    )
    ohif_port: int = Field(
        3000,
        ge=0,
        le=65535,
        description="HTTP port of the OHIF viewer (python -m viewer_plugin.ohif).",
    )
    ohif_url: str | None = Field(
        None,
        description="Where browsers reach that OHIF viewer (e.g. http://127.0.0.1:3000); the "
        "review page embeds it. Unset: the review page shows the driving slice only.",
    )

    # Retraining (ai_node/retrain/, docs/retraining.md)
    retraining_api_url: str | None = Field(
        None,
        description="Where the pipeline's export step reads labels and studies (the node's "
        "HTTP edge); default http://<host>:<http_port> (127.0.0.1 when host is 0.0.0.0).",
    )
    retraining_dicomweb_url: str | None = Field(
        None,
        description="DICOMweb root the export fetches studies from (a PACS's); default the "
        "node's own <retraining_api_url>/dicom-web.",
    )
    retraining_api_token: SecretStr | None = Field(
        None,
        description="Bearer token (role admin) the export step uses when auth_enabled; passed "
        "to the steps in the environment, never as a pipeline parameter.",
    )
    retraining_salt: SecretStr | None = Field(
        None,
        description="Secret salt of the de-identification (pseudonyms, UIDs, date shifts) and "
        "of the patient split; default: a random one kept in <data_dir>/retraining/salt. "
        "Changing it re-draws every patient's split.",
    )
    retraining_trigger_labels: int = Field(
        0,
        ge=0,
        description="Start a retraining run when this many new labels (feedback) have arrived "
        "since the last run; checked by serve and worker; 0 = off.",
    )
    retraining_check_s: float = Field(
        60.0, gt=0, description="Seconds between checks of the label-count trigger."
    )
    retraining_min_labels: int = Field(
        8, ge=2, description="Fewest labelled studies a run needs (else it fails early)."
    )
    retraining_val_fraction: float = Field(
        0.15, ge=0, lt=1, description="Share of patients in the validation split."
    )
    retraining_test_fraction: float = Field(
        0.3, gt=0, lt=1, description="Share of patients in the test split (evaluation)."
    )
    retraining_epochs: int = Field(3, ge=1, description="Training epochs of a retraining run.")
    retraining_from_scratch: bool = Field(
        False, description="Train from a fresh network instead of the active model's weights."
    )
    retraining_min_test_positives: int = Field(
        10,
        ge=1,
        description="Fewest studies labelled lesion the test split must hold; below it a run "
        "stops before training and says how many more labels it needs.",
    )
    retraining_min_test_negatives: int = Field(
        10,
        ge=1,
        description="Fewest studies labelled no lesion the test split must hold (as above).",
    )
    retraining_prevalence: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Share of the node's analysed studies that show the finding at this site; "
        "the evaluation reports PPV and NPV at this prevalence. Set it to your site's.",
    )
    retraining_bootstrap_samples: int = Field(
        1000,
        ge=100,
        description="Patient-level bootstrap replicates behind the evaluation's 95% intervals.",
    )
    retraining_sensitivity_margin: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Promotion: the candidate's test sensitivity at its operating threshold may "
        "be at most this much below the active model's at its own (0: not lower; a negative "
        "margin demands a gain).",
    )
    retraining_specificity_margin: float = Field(
        0.05,
        ge=-1,
        le=1,
        description="Promotion: the candidate's test specificity at its operating threshold may "
        "be at most this much below the active model's at its own.",
    )
    retraining_brier_margin: float = Field(
        0.01,
        ge=-1,
        le=1,
        description="Promotion: the candidate's test Brier score may be at most this much above "
        "the active model's.",
    )
    retraining_auc_margin: float = Field(
        0.05,
        ge=-1,
        le=1,
        description="Promotion: the lower bound of the 95% interval of AUC(candidate) - "
        "AUC(active) (paired patient bootstrap) may be at most this far below 0.",
    )
    retraining_work_dir: Path | None = Field(
        None,
        description="Local runs' files: <dir>/runs/<run_id>/ holds the KFP log, the report and "
        "the kfp.local pipeline root; default <data_dir>/retraining.",
    )

    # Storage retention and upload (docs/retention.md, docs/upload.md)
    retention_enabled: bool = Field(
        False,
        description="Delete studies' originals by the retention policy (serve and worker "
        "check every retention_check_s); SRs, results and feedback are always kept.",
    )
    retention_days: float = Field(
        30.0,
        ge=0,
        description="Days after a study's result reached every PACS peer its originals "
        "are deleted; never before that delivery.",
    )
    retention_labelled_days: float | None = Field(
        None,
        ge=0,
        description="Days after delivery a study with a radiologist's label the retraining "
        "export has not yet taken is kept; unset: kept until the export has it.",
    )
    retention_high_water: float = Field(
        0.85,
        gt=0,
        le=1,
        description="Share of the data dir's filesystem in use that starts a cleanup early: "
        "delivered studies, oldest delivery first, whatever their age.",
    )
    retention_low_water: float = Field(
        0.75,
        gt=0,
        le=1,
        description="An early cleanup stops once the share in use is at or below this.",
    )
    retention_check_s: float = Field(
        300.0, gt=0, description="Seconds between two retention checks (serve, worker)."
    )
    upload_max_zip_bytes: int = Field(
        4 * 1024**3,
        ge=1,
        description="Largest total a .zip upload may expand to (/ui/upload); beyond, refused.",
    )
    upload_max_zip_ratio: float = Field(
        100.0,
        gt=1,
        description="Largest expansion ratio (uncompressed / compressed) of a zip member.",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae_title_chars(cls, value: str) -> str:
        value = value.strip()
        if not value or "\\" in value or not value.isprintable():
            raise ValueError("AE title must be 1-16 printable characters without backslash")
        return value

    @model_validator(mode="after")
    def _dicom_listeners(self) -> Settings:
        """Security block: a TLS port needs its certificate and key; something must listen."""
        if self.dicom_tls_port is not None and not (self.tls_cert_file and self.tls_key_file):
            raise ValueError("dicom_tls_port needs tls_cert_file and tls_key_file")
        if not self.dicom_plain and self.dicom_tls_port is None:
            raise ValueError("dicom_plain is false and no dicom_tls_port is set")
        if self.tls_require_client_cert and self.tls_ca_file is None:
            raise ValueError("tls_require_client_cert needs tls_ca_file (the trusted CA)")
        return self

    @model_validator(mode="after")
    def _retention_marks(self) -> Settings:
        """An early cleanup stops below where it starts."""
        if self.retention_low_water >= self.retention_high_water:
            raise ValueError("retention_low_water must be below retention_high_water")
        return self

    @model_validator(mode="after")
    def _routes_name_peers(self) -> Settings:
        """Routing rules name configured peers; move destinations are named once each."""
        names = {p.name for p in self.pacs_peers}
        for rule in self.routing_rules:
            unknown = sorted(set(rule.peers) - names)
            if unknown:
                raise ValueError(f"routing rule names unknown pacs_peers: {', '.join(unknown)}")
        titles = [d.ae_title.strip() for d in self.move_destinations]
        if len(set(titles)) != len(titles):
            raise ValueError("move_destinations: an AE title is listed twice")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Build settings from a config file, the environment and explicit overrides.

        ``None`` overrides are ignored, so CLI flags that were not given fall
        through to the environment and the file.
        """
        config_file = config_file or os.environ.get("RADNODE_CONFIG") or None
        settings_cls = cls
        if config_file is not None:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"config file not found: {config_file}")
            settings_cls = type(
                cls.__name__,
                (cls,),
                {"model_config": {**cls.model_config, "toml_file": Path(config_file)}},
            )
        return settings_cls(**{k: v for k, v in overrides.items() if v is not None})

    @property
    def index_url(self) -> str:
        """The index database URL (SQLite in the data dir unless set)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"
