"""Assignments (tag assignments): who holds what and whether each VM runs; assign and release."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from ...service import assign as service
from ...service.assign import assignment_json
from ...service.release import release as release_devices
from ..schemas import AssignBody, AssignDoc, AssignmentsDoc, ReleaseBody, ReleaseDoc, VmName, error_responses
from ..state import Agent

__all__ = ["add_reads", "add_writes"]


def add_reads(app: FastAPI, agent: Agent) -> None:
    """GET /assignments"""

    @app.get("/assignments", response_model=AssignmentsDoc, responses=error_responses(401, 422), tags=["assignments"],
             summary="Who holds what, and whether each VM's QEMU process runs")
    def assignments(vm: Annotated[VmName | None, Query(description="Only this VM.")] = None,
                    all: Annotated[bool, Query(description="Include released assignments.")] = False  # noqa: A002
                    ) -> JSONResponse:
        rows = agent.store.assignments(vm, active=not all)
        vms = [v for v in agent.vm_status().values() if vm is None or v["vm"] == vm]
        return JSONResponse({"schema": 1, "assignments": [assignment_json(a) for a in rows], "vms": vms})


def add_writes(app: FastAPI, agent: Agent) -> None:
    """POST /assign, /release"""

    @app.post("/assign", response_model=AssignDoc, responses=error_responses(400, 401, 404, 409, 413, 422, 500),
              tags=["assignments"], summary="Give devices to a VM: atomic claims, PCI groups to vfio-pci")
    def assign(body: AssignBody) -> JSONResponse:
        res = agent.write(lambda s: service.assign(s, body.vm, body.devices, numa=body.numa,
                                                   numa_policy=body.numa_policy, vm_uuid=body.vm_uuid,
                                                   bind=body.bind, kernel=agent.kernel, count=body.count,
                                                   same_switch=body.same_switch, same_numa=body.same_numa,
                                                   allow_split=body.allow_split), refresh="assign")
        return JSONResponse(res.to_json())

    @app.post("/release", response_model=ReleaseDoc, responses=error_responses(400, 401, 404, 413, 422, 500),
              tags=["assignments"], summary="Take devices away from a VM (all, or those named)")
    def release(body: ReleaseBody) -> JSONResponse:
        out = agent.write(lambda s: release_devices(s, body.vm, body.devices, restore=body.restore,
                                                    kernel=agent.kernel), refresh="release")
        return JSONResponse({"schema": 1, "vm": body.vm, "released": [a.device for a in out]})
