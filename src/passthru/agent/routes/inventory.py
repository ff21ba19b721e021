"""Listings of the host (tag inventory): devices, IOMMU groups, USB, serial ports, doctor. The listings are
served from the agent's snapshot; doctor runs on it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from ...doctor import run_doctor
from ...lookup import resolve_device
from ..schemas import DevicesDoc, DoctorDoc, GroupsDoc, Name, SerialDoc, Spec, UsbDoc, error_responses
from ..state import Agent

__all__ = ["add_reads"]


def add_reads(app: FastAPI, agent: Agent) -> None:
    """GET /devices, /groups, /usb, /serial, /doctor"""

    async def cached(key: Any) -> Response:
        """A listing from the snapshot: served from memory; built in a worker thread on its first request."""
        snap = agent.current
        data = snap.docs.get(key) if snap is not None else None
        if snap is None or data is None:
            snap, data = await run_in_threadpool(agent.doc, key)
        return Response(data, media_type="application/json",
                        headers={"x-passthru-generation": str(snap.generation)})

    @app.get("/devices", response_model=DevicesDoc, responses=error_responses(400, 401, 422), tags=["inventory"],
             summary="Devices (as `passthru devices --json`) and devices gone from the host (lost)")
    async def devices(kind: Annotated[Name | None, Query(description="Only this kind: gpu, nic, nvme, usb, "
                                                                     "serial, bridge, other, or a model's kind")]
                      = None) -> Response:
        return await cached(("devices", kind))

    @app.get("/groups", response_model=GroupsDoc, responses=error_responses(401), tags=["inventory"],
             summary="IOMMU groups and their viability (as `passthru groups --json`)")
    async def groups() -> Response:
        return await cached("groups")

    @app.get("/usb", response_model=UsbDoc, responses=error_responses(401), tags=["inventory"],
             summary="USB devices with port paths (as `passthru usb --json`)")
    async def usb() -> Response:
        return await cached("usb")

    @app.get("/serial", response_model=SerialDoc, responses=error_responses(401), tags=["inventory"],
             summary="Serial ports (as `passthru serial --json`)")
    async def serial() -> Response:
        return await cached("serial")

    @app.get("/doctor", response_model=DoctorDoc, responses=error_responses(400, 401, 404, 422), tags=["inventory"],
             summary="Host (and device) checks with fixes (as `passthru doctor --json`)")
    def doctor(device: Annotated[list[Spec], Query(description="Also check these devices (PCI address, USB "
                                                               "port path, serial port).")] = []
               ) -> JSONResponse:  # noqa: B006 - FastAPI reads the default
        s = agent.snapshot().session
        inv = s.inventory()
        selected = [resolve_device(inv, d) for d in device]
        return JSONResponse(run_doctor(s.host, selected, inv, s.paths).to_json())
