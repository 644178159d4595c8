"""The ``radnode`` command: one subcommand per process role, plus tools.

    radnode serve     DICOM SCP + HTTP app + AI worker (+ PACS link) in one process
    radnode scp       the DICOM Storage SCP alone
    radnode api       the HTTP app alone (health, metrics, DICOMweb)
    radnode worker    the AI worker, with the PACS outbox sender and changes follower
    radnode viewer    OHIF on its own port beside a running radnode (``serve`` and ``api``
                      serve it at /viewer/ themselves when ``ohif_dir`` is set)
    radnode synth     write synthetic CT studies and chest radiographs
    radnode echo      C-ECHO a DICOM peer
    radnode send      C-STORE files or folders to a DICOM peer
    radnode db        the index database's schema: upgrade, current

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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from ai_node.synth import StudySpec, write_study
from ai_node.xray_synth import SOP_CLASSES, XraySpec, write_radiographs
from dicomweb.auth import InsecureBinding, check_exposure
from pacs_link.scu import collect_files, echo, send_files
from radnode.ai_commands import register as register_ai_commands
from radnode.assembly import Background, build_node, run_http, serve_metrics
from radnode.scp_pool import ScpPool, ScpPoolError, receiver
from radnode_core import __version__, schema
from radnode_core.index import make_engine
from radnode_core.logs import configure_logging
from radnode_core.settings import Settings
from radnode_core.tls import client_context
from viewer_plugin.ohif import command as ohif_command
from viewer_plugin.ohif.dist import check_dist

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
    g.add_argument(
        "--scp-processes",
        type=_processes,
        metavar="N|auto",
        help="receiver processes on the DICOM port (Linux; default 1; auto: one per CPU)",
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
    "scp_processes",
    "log_level",
    "log_format",
)


def _processes(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError("a number of processes (1 or more) or auto")
    return count


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
    return client_context(args.tls_ca, args.tls_cert, args.tls_key)


# -- process roles -----------------------------------------------------------------


def _stop_on_signal() -> threading.Event:
    """An event set by SIGINT or SIGTERM; installed before a role starts its threads, so a
    signal that arrives while they start is not lost."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _check_http_exposure(settings: Settings) -> bool:
    """False (after saying why) when the HTTP edge would serve data unauthenticated off-host,
    or would serve an OHIF viewer that is not there."""
    try:
        check_exposure(settings)
        if settings.ohif_dir is not None:
            check_dist(settings.ohif_dir)
    except (InsecureBinding, FileNotFoundError) as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return False
    if not settings.auth_enabled:
        logger.warning("HTTP authentication is disabled", extra={"host": settings.host})
    return True


def _crashed(scp: object) -> bool:
    """Whether a receiver process ended on its own (the store is then reconciled at the
    next start)."""
    return isinstance(scp, ScpPool) and scp.crashed


def cmd_serve(args: argparse.Namespace) -> int:
    if not _check_http_exposure(args.settings):
        return 2
    node = build_node(args.settings)
    node.recover()
    scp = receiver(node)
    try:
        scp.start()
    except ScpPoolError as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        node.close(clean=False)
        return 2
    background = Background(node)
    background.start()
    stop_metrics = serve_metrics(node)
    try:
        run_http(node)  # blocks; uvicorn handles SIGINT/SIGTERM
    finally:
        stop_metrics()
        background.stop()
        scp.stop()
        node.close(clean=not _crashed(scp))
    return 0


def cmd_scp(args: argparse.Namespace) -> int:
    node = build_node(args.settings)
    node.recover()
    scp = receiver(node)
    stop = _stop_on_signal()
    try:
        scp.start()
    except ScpPoolError as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        node.close(clean=False)
        return 2
    stop_metrics = serve_metrics(node)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        stop_metrics()
        scp.stop()
        node.close(clean=not _crashed(scp))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    if not _check_http_exposure(args.settings):
        return 2
    node = build_node(args.settings)
    stop_metrics = serve_metrics(node)
    try:
        run_http(node)
    finally:
        stop_metrics()
        node.close(clean=False)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    node = build_node(args.settings)
    background = Background(node)
    stop = _stop_on_signal()
    background.start()
    stop_metrics = serve_metrics(node)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        stop_metrics()
        background.stop()
        node.close(clean=False)
    return 0


def cmd_viewer(args: argparse.Namespace) -> int:
    return ohif_command.serve(
        args.settings, args.dist, args.port, args.upstream, args.frame_ancestors
    )


# -- tools -------------------------------------------------------------------------


def _progress(description: str, total: int) -> tuple[Any, Callable[[int, int], None]]:
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


