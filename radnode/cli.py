"""The ``radnode`` command: one subcommand per process role, plus tools.

    radnode serve     DICOM SCP + HTTP app + AI worker (+ PACS link) in one process
    radnode scp       the DICOM Storage SCP alone
    radnode api       the HTTP app alone (health, metrics, DICOMweb)
    radnode worker    the AI worker, with the PACS outbox sender and changes follower
    radnode synth     write synthetic CT studies
    radnode echo      C-ECHO a DICOM peer
    radnode send      C-STORE files or folders to a DICOM peer

Each role is a function taking parsed arguments; ``main(argv=None)`` dispatches.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from radnode import __version__
from radnode.logs import configure_logging
from radnode.settings import Settings

logger = logging.getLogger("radnode.cli")


# -- arguments ---------------------------------------------------------------------


def _node_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("node settings (override RADNODE_* and the config file)")
    g.add_argument("--config", type=Path, help="TOML config file (also RADNODE_CONFIG)")
    g.add_argument("--data-dir", type=Path, help="store and SQLite index (default ./radnode-data)")
    g.add_argument(
        "--database-url", help="SQLAlchemy URL of the index (default: SQLite in the data dir)"
    )
    g.add_argument("--aet", dest="ae_title", help="our AE title (default RADNODE)")
    g.add_argument("--host", help="address to bind (default 127.0.0.1)")
    g.add_argument("--dicom-port", type=int, help="DICOM port (default 11112)")
    g.add_argument("--http-port", type=int, help="HTTP port (default 8080)")
    g.add_argument(
        "--allow",
        dest="allowed_calling_aets",
        action="append",
        metavar="AE[@HOST]",
        help="calling AE allowed to send (repeatable; default: any)",
    )
    g.add_argument(
        "--quiet-period",
        dest="quiet_period_s",
        type=float,
        help="seconds without a new instance after which a study is complete (default 2)",
    )
    g.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    g.add_argument("--log-format", choices=["json", "text"], help="log line format (default json)")


_SETTING_ARGS = (
    "data_dir",
    "database_url",
    "ae_title",
    "host",
    "dicom_port",
    "http_port",
    "allowed_calling_aets",
    "quiet_period_s",
    "log_level",
    "log_format",
)


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name, None) for name in _SETTING_ARGS}
    return Settings.load(getattr(args, "config", None), **overrides)


def _peer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="peer address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=11112, help="peer DICOM port (default 11112)")
    parser.add_argument("--aet", default="RADNODE_SCU", help="our (calling) AE title")
    parser.add_argument("--called-aet", default="RADNODE", help="the peer's AE title")
    tls = parser.add_argument_group("DICOM TLS (PS3.15 B.9, TLS 1.2+)")
    tls.add_argument(
        "--tls", action="store_true", help="connect over TLS (implied by any --tls-* flag)"
    )
    tls.add_argument("--tls-ca", type=Path, help="CA that signed the peer's certificate")
    tls.add_argument("--tls-cert", type=Path, help="our client certificate (mutual TLS)")
    tls.add_argument("--tls-key", type=Path, help="its private key")


def _scu_tls(args: argparse.Namespace) -> Any:
    """The SCU's TLS context from --tls* flags, or None for plain DICOM.

    A CA, certificate or key given without ``--tls`` still means TLS: silently sending
    patient data in the clear because one flag was forgotten is the worse failure."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    from dimse_scp.tls import client_context

    return client_context(args.tls_ca, args.tls_cert, args.tls_key)


# -- process roles -----------------------------------------------------------------


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def _start_scp(node: Any) -> tuple[Any, Any]:
    from dimse_scp.access import AccessPolicy
    from dimse_scp.completion import CompletionTracker
    from dimse_scp.handlers import StorageHandlers
    from dimse_scp.server import DicomServer

    s = node.settings
    tracker = CompletionTracker(node.queue, s.quiet_period_s, node.metrics)
    access = AccessPolicy.from_settings(s.ae_title, s.allowed_calling_aets, s.require_called_aet)
    if not access.allowed and s.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "no calling-AE allow-list while listening beyond localhost", extra={"host": s.host}
        )
    handlers = StorageHandlers(
        node.ingestor,
        tracker,
        access,
        node.metrics,
        poll_interval_s=s.dimse_poll_interval_s,
        audit=node.audit,
        max_associations_per_aet=s.max_associations_per_aet,
    )
    server = DicomServer(s, handlers)
    server.start()
    tracker.start()
    return server, tracker


