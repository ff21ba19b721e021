"""vGPUs (tag vgpu): thin wrappers over ``passthru.mdev``, the same functions as ``passthru vgpu ...``."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from ...service import vgpu as mdev
from ..schemas import Text, VgpuCreateBody, VgpuId, VgpuListDoc, VgpuOutcomeDoc, VgpuTypesDoc, error_responses
from ..state import Agent

__all__ = ["add_routes"]


def add_routes(app: FastAPI, agent: Agent) -> None:
    """GET /vgpu/types, /vgpu/instances; POST /vgpu/instances; DELETE /vgpu/instances/{ident}"""

    @app.get("/vgpu/types", response_model=VgpuTypesDoc, responses=error_responses(400, 401, 404, 422), tags=["vgpu"],
             summary="vGPU parents and their types, with available instances (as `passthru vgpu types`)")
    def vgpu_types(parent: Annotated[Text | None, Query(description="Only this parent.")] = None) -> JSONResponse:
        return JSONResponse(mdev.types_doc(agent.host, parent))

    @app.get("/vgpu/instances", response_model=VgpuListDoc, responses=error_responses(401), tags=["vgpu"],
             summary="vGPU instances: live, persisted, made by passthru (as `passthru vgpu list`)")
    def vgpu_list() -> JSONResponse:
        return JSONResponse({"schema": 1, "vgpus": mdev.list_vgpus(agent.host, agent.paths)})

    @app.post("/vgpu/instances", response_model=VgpuOutcomeDoc,
              responses=error_responses(400, 401, 404, 409, 413, 422, 500), tags=["vgpu"],
              summary="Create a vGPU (as `passthru vgpu create`)")
    def vgpu_create(body: VgpuCreateBody) -> JSONResponse:
        k = agent.kernel_for(mdev.MdevKernel)
        r = agent.write(lambda s: mdev.create(s.host, s.paths, body.parent, body.type, uuid=body.uuid,
                                              persist=body.persist, placement=body.placement, vm=body.vm,
                                              dry_run=body.dry_run, kernel=k),
                        refresh=None if body.dry_run else "vgpu create")
        return JSONResponse(mdev.VgpuOutcome("create", [r]).to_json())

    @app.delete("/vgpu/instances/{ident}", response_model=VgpuOutcomeDoc,
                responses=error_responses(400, 401, 404, 422, 500), tags=["vgpu"],
                summary="Remove a vGPU and its persisted definition (as `passthru vgpu remove`)")
    def vgpu_remove(ident: VgpuId, keep_definition: bool = False, dry_run: bool = False) -> JSONResponse:
        k = agent.kernel_for(mdev.MdevKernel)
        r = agent.write(lambda s: mdev.remove(s.host, s.paths, ident, keep_definition=keep_definition,
                                              dry_run=dry_run, kernel=k),
                        refresh=None if dry_run else "vgpu remove")
        return JSONResponse(mdev.VgpuOutcome("remove", [r]).to_json())
