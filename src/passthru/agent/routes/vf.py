"""SR-IOV VFs (tag vf): thin wrappers over ``passthru.sriov`` and ``passthru.kinds.nic_vf``, the same functions
as ``passthru vf ...``."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from ...kinds.nic_vf import vfcount as sriov
from ...kinds import nic_vf
from ..error_handlers import invalid
from ..schemas import PfName, VfCountBody, VfCountDoc, VfListDoc, VfResetBody, VfResultDoc, VfSetBody, error_responses
from ..state import Agent

__all__ = ["add_routes"]


def add_routes(app: FastAPI, agent: Agent) -> None:
    """GET /vf; POST /vf/count, /vf/set, /vf/reset"""

    @app.get("/vf", response_model=VfListDoc, responses=error_responses(400, 401, 404, 422), tags=["vf"],
             summary="SR-IOV PFs and their VFs with settings (as `passthru vf list`)")
    def vf_list(pf: Annotated[PfName | None, Query(description="One PF (default: every SR-IOV PF).")] = None
                ) -> JSONResponse:
        return JSONResponse(nic_vf.list_vfs(agent.host, agent.paths, pf))

    @app.post("/vf/count", response_model=VfCountDoc, responses=error_responses(400, 401, 404, 413, 422, 500),
              tags=["vf"], summary="Set a PF's number of VFs, through 0 (as `passthru vf count`)")
    def vf_count(body: VfCountBody) -> JSONResponse:
        if (body.count is None) == (not body.restore):
            raise invalid("count", "give the number of VFs, or restore (not both)")
        k = agent.kernel_for(sriov.SriovKernel)
        out = agent.write(lambda s: sriov.count_vfs(s.host, s.paths, body.pf, body.count, force=body.force,
                                                    autoprobe=body.autoprobe, restore=body.restore,
                                                    dry_run=body.dry_run, kernel=k),
                          refresh=None if body.dry_run else "vf count")
        return JSONResponse(out.to_json())

    @app.post("/vf/set", response_model=VfResultDoc, responses=error_responses(400, 401, 404, 413, 422, 500),
              tags=["vf"],
              summary="Set a VF's MAC, VLAN, QoS, spoof check, trust, rates or link state (as `passthru vf set`)")
    def vf_set(body: VfSetBody) -> JSONResponse:
        options = body.model_dump(exclude={"pf", "vf", "dry_run"})
        if all(v is None for v in options.values()):
            raise invalid("mac", "nothing to set: give mac, vlan, qos, spoofchk, trust, min_tx_rate, max_tx_rate "
                                 "or link_state")
        out = agent.write(lambda s: nic_vf.set_vf(s.host, s.paths, body.pf, body.vf, options, dry_run=body.dry_run))
        return JSONResponse(out.to_json())

    @app.post("/vf/reset", response_model=VfResultDoc, responses=error_responses(400, 401, 404, 413, 422, 500),
              tags=["vf"], summary="Put back the VF settings passthru recorded (as `passthru vf reset`)")
    def vf_reset(body: VfResetBody) -> JSONResponse:
        out = agent.write(lambda s: nic_vf.reset_vf(s.host, s.paths, body.pf, body.vf, dry_run=body.dry_run))
        return JSONResponse(out.to_json())
