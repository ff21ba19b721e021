"""Device takeover (tag takeover): what passthru holds on vfio-pci; bind and restore."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ... import vfio
from ..error_handlers import invalid
from ..schemas import BindBody, OutcomeDoc, RestoreBody, StatusDoc, error_responses
from ..state import Agent

__all__ = ["add_reads", "add_writes"]


def add_reads(app: FastAPI, agent: Agent) -> None:
    """GET /status"""

    @app.get("/status", response_model=StatusDoc, responses=error_responses(401), tags=["takeover"],
             summary="What passthru holds on vfio-pci, and what is persisted (as `passthru status --json`)")
    def status() -> JSONResponse:
        return JSONResponse(vfio.status(agent.host, agent.paths))


def add_writes(app: FastAPI, agent: Agent) -> None:
    """POST /bind, /restore"""

    @app.post("/bind", response_model=OutcomeDoc, responses=error_responses(400, 401, 404, 409, 413, 422, 500),
              tags=["takeover"], summary="Take devices over for vfio-pci (as `passthru bind`)")
    def bind(body: BindBody) -> JSONResponse:
        allow = frozenset(f for f, on in (("--force-netdev", body.force_netdev),
                                          ("--allow-boot-vga", body.allow_boot_vga)) if on)
        out = agent.write(lambda s: vfio.bind(s.host, s.paths, body.addresses, group=body.group,
                                              persist=body.persist, dry_run=body.dry_run, allow=allow,
                                              kernel=agent.kernel), refresh=None if body.dry_run else "bind")
        return JSONResponse(out.to_json())

    @app.post("/restore", response_model=OutcomeDoc, responses=error_responses(400, 401, 404, 413, 422, 500),
              tags=["takeover"], summary="Give devices back to their prior drivers (as `passthru restore`)")
    def restore(body: RestoreBody) -> JSONResponse:
        if bool(body.addresses) == body.all:
            raise invalid("addresses", "name the devices to give back in addresses, or set all (not both)")
        out = agent.write(lambda s: vfio.restore(s.host, s.paths, None if body.all else body.addresses,
                                                 kernel=agent.kernel), refresh="restore")
        return JSONResponse(out.to_json())
