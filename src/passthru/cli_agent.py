"""CLI verb of the agent: ``passthru serve`` (registered on ``cli.app``). FastAPI and uvicorn are imported only
when the agent starts, so the other verbs do not pay for them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .cli import _Ctx, app
from .errors import UsageError

if TYPE_CHECKING:
    from .agent.limits import Limits
    from .agent.server import Listen


@app.command()
def serve(
    ctx: typer.Context,
    listen: Annotated[Optional[str], typer.Option(
        "--listen", metavar="unix:PATH | HOST:PORT",
        help="Where to listen. Default: the unix socket unix:/run/passthru/agent.sock (mode 0600, root only). "
             "TCP (127.0.0.1:8080, [::1]:8080; a bare port binds 127.0.0.1) requires the bearer token.")] = None,
    token_file: Annotated[Optional[str], typer.Option(
        "--token-file", metavar="FILE", help="Bearer token for TCP; generated (0600) when missing. "
                                             "Default: /etc/passthru/token.")] = None,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", metavar="N", help="Open connections at most; at the limit a new connection closes the "
                                               "one that waited longest for its request headers.")] = 1000,
    header_timeout: Annotated[float, typer.Option(
        "--header-timeout", metavar="SECONDS", help="Close a connection that has not sent complete request headers "
                                                    "in this time.")] = 10.0,
    idle_timeout: Annotated[float, typer.Option(
        "--idle-timeout", metavar="SECONDS", help="Close a kept-alive connection idle this long.")] = 5.0,
    max_body: Annotated[str, typer.Option(
        "--max-body", metavar="SIZE", help="Largest request body (bytes, or 64K, 1M...); larger: 413.")] = "1M",
    release_gone: Annotated[bool, typer.Option(
        "--release-gone", help="On reconcile, release the devices of VMs whose QEMU process is gone.")] = False,
    no_reconcile: Annotated[bool, typer.Option("--no-reconcile", help="Do not reconcile at start.")] = False,
    no_hotplug: Annotated[bool, typer.Option("--no-hotplug", help="Ignore the kernel's hot-plug events.")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    install_unit: Annotated[bool, typer.Option(
        "--install-unit", help="Write passthru-agent.service to /etc/systemd/system and enable it, then exit.")]
    = False,
) -> None:
    """Run the agent: the CLI's verbs as an HTTP API (FastAPI; OpenAPI schema at /openapi.json), the inventory
    kept in memory and refreshed on hot-plug events, reconcile at start, Prometheus /metrics.

    Examples: `passthru serve` (unix socket), `passthru serve --listen 127.0.0.1:8080`,
    `curl --unix-socket /run/passthru/agent.sock http://agent/devices`, `passthru serve --install-unit`.
    """
    from .agent.limits import Limits, parse_size
    from .agent.server import parse_listen

    c: _Ctx = ctx.obj
    if install_unit:
        from .units import AGENT_UNIT, install_units

        for path, st in install_units(c.host, c.paths, names=(AGENT_UNIT,)):
            print(f"{path}: {st}")
        return
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise UsageError(f"--log-level {log_level!r}: debug, info, warning or error")
    limits = Limits(max_connections, header_timeout, idle_timeout, parse_size(max_body)).check()
    where = parse_listen(listen or f"unix:{c.host.path('/run/passthru/agent.sock')}")
    _serve(c, where, limits, token_file=token_file, log_level=log_level, reconcile=not no_reconcile,
           release_gone=release_gone, hotplug=not no_hotplug)


def _serve(c: _Ctx, where: Listen, limits: Limits, *, token_file: str | None, log_level: str, reconcile: bool,
           release_gone: bool, hotplug: bool) -> None:
    import logging
    import os

    from .agent import logfilter
    from .agent.limits import raise_fd_limit
    from .agent.server import AgentServer, load_token

    logging.basicConfig(level=log_level.upper(), format="passthru-agent: %(levelname)s %(message)s")
    limiter = logfilter.install()
    log = logging.getLogger("passthru.agent")
    limits = raise_fd_limit(limits)
    token = None
    if where.kind == "tcp":
        token = load_token(token_file or os.path.join(c.paths.config_dir, "token"))
    from .agent.api import create_app

    application = create_app(c.host.base, c.paths.config_dir, c.paths.state_dir, token=token,
                             reconcile_on_start=reconcile, release_gone=release_gone, udev=hotplug,
                             max_body=limits.max_body)
    server = AgentServer(application, where, log_level=log_level.lower(), limits=limits)
    actual = server.open()
    log.info("listening on %s%s", actual, " (bearer token required)" if token else "")
    log.info("limits: %d connections, request headers within %gs, idle connections closed after %gs, bodies up to "
             "%d bytes", limits.max_connections, limits.header_timeout, limits.idle_timeout, limits.max_body)
    try:
        server.run()
    finally:
        limiter.flush()