def cmd_synth_xray(args: argparse.Namespace) -> int:
    try:
        spec = XraySpec(
            seed=args.seed,
            opacities=args.opacities,
            size=args.size,
            bits=args.bits,
            sop_class=args.sop_class,
            monochrome1=args.monochrome1,
        )
    except ValueError as exc:
        print(f"radnode synth xray: {exc}", file=sys.stderr)
        return 2
    progress, update = _progress("synth chest radiographs", args.count)
    with progress:
        images, paths = write_radiographs(spec, args.out, count=args.count, progress=update)
    positive = sum(1 for image in images if image.opacities)
    print(
        f"wrote {len(paths)} {args.sop_class.upper()} chest radiographs to {args.out}"
        f" ({positive} with opacities)"
    )
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    status = echo(args.host, args.port, args.aet, args.called_aet, tls=_scu_tls(args))
    print(f"C-ECHO {args.called_aet}@{args.host}:{args.port}: status 0x{status:04X}")
    return 0 if status == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
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


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Migrate the index database to this radnode's schema (what every role does at start)."""
    settings: Settings = args.settings
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.index_url)
    try:
        done = schema.upgrade(engine)
    finally:
        engine.dispose()
    if done.stamped:
        before = f"radnode 0.1.0's unversioned schema (stamped {schema.FIRST_REVISION})"
    else:
        before = done.before or "an empty database"
    if done.changed:
        print(f"upgraded the database schema from {before} to {done.after}")
    else:
        print(f"the database schema is already at {done.after} (head): nothing to do")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    """Print the index database's revision and whether it is head; change nothing.

    Exit status 0 at head, 1 when ``radnode db upgrade`` has work to do, 2 when a newer
    radnode migrated the database."""
    settings: Settings = args.settings
    url = settings.index_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        print(f"no database yet at {url.removeprefix('sqlite:///')} (head is {schema.head()})")
        return 1
    engine = make_engine(url)
    try:
        state = schema.revision(engine)
    finally:
        engine.dispose()
    if not state.known:
        raise schema.DatabaseTooNew(str(state.current), state.head)
    if state.is_head:
        print(f"{state.current} (head)")
        return 0
    if state.unversioned:
        current = "radnode 0.1.0's unversioned schema"
    else:
        current = state.current or "an empty database"
    print(f"{current} (not head: head is {state.head}; run radnode db upgrade)")
    return 1


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

    viewer_help = "OHIF on its own port (ohif_port) beside a running radnode"
    viewer = sub.add_parser("viewer", help=viewer_help, description=viewer_help)
    _node_options(viewer)
    ohif_command.add_arguments(viewer)
    viewer.set_defaults(func=cmd_viewer)

    synth = sub.add_parser("synth", help="write synthetic CT studies and chest radiographs")
    synth_sub = synth.add_subparsers(dest="synth_command", required=True, metavar="KIND")
    study = synth_sub.add_parser("study", help="one synthetic CT series")
    study.add_argument("--out", type=Path, required=True, help="output folder")
    study.add_argument("--region", choices=["chest", "head", "abdomen"], default="chest")
    study.add_argument("--slices", type=int, default=100)
    study.add_argument("--nodules", type=int, default=0, help="spherical lesions (chest only)")
    study.add_argument("--seed", type=int, default=0)
    study.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    study.set_defaults(func=cmd_synth_study)
    xray = synth_sub.add_parser(
        "xray", help="synthetic PA chest radiographs (DX or CR), with or without opacities"
    )
    xray.add_argument("--out", type=Path, required=True, help="output folder")
    xray.add_argument(
        "--opacities", type=int, default=0, help="focal opacities per image (0: normal images)"
    )
    xray.add_argument("--seed", type=int, default=0, help="seed of the first image")
    xray.add_argument(
        "--count", type=int, default=1, help="images, one patient each (seeds seed..seed+count-1)"
    )
    xray.add_argument("--size", type=int, default=1024, help="rows = columns (default 1024)")
    xray.add_argument(
        "--sop-class",
        choices=sorted(SOP_CLASSES),
        default="dx",
        help="dx: Digital X-Ray Image For Presentation (default); cr: Computed Radiography",
    )
    xray.add_argument(
        "--monochrome1", action="store_true", help="MONOCHROME1 (inverted stored values)"
    )
    xray.add_argument("--bits", type=int, default=12, help="Bits Stored, 10..16 (default 12)")
    xray.set_defaults(func=cmd_synth_xray)

    echo = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    _peer_options(echo)
    echo.set_defaults(func=cmd_echo)

    send = sub.add_parser("send", help="C-STORE files or folders to a DICOM peer")
    _peer_options(send)
    send.add_argument("paths", nargs="+", type=Path)
    send.set_defaults(func=cmd_send)

    db = sub.add_parser(
        "db",
        help="the index database's schema: upgrade, current",
        description="The index database's schema revision (Alembic migrations).",
    )
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, func, help_ in (
        ("upgrade", cmd_db_upgrade, "migrate the database to this radnode's schema (head)"),
        ("current", cmd_db_current, "print the database's revision and whether it is head"),
    ):
        p = db_sub.add_parser(name, help=help_, description=help_)
        _node_options(p)
        p.set_defaults(func=func)

    register_ai_commands(sub, _node_options)
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
    try:
        return int(args.func(args) or 0)
    except schema.SchemaError as exc:  # e.g. a database a newer radnode migrated
        print(f"radnode: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
