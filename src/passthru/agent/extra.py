"""vGPU and SR-IOV VF endpoints: thin wrappers over ``passthru.service.vgpu`` and ``passthru.kinds.nic_vf.vfcount`` /
``passthru.kinds.nic_vf`` (the same functions as ``passthru vgpu ...`` and ``passthru vf ...``). Added by
``api.create_app`` when those modules are importable."""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse
from pydantic import Field, StringConstraints

from .api import Body, Integer, OptionalInteger, Uuid, Versioned, VmName
from .core import Agent

__all__ = ["add_routes"]

_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"
Text = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_NO_CONTROL)]
VgpuId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[0-9A-Fa-f:.-]+$")]
PfName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/@-]+$")]
Mac = Annotated[str, StringConstraints(pattern=r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")]


class VgpuCreateBody(Body):
    type: Text = Field(description="Type id (nvidia-224, mtty-2) or name (GRID T4-1Q).")
    parent: Text | None = Field(None, description="An mdev_bus parent (0000:af:00.0, mtty) or an NVIDIA vGPU PF/VF; "
                                                  "default: any parent offering the type.")
    uuid: Uuid | None = Field(None, description="The mdev's UUID (default: a new one).")
    persist: bool = Field(False, description="Re-create at boot and at every reconcile.")
    placement: Literal["pack", "spread"] = "pack"
    vm: VmName | None = Field(None, description="Assign it to this VM now; removed when the VM releases it.")
    dry_run: bool = False


class VfCountBody(Body):
    pf: PfName = Field(description="PCI address, interface or devlink handle of the PF.")
    count: OptionalInteger = Field(None, ge=0, le=4096, description="VFs wanted (0 removes them); or restore.")
    autoprobe: bool | None = Field(None, description="sriov_drivers_autoprobe: false keeps host drivers off new VFs.")
    restore: bool = Field(False, description="Back to the count and autoprobe passthru found.")
    force: bool = Field(False, description="Destroy VFs even though they are in use.")
    dry_run: bool = False


class VfSetBody(Body):
    pf: PfName
    vf: Integer = Field(ge=0, le=4095, description="VF index.")
    mac: Mac | None = None
    vlan: OptionalInteger = Field(None, ge=0, le=4095)
    qos: OptionalInteger = Field(None, ge=0, le=7)
    spoofchk: bool | None = None
    trust: bool | None = None
    min_tx_rate: OptionalInteger = Field(None, ge=0, le=0xFFFFFFFE, description="Mbit/s")
    max_tx_rate: OptionalInteger = Field(None, ge=0, le=0xFFFFFFFE, description="Mbit/s (0: none)")
    link_state: Literal["auto", "enable", "disable"] | None = None
    dry_run: bool = False


class VfResetBody(Body):
    pf: PfName
    vf: Integer = Field(ge=0, le=4095)
    dry_run: bool = False


class VgpuTypesDoc(Versioned):
    parents: list[dict[str, Any]]


class VgpuListDoc(Versioned):
    vgpus: list[dict[str, Any]]


class VgpuOutcomeDoc(Versioned):
    action: str
    ok: bool
    error: str | None
    vgpus: list[dict[str, Any]]


class VfListDoc(Versioned):
    pfs: list[dict[str, Any]]


class VfCountDoc(Versioned):
    status: str
    before: int
    after: int
    steps: list[str]
    vfs: list[str]
    warnings: list[str]


class VfResultDoc(Versioned):
    vf: int
    status: str
    messages: list[dict[str, Any]]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    prior: dict[str, Any]
    warnings: list[str]


def _kernel(agent: Agent, cls: type | None) -> Any:
    """The injected kernel when it can do this job (a test double for fixture roots), else None (the real one)."""
    return agent.kernel if cls is not None and isinstance(agent.kernel, cls) else None


def add_routes(app: FastAPI, agent: Agent, errors: Callable[..., dict], invalid: Callable[..., Exception]) -> None:
    _vgpu(app, agent, errors)
    _vf(app, agent, errors, invalid)


def _vgpu(app: FastAPI, agent: Agent, errors: Callable[..., dict]) -> None:
    try:
        from ..service import vgpu as mdev
    except ImportError:
        return

    @app.get("/vgpu/types", response_model=VgpuTypesDoc, responses=errors(400, 401, 404, 422), tags=["vgpu"],
             summary="vGPU parents and their types, with available instances (as `passthru vgpu types`)")
    def vgpu_types(parent: Annotated[Text | None, Query(description="Only this parent.")] = None) -> JSONResponse:
        return JSONResponse(mdev.types_doc(agent.host, parent))

    @app.get("/vgpu/instances", response_model=VgpuListDoc, responses=errors(401), tags=["vgpu"],
             summary="vGPU instances: live, persisted, made by passthru (as `passthru vgpu list`)")
    def vgpu_list() -> JSONResponse:
        return JSONResponse({"schema": 1, "vgpus": mdev.list_vgpus(agent.host, agent.paths)})

    @app.post("/vgpu/instances", response_model=VgpuOutcomeDoc, responses=errors(400, 401, 404, 409, 413, 422, 500),
              tags=["vgpu"], summary="Create a vGPU (as `passthru vgpu create`)")
    def vgpu_create(body: VgpuCreateBody) -> JSONResponse:
        k = _kernel(agent, mdev.MdevKernel)
        r = agent.write(lambda s: mdev.create(s.host, s.paths, body.parent, body.type, uuid=body.uuid,
                                              persist=body.persist, placement=body.placement, vm=body.vm,
                                              dry_run=body.dry_run, kernel=k),
                        refresh=None if body.dry_run else "vgpu create")
        return JSONResponse(mdev.VgpuOutcome("create", [r]).to_json())

    @app.delete("/vgpu/instances/{ident}", response_model=VgpuOutcomeDoc, responses=errors(400, 401, 404, 422, 500),
                tags=["vgpu"], summary="Remove a vGPU and its persisted definition (as `passthru vgpu remove`)")
    def vgpu_remove(ident: VgpuId, keep_definition: bool = False, dry_run: bool = False) -> JSONResponse:
        k = _kernel(agent, mdev.MdevKernel)
        r = agent.write(lambda s: mdev.remove(s.host, s.paths, ident, keep_definition=keep_definition,
                                              dry_run=dry_run, kernel=k),
                        refresh=None if dry_run else "vgpu remove")
        return JSONResponse(mdev.VgpuOutcome("remove", [r]).to_json())


def _vf(app: FastAPI, agent: Agent, errors: Callable[..., dict], invalid: Callable[..., Exception]) -> None:
    try:
        from ..kinds.nic_vf import vfcount as sriov
        from ..kinds import nic_vf
    except ImportError:
        return

    @app.get("/vf", response_model=VfListDoc, responses=errors(400, 401, 404, 422), tags=["vf"],
             summary="SR-IOV PFs and their VFs with settings (as `passthru vf list`)")
    def vf_list(pf: Annotated[PfName | None, Query(description="One PF (default: every SR-IOV PF).")] = None
                ) -> JSONResponse:
        return JSONResponse(nic_vf.list_vfs(agent.host, agent.paths, pf))

    @app.post("/vf/count", response_model=VfCountDoc, responses=errors(400, 401, 404, 413, 422, 500), tags=["vf"],
              summary="Set a PF's number of VFs, through 0 (as `passthru vf count`)")
    def vf_count(body: VfCountBody) -> JSONResponse:
        if (body.count is None) == (not body.restore):
            raise invalid("count", "give the number of VFs, or restore (not both)")
        k = _kernel(agent, sriov.SriovKernel)
        out = agent.write(lambda s: sriov.count_vfs(s.host, s.paths, body.pf, body.count, force=body.force,
                                                    autoprobe=body.autoprobe, restore=body.restore,
                                                    dry_run=body.dry_run, kernel=k),
                          refresh=None if body.dry_run else "vf count")
        return JSONResponse(out.to_json())

    @app.post("/vf/set", response_model=VfResultDoc, responses=errors(400, 401, 404, 413, 422, 500), tags=["vf"],
              summary="Set a VF's MAC, VLAN, QoS, spoof check, trust, rates or link state (as `passthru vf set`)")
    def vf_set(body: VfSetBody) -> JSONResponse:
        options = body.model_dump(exclude={"pf", "vf", "dry_run"})
        if all(v is None for v in options.values()):
            raise invalid("mac", "nothing to set: give mac, vlan, qos, spoofchk, trust, min_tx_rate, max_tx_rate "
                                 "or link_state")
        out = agent.write(lambda s: nic_vf.set_vf(s.host, s.paths, body.pf, body.vf, options, dry_run=body.dry_run))
        return JSONResponse(out.to_json())

    @app.post("/vf/reset", response_model=VfResultDoc, responses=errors(400, 401, 404, 413, 422, 500), tags=["vf"],
              summary="Put back the VF settings passthru recorded (as `passthru vf reset`)")
    def vf_reset(body: VfResetBody) -> JSONResponse:
        out = agent.write(lambda s: nic_vf.reset_vf(s.host, s.paths, body.pf, body.vf, dry_run=body.dry_run))
        return JSONResponse(out.to_json())