def _make_worker(node: Any) -> Any | None:
    from ai_node.worker import Worker, default_processor

    processor = default_processor(node)
    if processor is None:
        return None
    return Worker(node.queue, processor, node.metrics, poll_s=node.settings.worker_poll_s)


def _start_pacs(node: Any) -> list[Any]:
    """The PACS outbox sender and changes followers (pacs_link), in ``serve`` and ``worker``."""
    import pacs_link

    return pacs_link.start(node)


def _start_retrain_trigger(node: Any) -> Any | None:
    """The label-count retraining trigger (ai_node.retrain.trigger), when enabled."""
    from ai_node.retrain.trigger import start

    return start(node)


def _check_http_exposure(settings: Settings) -> bool:
    """False (after saying why) when the HTTP edge would serve data unauthenticated off-host."""
    from dicomweb.auth import InsecureBinding, check_exposure

    try:
        check_exposure(settings)
    except InsecureBinding as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return False
    if not settings.auth_enabled:
        logger.warning("HTTP authentication is disabled", extra={"host": settings.host})
    return True


def _run_http(node: Any) -> None:
    import uvicorn

    from dicomweb.app import create_app
    from dicomweb.timeouts import protocol_class

    s = node.settings
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then restores the previous handlers
    # and re-raises the signal: with these handlers that re-raise is harmless and the
    # caller's clean-up (stop the SCP, mark a clean shutdown) runs.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        create_app(node),
        host=s.host,
        port=s.http_port,
        log_config=None,
        access_log=False,
        http=protocol_class(s.http_request_timeout_s),
        timeout_keep_alive=max(1, round(s.http_keep_alive_s)),
        h11_max_incomplete_event_size=64 * 1024,  # request line + headers
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from radnode.node import Node

    if not _check_http_exposure(args.settings):
        return 2
    node = Node(args.settings)
    node.recover()
    server, tracker = _start_scp(node)
    worker = _make_worker(node)
    if worker is not None:
        worker.start()
    else:
        logger.warning("no analysis pipeline installed: completed studies stay queued")
    pacs = _start_pacs(node)
    trigger = _start_retrain_trigger(node)
    try:
        _run_http(node)  # blocks; uvicorn handles SIGINT/SIGTERM
    finally:
        if trigger is not None:
            trigger.stop()
        for service in pacs:
            service.stop()
        if worker is not None:
            worker.stop()
        tracker.stop()
        server.stop()
        node.close()
    return 0


def cmd_scp(args: argparse.Namespace) -> int:
    from radnode.node import Node

    node = Node(args.settings)
    node.recover()
    server, tracker = _start_scp(node)
    try:
        _wait_for_signal()
    finally:
        tracker.stop()
        server.stop()
        node.close()
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from radnode.node import Node

    if not _check_http_exposure(args.settings):
        return 2
    node = Node(args.settings)
    try:
        _run_http(node)
    finally:
        node.close(clean=False)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from radnode.node import Node

    node = Node(args.settings)
    worker = _make_worker(node)
    if worker is None:
        print("radnode worker: no analysis pipeline is installed; nothing to run", file=sys.stderr)
        node.close(clean=False)
        return 2
    worker.start()
    pacs = _start_pacs(node)
    trigger = _start_retrain_trigger(node)
    try:
        _wait_for_signal()
    finally:
        if trigger is not None:
            trigger.stop()
        for service in pacs:
            service.stop()
        worker.stop()
        node.close(clean=False)
    return 0


# -- tools -------------------------------------------------------------------------


