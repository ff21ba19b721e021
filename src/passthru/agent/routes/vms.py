"""Running VMs (tag vms): hot plug and unplug over QMP."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ...service import hotplug as service
from ..schemas import AttachBody, AttachDoc, DetachBody, DetachDoc, error_responses
from ..state import Agent

__all__ = ["add_writes"]


def add_writes(app: FastAPI, agent: Agent) -> None:
    """POST /attach, /detach"""

    @app.post("/attach", response_model=AttachDoc, responses=error_responses(400, 401, 404, 409, 413, 422, 500),
              tags=["vms"], summary="Hot-plug devices into a running VM over QMP (assigning them first if needed)")
    def attach(body: AttachBody) -> JSONResponse:
        service.check_qmp_socket(body.qmp)  # before the write lock: bad input changes nothing
        res = agent.write(lambda s: service.attach(s, body.vm, body.devices, body.qmp, port=body.port,
                                                   kernel=agent.kernel), refresh="attach")
        return JSONResponse({"schema": 1, "vm": body.vm, "attached": res})

    @app.post("/detach", response_model=DetachDoc, responses=error_responses(400, 401, 404, 409, 413, 422, 500),
              tags=["vms"], summary="Hot-unplug devices from a running VM, then release (or keep) them")
    def detach(body: DetachBody) -> JSONResponse:
        service.check_qmp_socket(body.qmp)
        res = agent.write(lambda s: service.detach(s, body.vm, body.devices, body.qmp, keep=body.keep),
                          refresh="detach")
        return JSONResponse({"schema": 1, "vm": body.vm, "detached": res})
