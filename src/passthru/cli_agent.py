"""CLI verb of the agent: ``passthru serve`` (registered on ``cli.app``). FastAPI and uvicorn are imported only
when the agent starts, so the other verbs do not pay for them."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .cli import _Ctx, app
from .errors import UsageError


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
    import logging
    import os

    from .agent.server import AgentServer, load_token, parse_listen

    c: _Ctx = ctx.obj
    if install_unit:
        from .units import AGENT_UNIT, install_units

        for path, st in install_units(c.host, c.paths, names=(AGENT_UNIT,)):
            print(f"{path}: {st}")
        return
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise UsageError(f"--log-level {log_level!r}: debug, info, warning or error")
    logging.basicConfig(level=log_level.upper(), format="passthru-agent: %(levelname)s %(message)s")
    where = parse_listen(listen or f"unix:{c.host.path('/run/passthru/agent.sock')}")
    token = None
    if where.kind == "tcp":
        token = load_token(token_file or os.path.join(c.paths.config_dir, "token"))
    from .inventory.health import preflight

    preflight(c.paths)  # a corrupt inventory or a broken state dir: one line, exit 2, before anything listens
    from .agent.api import create_app

    application = create_app(c.host.base, c.paths.config_dir, c.paths.state_dir, token=token,
                             reconcile_on_start=not no_reconcile, release_gone=release_gone, udev=not no_hotplug)
    server = AgentServer(application, where, log_level=log_level.lower())
    actual = server.open()
    logging.getLogger("passthru.agent").info("listening on %s%s", actual,
                                             " (bearer token required)" if token else "")
    server.run()