def _progress(description: str, total: int) -> tuple[Any, Callable[[int, int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
        disable=not sys.stderr.isatty(),
        console=None,
    )
    task = progress.add_task(description, total=total)
    return progress, lambda done, _total: progress.update(task, completed=done)


def cmd_synth_study(args: argparse.Namespace) -> int:
    from ai_node.synth import StudySpec, write_study

    spec = StudySpec(
        region=args.region,
        slices=args.slices,
        nodules=args.nodules,
        seed=args.seed,
        rows=args.size,
        columns=args.size,
    )
    progress, update = _progress(f"synth {args.region} study", args.slices)
    with progress:
        study, paths = write_study(spec, args.out, progress=update)
    print(
        f"wrote {len(paths)} slices of study {study.study_instance_uid} to {args.out}"
        f" ({len(study.lesions)} lesions)"
    )
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from dimse_scp.scu import echo

    status = echo(args.host, args.port, args.aet, args.called_aet, tls=_scu_tls(args))
    print(f"C-ECHO {args.called_aet}@{args.host}:{args.port}: status 0x{status:04X}")
    return 0 if status == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
    from dimse_scp.scu import collect_files, send_files

    files = collect_files(args.paths)
    if not files:
        print("radnode send: no files found", file=sys.stderr)
        return 1
    progress, update = _progress("C-STORE", len(files))
    with progress:
        results = send_files(
            files,
            args.host,
            args.port,
            args.aet,
            args.called_aet,
            progress=update,
            tls=_scu_tls(args),
        )
    failed = {p: s for p, s in results.items() if s != 0}
    print(f"sent {len(results) - len(failed)}/{len(files)} instances")
    for path, status in failed.items():
        print(f"  {path}: status 0x{status:04X}", file=sys.stderr)
    return 0 if not failed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radnode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"radnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, func, help_ in (
        ("serve", cmd_serve, "DICOM SCP + HTTP app + AI worker in one process"),
        ("scp", cmd_scp, "the DICOM Storage SCP alone"),
        ("api", cmd_api, "the HTTP app alone"),
        ("worker", cmd_worker, "the AI worker alone"),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        _node_options(p)
        p.set_defaults(func=func)

    synth = sub.add_parser("synth", help="write synthetic CT studies")
    synth_sub = synth.add_subparsers(dest="synth_command", required=True, metavar="KIND")
    study = synth_sub.add_parser("study", help="one synthetic CT series")
    study.add_argument("--out", type=Path, required=True, help="output folder")
    study.add_argument("--region", choices=["chest", "head", "abdomen"], default="chest")
    study.add_argument("--slices", type=int, default=100)
    study.add_argument("--nodules", type=int, default=0, help="spherical lesions (chest only)")
    study.add_argument("--seed", type=int, default=0)
    study.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    study.set_defaults(func=cmd_synth_study)

    echo = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    _peer_options(echo)
    echo.set_defaults(func=cmd_echo)

    send = sub.add_parser("send", help="C-STORE files or folders to a DICOM peer")
    _peer_options(send)
    send.add_argument("paths", nargs="+", type=Path)
    send.set_defaults(func=cmd_send)

    # The AI node and the HTTP edge add their own commands (model training, benchmarks).
    bench = sub.add_parser("bench", help="benchmarks against the peers")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="KIND")
    from ai_node.cli import register as register_ai_node
    from dicomweb.cli import register as register_dicomweb
    from radnode.bench_scale import register as register_bench_scale

    register_ai_node(sub, bench_sub, _node_options)
    register_dicomweb(sub, bench_sub, _node_options)
    register_bench_scale(bench_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level, fmt = "INFO", "text"
    if hasattr(args, "config"):
        try:
            settings = load_settings(args)
        except (ValidationError, OSError, ValueError) as exc:  # a user error, not a traceback
            print(f"radnode: invalid settings: {exc}", file=sys.stderr)
            return 2
        level, fmt = settings.log_level, settings.log_format
        args.settings = settings
    configure_logging(level, fmt)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
