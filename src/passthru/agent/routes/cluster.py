"""The cluster (tag cluster), when the agent runs with ``--cluster URL``: this host's membership, and what
``passthru cluster`` does from any host — place, release, fence, and the listings — over the same service layer."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse
from pydantic import Field, StringConstraints

from ...errors import NotFoundError
from ...service import cluster as service
from ..schemas import Body, Integer, Spec, VmName, error_responses
from ..state import Agent

__all__ = ["add_routes"]

HostName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class PlaceBody(Body):
    vm: VmName
    specs: list[Spec] = Field(min_length=1, max_length=16, description="gpu | a100 (a model) | 10de:20b5")
    count: Integer = Field(1, ge=1, le=64, description="How many devices of each spec.")
    same_numa: bool = Field(False, description="All on one NUMA node.")
    same_switch: bool = Field(False, description="All behind one PCIe switch.")
    host: HostName | None = Field(None, description="Only on this host.")


class VmBody(Body):
    vm: VmName


class HostBody(Body):
    host: HostName


def _cs(agent: Agent):  # type: ignore[no-untyped-def]
    if agent.membership is None:
        raise NotFoundError("this agent is not in a cluster; start it with `passthru serve --cluster URL`")
    return agent.membership.cs


def add_routes(app: FastAPI, agent: Agent) -> None:
    """GET /cluster, /cluster/hosts, /cluster/devices, /cluster/allocations; POST /cluster/place, /cluster/release,
    /cluster/fence"""
    errs = error_responses(401, 404, 500)

    @app.get("/cluster", responses=errs, tags=["cluster"], summary="This host in the cluster: epoch, last reconcile")
    def membership() -> JSONResponse:
        _cs(agent)
        return JSONResponse(agent.membership.doc())

    @app.get("/cluster/hosts", responses=errs, tags=["cluster"], summary="The hosts, their state and free devices")
    def hosts() -> JSONResponse:
        return JSONResponse({"schema": 1, "hosts": service.hosts(_cs(agent))})

    @app.get("/cluster/devices", responses=error_responses(401, 404, 422, 500), tags=["cluster"],
             summary="Every host's devices and who holds them")
    def devices(free: Annotated[bool, Query(description="Only devices a placement could take now.")] = False,
                host: Annotated[HostName | None, Query(description="Only this host's.")] = None) -> JSONResponse:
        return JSONResponse({"schema": 1, "devices": service.devices(_cs(agent), free=free, host=host)})

    @app.get("/cluster/allocations", responses=error_responses(401, 404, 422, 500), tags=["cluster"],
             summary="Which VM holds which device on which host")
    def allocations(vm: Annotated[VmName | None, Query(description="Only this VM.")] = None,
                    all: Annotated[bool, Query(description="Released ones too.")] = False  # noqa: A002
                    ) -> JSONResponse:
        return JSONResponse({"schema": 1, "allocations": service.allocations(_cs(agent), every=all, vm=vm)})

    @app.post("/cluster/place", responses=error_responses(400, 401, 404, 409, 413, 422, 500), tags=["cluster"],
              summary="Pick a host and devices for a VM and reserve them (one transaction)")
    def place(body: PlaceBody) -> JSONResponse:
        out = service.place(_cs(agent), body.vm, body.specs, count=body.count, same_numa=body.same_numa,
                            same_switch=body.same_switch, host=body.host)
        return JSONResponse({"schema": 1, **out})

    @app.post("/cluster/release", responses=error_responses(400, 401, 404, 413, 422, 500), tags=["cluster"],
              summary="Give back every device a VM holds in the cluster")
    def release(body: VmBody) -> JSONResponse:
        return JSONResponse({"schema": 1, "vm": body.vm, "released": service.release(_cs(agent), body.vm)})

    @app.post("/cluster/fence", responses=error_responses(400, 401, 404, 413, 422, 500), tags=["cluster"],
              summary="A host is gone: down, a new epoch, its allocations released")
    def fence(body: HostBody) -> JSONResponse:
        return JSONResponse({"schema": 1, **service.fence(_cs(agent), body.host)})
