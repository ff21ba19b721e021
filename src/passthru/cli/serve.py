"""CLI verb of the agent: ``passthru serve``. FastAPI and uvicorn are imported only when the agent starts, so the
other verbs do not pay for them."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..service.session import Session
from ..errors import UsageError

if TYPE_CHECKING:
    from ..agent.limits import Limits
    from ..agent.server import Listen


def serve(
    ctx: typer.Context,
    listen: Annotated[Optional[str], typer.Option(
        "--listen", metavar="unix:PATH | HOST:PORT",
        help="Where to listen. Default: the unix socket unix:/run/passthru/agent.sock (mode 0600, root only). "
             "TCP (127.0.0.1:8080, [::1]:8080; a bare port binds 127.0.0.1) requires the bearer token. An address "
             "other machines reach (0.0.0.0:8080, [::]:8080, a LAN address) needs --allow-remote.")] = None,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Allow --listen on an address other than loopback (use it with --tls-cert and "
                               "--tls-key: otherwise the token crosses the network in plain text).")] = False,
    tls_cert: Annotated[Optional[str], typer.Option(
        "--tls-cert", metavar="FILE", help="Serve HTTPS (TCP only) with this PEM certificate (chain).")] = None,
    tls_key: Annotated[Optional[str], typer.Option(
        "--tls-key", metavar="FILE", help="The PEM private key of --tls-cert (not encrypted).")] = None,
    token_file: Annotated[Optional[str], typer.Option(
        "--token-file", metavar="FILE", help="Bearer token for TCP; generated (0600) when missing. "
                                             "Default: /etc/passthru/token.")] = None,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", metavar="N", help="Open connections at most; at the limit a new connection closes the "
                                               "one that waited longest for its request headers.")] = 1000,
    header_timeout: Annotated[float, typer.Option(
        "--header-timeout", metavar="SECONDS", help="Close a connection that has not sent complete request headers "
                                                    "in this time (a TLS handshake may take as long again).")] = 10.0,
    idle_timeout: Annotated[float, typer.Option(
        "--idle-timeout", metavar="SECONDS", help="Close a kept-alive connection idle this long.")] = 5.0,
    max_body: Annotated[str, typer.Option(
        "--max-body", metavar="SIZE", help="Largest request body (bytes, or 64K, 1M...); larger: 413.")] = "1M",
    release_gone: Annotated[bool, typer.Option(
        "--release-gone", help="On reconcile, release the devices of VMs whose QEMU process is gone.")] = False,
    no_reconcile: Annotated[bool, typer.Option("--no-reconcile", help="Do not reconcile at start.")] = False,
    no_hotplug: Annotated[bool, typer.Option("--no-hotplug", help="Ignore the kernel's hot-plug events.")] = False,
    cluster: Annotated[Optional[str], typer.Option(
        "--cluster", metavar="URL", help="Join the cluster whose database is URL (postgresql+psycopg://USER@HOST/DB): "
                                         "publish this host's devices, heartbeat, take reservations over and confirm "
                                         "them (docs/cluster.md).")] = None,
    cluster_name: Annotated[Optional[str], typer.Option(
        "--cluster-name", metavar="HOST", help="This host's name in the cluster [default: its hostname].")] = None,
    advertise: Annotated[Optional[str], typer.Option(
        "--advertise", metavar="HOST:PORT", help="The address the cluster lists for this agent [default: --listen "
                                                 "when TCP].")] = None,
    heartbeat: Annotated[float, typer.Option(
        "--heartbeat", metavar="SECONDS", help="Heartbeat and reconcile with the cluster this often.")] = 5.0,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    install_unit: Annotated[bool, typer.Option(
        "--install-unit", help="Write passthru-agent.service to /etc/systemd/system and enable it, then exit.")]
    = False,
) -> None:
    """Run the agent: the CLI's verbs as an HTTP API (FastAPI; OpenAPI schema at /openapi.json), the inventory
    kept in memory and refreshed on hot-plug events, reconcile at start, Prometheus /metrics.

    Examples: `passthru serve` (unix socket), `passthru serve --listen 127.0.0.1:8080`,
    `passthru serve --cluster postgresql+psycopg://passthru@db/passthru --cluster-name gpu-07`,
    `passthru serve --listen 0.0.0.0:8443 --allow-remote --tls-cert cert.pem --tls-key key.pem`,
    `curl --unix-socket /run/passthru/agent.sock http://agent/devices`, `passthru serve --install-unit`.
    """
    from ..agent.limits import Limits, parse_size
    from ..agent.server import check_remote, check_tls, parse_listen, resolve_tcp

    c: Session = ctx.obj
    if install_unit:
        from ..units import AGENT_UNIT, install_units

        for path, st in install_units(c.host, c.paths, names=(AGENT_UNIT,)):
            print(f"{path}: {st}")
        return
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise UsageError(f"--log-level {log_level!r}: debug, info, warning or error")
    limits = Limits(max_connections, header_timeout, idle_timeout, parse_size(max_body)).check()
    where = parse_listen(listen or f"unix:{c.host.path('/run/passthru/agent.sock')}")
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together: give the certificate and its private key")
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    if tls and where.kind != "tcp":
        raise UsageError("--tls-cert/--tls-key serve HTTPS on a TCP --listen; the unix socket needs no TLS")
    if tls:
        check_tls(*tls)
    reach = None
    if where.kind == "tcp":  # judged before anything is written or bound: a refusal is one line and changes nothing
        assert where.host is not None and where.port is not None
        reach = check_remote(where, resolve_tcp(where.host, where.port)[1], allow_remote)
    member = None
    if cluster is not None:
        member = _cluster_options(c, cluster, cluster_name, advertise or (str(where) if where.kind == "tcp" else None),
                                  heartbeat)
    _serve(c, where, limits, tls, reach, allow_remote=allow_remote, token_file=token_file, log_level=log_level,
           reconcile=not no_reconcile, release_gone=release_gone, hotplug=not no_hotplug, cluster=member)


def _cluster_options(c: Session, url: str, name: str | None, address: str | None,  # type: ignore[no-untyped-def]
                     heartbeat: float):
    """--cluster checked before anything listens: a usable name, an interval, a database that answers, and not the
    host's own inventory (two hosts' local tables must never share one database)."""
    from ..agent.membership import ClusterOptions
    from ..inventory.cluster import ClusterStore
    from ..inventory.cluster.records import check_host_name
    from ..inventory.store import DB_ENV

    host = name or os.uname().nodename
    check_host_name(host)
    if not 0.5 <= heartbeat <= 60:
        raise UsageError(f"--heartbeat {heartbeat:g}: between 0.5 and 60 seconds (a host is suspect after 15 s "
                         "without one)")
    if os.environ.get(DB_ENV) == url:
        raise UsageError(f"--cluster names the same database as {DB_ENV}, this host's own inventory; keep the "
                         f"host's inventory local (unset {DB_ENV}) and give the cluster's URL to --cluster only")
    probe = ClusterStore(url)
    try:
        probe.hosts()  # an unreachable or wrong URL: one line, exit 2, before the agent starts
    finally:
        probe.close()
    return ClusterOptions(url, host, address, heartbeat)


def _serve(c: Session, where: Listen, limits: Limits, tls: tuple[str, str] | None, reach: str | None, *,
           allow_remote: bool, token_file: str | None, log_level: str, reconcile: bool, release_gone: bool,
           hotplug: bool, cluster: Any = None) -> None:
    from ..agent import logfilter
    from ..agent.limits import raise_fd_limit
    from ..agent.server import AgentServer, load_token

    logging.basicConfig(level=log_level.upper(), format="passthru-agent: %(levelname)s %(message)s")
    limiter = logfilter.install()
    log = logging.getLogger("passthru.agent")
    limits = raise_fd_limit(limits)
    token = None
    if where.kind == "tcp":
        token = load_token(token_file or os.path.join(c.paths.config_dir, "token"))
    from ..service.preflight import preflight

    preflight(c.paths)  # a corrupt inventory or a broken state dir: one line, exit 2, before anything listens
    from ..agent.app import create_app

    application = create_app(c.host.base, c.paths.config_dir, c.paths.state_dir, token=token,
                             reconcile_on_start=reconcile, release_gone=release_gone, udev=hotplug,
                             max_body=limits.max_body, cluster=cluster)
    server = AgentServer(application, where, log_level=log_level.lower(), limits=limits, tls=tls,
                         allow_remote=allow_remote)
    actual = server.open()
    log.info("listening on %s%s%s", actual, " with TLS" if tls else "", " (bearer token required)" if token else "")
    log.info("limits: %d connections, request headers within %gs, idle connections closed after %gs, bodies up to "
             "%d bytes", limits.max_connections, limits.header_timeout, limits.idle_timeout, limits.max_body)
    if reach is not None and not tls:
        log.warning("%s is reachable from other machines (%s) without TLS: the bearer token crosses the network in "
                    "plain text; add --tls-cert FILE --tls-key FILE", actual, reach)
    try:
        server.run()
    finally:
        limiter.flush()
