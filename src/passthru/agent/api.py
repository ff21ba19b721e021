"""The agent's HTTP API (FastAPI): the CLI's verbs as endpoints over the same service layer.

Every error is JSON ``{"code": ..., "message": ...}`` (docs/agent.md lists the codes). Request bodies are checked
as a whole before anything runs (unknown fields, wrong types and malformed values are 422 naming the field), so a
bad request changes nothing; a refused or failed write rolls back what it did (the service layer's rule) and the
inventory snapshot is refreshed after every write.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Annotated, Any, Callable, Literal

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..service.session import Session
from ..errors import ConfigError, HostError, NotFoundError, PassthruError, UsageError
from ..names import UUID_PATTERN, VM_NAME_MAX, VM_NAME_PATTERN
from .core import Agent
from .gate import Gate, PayloadTooLarge, internal_doc, too_large_doc

__all__ = ["create_app", "API_VERSION"]

log = logging.getLogger("passthru.agent")
API_VERSION = 1

# -- what the API accepts -----------------------------------------------------------------------------------------
_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"
VmName = Annotated[str, StringConstraints(min_length=1, max_length=VM_NAME_MAX, pattern=VM_NAME_PATTERN)]
Spec = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=_NO_CONTROL)]
Address = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[0-9A-Fa-f:.]+$")]
Uuid = Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
SocketPath = Annotated[str, StringConstraints(min_length=2, max_length=107, pattern=r"^/[^\x00-\x1f\x7f]*$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
HexId = Annotated[str, StringConstraints(pattern=r"^(0x)?[0-9a-fA-F]{1,4}$")]
PortId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


def _integral(v: Any) -> Any:
    """JSON has one number type: 3739.0 is the integer 3739. A fraction is refused; strings and booleans are left
    to the strict integer check, which refuses them."""
    if isinstance(v, float):
        if v.is_integer():
            return int(v)
        raise PydanticCustomError("int_from_float", "Input should be a valid integer, got a number with a "
                                                    "fractional part")
    return v


# every integer field of a body is one of these two; ``Integer | None`` would validate the same but lose its bounds
# in the JSON schema (pydantic cannot move Field(ge=, le=) past a validator inside a union)
Integer = Annotated[int, BeforeValidator(_integral)]
OptionalInteger = Annotated[int | None, BeforeValidator(_integral)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class BindBody(Body):
    addresses: list[Address] = Field(min_length=1, max_length=256, description="PCI addresses, e.g. 0000:86:00.0")
    group: bool = Field(False, description="Also take the other endpoints of each IOMMU group.")
    persist: bool = Field(False, description="Re-apply at boot (and at every reconcile).")
    dry_run: bool = Field(False, description="Show what would move; change nothing.")
    force_netdev: bool = Field(False, description="Take a NIC even though it has an address or route.")
    allow_boot_vga: bool = Field(False, description="Take the boot VGA.")


class RestoreBody(Body):
    addresses: list[Address] | None = Field(None, min_length=1, max_length=256)
    all: bool = Field(False, description="Give back every device passthru holds (then leave addresses out).")


class AssignBody(Body):
    vm: VmName
    devices: list[Spec] = Field(min_length=1, max_length=64, description="0000:86:00.0 | gpu | MODEL | "
                                "usb:VVVV:PPPP[:SERIAL] | usb:BUS-PORT | serial:/dev/ttyS1 | mdev:UUID")
    numa: OptionalInteger = Field(None, ge=0, le=4095, description="Pick devices on this NUMA node.")
    numa_policy: Literal["strict", "prefer"] = "strict"
    vm_uuid: Uuid | None = None
    bind: bool = Field(True, description="Move PCI devices to vfio-pci (false: record only).")


class ReleaseBody(Body):
    vm: VmName
    devices: list[Spec] | None = Field(None, min_length=1, max_length=64, description="Default: all its devices.")
    restore: bool = Field(False, description="Give PCI devices back to their host drivers.")


class AttachBody(Body):
    vm: VmName
    devices: list[Spec] = Field(min_length=1, max_length=64)
    qmp: SocketPath = Field(description="The running VM's QMP unix socket.")
    port: PortId | None = Field(None, description="pcie-root-port id to use.")


class DetachBody(Body):
    vm: VmName
    devices: list[Spec] = Field(min_length=1, max_length=64)
    qmp: SocketPath
    keep: bool = Field(False, description="Keep the assignment (reserved) after unplugging.")


class ModelBody(Body):
    name: Name
    vendor: HexId
    device: HexId
    kind: Name = "custom"
    description: Annotated[str, StringConstraints(max_length=200, pattern=_NO_CONTROL)] | None = None


class ReconcileBody(Body):
    release_gone: bool | None = Field(None, description="Release the devices of VMs whose QEMU process is gone "
                                                        "(default: the agent's --release-gone).")


# -- what it answers (documentation of the documents; the service layer builds them) ---------------------------
class Doc(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Versioned(Doc):
    schema_: int = Field(alias="schema")


class ErrorDoc(Doc):
    code: str = Field(description="bad_request | invalid_request | not_found | conflict | refused | unauthorized | "
                                  "method_not_allowed | payload_too_large | host_error | internal")
    message: str


class FieldError(Doc):
    field: str
    location: str
    message: str
    type: str


class ValidationErrorDoc(ErrorDoc):
    errors: list[FieldError]


class LostDevice(Doc):
    identity: str
    bus: str
    kind: str
    vendor: str | None
    device: str | None
    serial: str | None
    name: str | None
    numa_node: int | None
    iommu_group: int | None
    first_seen: str
    last_seen: str
    held_by: str | None
    assignment: str | None


class DevicesDoc(Versioned):
    root: str
    iommu: dict[str, Any]
    devices: list[dict[str, Any]]
    lost: list[LostDevice] = Field(description="Devices the inventory knows that are gone from the host.")


class GroupsDoc(Versioned):
    iommu: dict[str, Any]
    groups: list[dict[str, Any]]


class UsbDoc(Versioned):
    usb: list[dict[str, Any]]


class SerialDoc(Versioned):
    serial: list[dict[str, Any]]


class DoctorDoc(Versioned):
    ok: bool
    summary: dict[str, int]
    checks: list[dict[str, Any]]


class OutcomeDoc(Versioned):
    action: str
    ok: bool
    status: str
    error: str | None
    devices: list[dict[str, Any]]
    persisted: list[str]
    warnings: list[str]


class StatusDoc(Versioned):
    held: list[dict[str, Any]]
    persisted: list[dict[str, Any]]
    operations: list[dict[str, Any]] = Field(description="Journaled binds/restores not finished (running, or "
                                                         "interrupted: POST /reconcile settles them).")


class VmDoc(Doc):
    vm: str
    vm_uuid: str | None
    devices: list[str]
    pid: int | None
    status: Literal["running", "not_running", "gone"]


class ReconcileDoc(Versioned):
    reason: str
    started: str
    bindings: dict[str, Any] | None
    vgpu: dict[str, Any] | None
    vms: list[dict[str, Any]]
    inventory: dict[str, Any] | None
    lost: list[LostDevice]
    errors: list[str]
    ok: bool
    duration_s: float


class ModelItem(Doc):
    name: str
    vendor_id: str
    device_id: str
    kind: str
    description: str | None


class ModelsDoc(Versioned):
    models: list[ModelItem]


class ModelChangeDoc(Versioned):
    name: str
    status: Literal["changed", "unchanged", "removed"]


class AssignmentDoc(Doc):
    id: int
    vm: str
    vm_uuid: str | None
    device: str
    state: str
    created: str
    updated: str
    released: str | None


class AssignmentsDoc(Versioned):
    assignments: list[AssignmentDoc]
    vms: list[VmDoc]


class AssignDoc(Versioned):
    vm: str
    assignments: list[AssignmentDoc]
    bound: list[str]


class ReleaseDoc(Versioned):
    vm: str
    released: list[str]


class AttachDoc(Versioned):
    vm: str
    attached: list[dict[str, Any]]


class DetachDoc(Versioned):
    vm: str
    detached: list[dict[str, Any]]


class EventsDoc(Versioned):
    changes: list[dict[str, Any]]


class HealthDoc(Doc):
    status: Literal["ok"]
    version: str
    generation: int


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDoc, "description": "Bad input the service layer refused (code bad_request)."},
    401: {"model": ErrorDoc, "description": "Missing or wrong bearer token (TCP listeners)."},
    404: {"model": ErrorDoc, "description": "No such device, VM holding, model or QMP socket."},
    409: {"model": ErrorDoc, "description": "Conflict: the device is held by another VM (conflict), the host "
                                           "needs it (refused, with refusals), or a state cannot change."},
    422: {"model": ValidationErrorDoc, "description": "The request does not match the schema; errors name the "
                                                      "fields."},
    413: {"model": ErrorDoc, "description": "The request body is larger than the agent's --max-body "
                                            "(payload_too_large)."},
    500: {"model": ErrorDoc, "description": "The host failed an operation (host_error; rolled back) or a bug "
                                            "(internal: a generic message with an id; the agent's log has the "
                                            "details)."},
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: _ERRORS[c] for c in codes}


# -- errors as JSON -----------------------------------------------------------------------------------------------
def error_status(e: PassthruError) -> tuple[int, str]:
    from ..inventory import ClaimError, InvalidState
    from ..vfio import RefusedError

    if isinstance(e, RefusedError):
        return 409, "refused"
    if isinstance(e, (ClaimError, InvalidState)):
        return 409, "conflict"
    if isinstance(e, NotFoundError):
        return 404, "not_found"
    if isinstance(e, (UsageError, ConfigError)):
        return 400, "bad_request"
    if isinstance(e, HostError):
        return 500, "host_error"
    return 500, "internal"


def error_doc(e: PassthruError) -> tuple[int, dict]:
    from ..vfio import RefusedError

    status, code = error_status(e)
    doc: dict[str, Any] = {"code": code, "message": str(e)}
    if isinstance(e, RefusedError):
        doc["refusals"] = [{"address": r.address, "reason": r.reason, "override": r.override,
                            "group_mate_of": r.via} for r in e.refusals]
    return status, doc


def _field_errors(errors: list[dict]) -> list[dict]:
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        where, path = (loc[0], loc[1:]) if loc else ("body", [])
        out.append({"field": ".".join(path) or where, "location": where, "message": str(err.get("msg", "")),
                    "type": str(err.get("type", ""))})
    return out


def invalid(field: str, message: str) -> RequestValidationError:
    """A 422 for a rule pydantic cannot express on one field."""
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


# -- the app ------------------------------------------------------------------------------------------------------
def _source(udev: Any, agent_host_live: bool) -> Any:
    if udev is True:
        if not agent_host_live:
            return None  # a fixture or captured root: the kernel's events are about another machine
        from .events import UdevSource

        return UdevSource  # opened at start
    return udev or None


def create_app(root: str | None = None, config_dir: str | None = None, state_dir: str | None = None, *,
               session_factory: Callable[[], Session] | None = None, kernel: Any = None, token: str | None = None,
               reconcile_on_start: bool = True, release_gone: bool = False, udev: Any = True,
               debounce: float = 0.2, max_body: int = 1 << 20) -> FastAPI:
    """The agent as an ASGI app. ``kernel``: the takeover's kernel boundary (tests: a fake one on a fixture root;
    None: the real one). ``token``: required as ``Authorization: Bearer`` on every endpoint but /health (TCP).
    ``udev``: True for the kernel's hot-plug events on the live host, False for none, or an event source
    (``events.QueueSource``). ``max_body``: the largest request body in bytes (413 above it)."""
    factory = session_factory or (lambda: Session(root, config_dir, state_dir))
    probe = factory()
    agent = Agent(factory, kernel=kernel, release_gone=release_gone,
                  event_source=_source(udev, probe.host.is_live), debounce=debounce)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        await run_in_threadpool(lambda: agent.start(reconcile=reconcile_on_start))
        try:
            yield
        finally:
            agent.stop()

    app = FastAPI(title="passthru agent", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json",
                  description="VM device passthrough for this KVM host: inventory, IOMMU groups, doctor, vfio-pci "
                              "takeover, assignments, hot plug. docs/agent.md describes it.")
    app.state.agent = agent
    app.add_middleware(Gate, agent=agent, token=token, max_body=max_body)
    _handlers(app, agent)
    _routes(app, agent)
    return app


def _handlers(app: FastAPI, agent: Agent) -> None:
    def count(code: str) -> None:
        agent.counters.add(agent.counters.errors, ("api", code))

    @app.exception_handler(PassthruError)
    async def passthru_error(_r: Request, e: PassthruError) -> JSONResponse:
        status, doc = error_doc(e)
        count(doc["code"])
        if doc["code"] == "internal":
            doc = internal_doc(e)
        elif status >= 500:
            log.error("%s", e)
        return JSONResponse(doc, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_r: Request, e: RequestValidationError) -> JSONResponse:
        errs = _field_errors(list(e.errors()))
        count("invalid_request")
        msg = "; ".join(f"{x['field']}: {x['message']}" for x in errs) or "invalid request"
        return JSONResponse({"code": "invalid_request", "message": msg, "errors": errs}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(r: Request, e: StarletteHTTPException) -> JSONResponse:
        if isinstance(e, PayloadTooLarge):  # a streamed body past --max-body, met while reading it
            count("payload_too_large")
            return JSONResponse(too_large_doc(e.limit), status_code=413, headers=e.headers)
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "bad_request")
        count(code)
        msg = {404: "no such endpoint (GET /openapi.json lists them)"}.get(e.status_code, str(e.detail))
        headers = dict(e.headers or {})
        if e.status_code == 405:  # every method the path has (one route per method: Starlette names one route's)
            routes = [rt for rt in app.routes if getattr(rt, "path_regex", None) is not None]
            first = next((rt for rt in routes if rt.path_regex.match(r.url.path)), None)  # the resource
            allowed = sorted({m for rt in routes if first is not None and rt.path == first.path
                              for m in (getattr(rt, "methods", None) or ())})
            headers["Allow"] = ", ".join(allowed)
            msg = f"{r.method} is not allowed on {r.url.path}; use {' or '.join(allowed)}"
        return JSONResponse({"code": code, "message": msg}, status_code=e.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(_r: Request, e: Exception) -> JSONResponse:  # Gate answers first; this is a backstop
        count("internal")
        return JSONResponse(internal_doc(e), status_code=500)


def _json(doc: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(doc, status_code=status)




def _routes(app: FastAPI, agent: Agent) -> None:  # noqa: C901 - one place that lists the API
    from .. import config, vfio
    from ..service import assign as service
    from ..service.hotplug import attach as hot_attach, check_qmp_socket, detach as hot_detach

    # -- reads ----------------------------------------------------------------------------------------------------
    @app.get("/health", response_model=HealthDoc, tags=["agent"], summary="Liveness (no token needed)")
    async def health() -> JSONResponse:
        snap = agent._snap
        return _json({"status": "ok", "version": __version__, "generation": snap.generation if snap else 0})

    async def cached(key: Any) -> Response:
        """A listing from the snapshot: served from memory; built in a worker thread on its first request."""
        snap = agent._snap
        data = snap.docs.get(key) if snap is not None else None
        if snap is None or data is None:
            snap, data = await run_in_threadpool(agent.doc, key)
        return Response(data, media_type="application/json",
                        headers={"x-passthru-generation": str(snap.generation)})

    @app.get("/devices", response_model=DevicesDoc, responses=_errors(400, 401, 422), tags=["inventory"],
             summary="Devices (as `passthru devices --json`) and devices gone from the host (lost)")
    async def devices(kind: Annotated[Name | None, Query(description="Only this kind: gpu, nic, nvme, usb, "
                                                                     "serial, bridge, other, or a model's kind")]
                      = None) -> Response:
        return await cached(("devices", kind))

    @app.get("/groups", response_model=GroupsDoc, responses=_errors(401), tags=["inventory"],
             summary="IOMMU groups and their viability (as `passthru groups --json`)")
    async def groups() -> Response:
        return await cached("groups")

    @app.get("/usb", response_model=UsbDoc, responses=_errors(401), tags=["inventory"],
             summary="USB devices with port paths (as `passthru usb --json`)")
    async def usb() -> Response:
        return await cached("usb")

    @app.get("/serial", response_model=SerialDoc, responses=_errors(401), tags=["inventory"],
             summary="Serial ports (as `passthru serial --json`)")
    async def serial() -> Response:
        return await cached("serial")

    @app.get("/doctor", response_model=DoctorDoc, responses=_errors(400, 401, 404, 422), tags=["inventory"],
             summary="Host (and device) checks with fixes (as `passthru doctor --json`)")
    def doctor(device: Annotated[list[Spec], Query(description="Also check these devices (PCI address, USB "
                                                               "port path, serial port).")] = []
               ) -> JSONResponse:  # noqa: B006 - FastAPI reads the default
        from ..doctor import run_doctor
        from ..lookup import resolve_device

        s = agent.snapshot().session
        inv = s.inventory()
        selected = [resolve_device(inv, d) for d in device]
        return _json(run_doctor(s.host, selected, inv, s.paths).to_json())

    @app.get("/status", response_model=StatusDoc, responses=_errors(401), tags=["takeover"],
             summary="What passthru holds on vfio-pci, and what is persisted (as `passthru status --json`)")
    def status() -> JSONResponse:
        return _json(vfio.status(agent.host, agent.paths))

    @app.get("/models", response_model=ModelsDoc, responses=_errors(401), tags=["models"],
             summary="Custom device models (models.toml)")
    def models() -> JSONResponse:
        ms = config.load_models(agent.paths.models_file)
        return _json({"schema": 1, "models": [
            {"name": m.name, "vendor_id": f"{m.vendor_id:04x}", "device_id": f"{m.device_id:04x}", "kind": m.kind,
             "description": m.description} for m in ms]})

    @app.get("/assignments", response_model=AssignmentsDoc, responses=_errors(401, 422), tags=["assignments"],
             summary="Who holds what, and whether each VM's QEMU process runs")
    def assignments(vm: Annotated[VmName | None, Query(description="Only this VM.")] = None,
                    all: Annotated[bool, Query(description="Include released assignments.")] = False  # noqa: A002
                    ) -> JSONResponse:
        from ..service.assign import _assignment_json

        rows = agent.store.assignments(vm, active=not all)
        vms = [v for v in agent.vm_status().values() if vm is None or v["vm"] == vm]
        return _json({"schema": 1, "assignments": [_assignment_json(a) for a in rows], "vms": vms})

    @app.get("/events", response_model=EventsDoc, responses=_errors(401), tags=["agent"],
             summary="Recent inventory changes (hot plug, lost devices, moved USB devices), oldest first")
    def events() -> JSONResponse:
        return _json({"schema": 1, "changes": list(agent.changes)})

    @app.get("/reconcile", response_model=ReconcileDoc, responses=_errors(401, 404), tags=["agent"],
             summary="The last reconcile's report")
    def last_reconcile() -> JSONResponse:
        if agent.last_reconcile is None:
            raise NotFoundError("no reconcile has run yet (the agent runs with --no-reconcile); POST /reconcile")
        return _json(agent.last_reconcile)

    @app.get("/metrics", tags=["agent"], responses={200: {"content": {"text/plain": {}}}, **_errors(401)},
             summary="Prometheus metrics")
    def metrics() -> Response:
        from .metrics import CONTENT_TYPE, render_metrics

        return Response(render_metrics(agent), media_type=CONTENT_TYPE)

    # -- writes ---------------------------------------------------------------------------------------------------
    @app.post("/reconcile", response_model=ReconcileDoc, responses=_errors(400, 401, 413, 422), tags=["agent"],
              summary="Re-apply persisted bindings and vGPUs, mark lost devices, check VMs")
    def reconcile(body: ReconcileBody | None = None) -> JSONResponse:
        return _json(agent.reconcile(release_gone=body.release_gone if body else None))

    @app.post("/bind", response_model=OutcomeDoc, responses=_errors(400, 401, 404, 409, 413, 422, 500),
              tags=["takeover"], summary="Take devices over for vfio-pci (as `passthru bind`)")
    def bind(body: BindBody) -> JSONResponse:
        allow = frozenset(f for f, on in (("--force-netdev", body.force_netdev),
                                          ("--allow-boot-vga", body.allow_boot_vga)) if on)
        out = agent.write(lambda s: vfio.bind(s.host, s.paths, body.addresses, group=body.group,
                                              persist=body.persist, dry_run=body.dry_run, allow=allow,
                                              kernel=agent.kernel), refresh=None if body.dry_run else "bind")
        return _json(out.to_json())

    @app.post("/restore", response_model=OutcomeDoc, responses=_errors(400, 401, 404, 413, 422, 500), tags=["takeover"],
              summary="Give devices back to their prior drivers (as `passthru restore`)")
    def restore(body: RestoreBody) -> JSONResponse:
        if bool(body.addresses) == body.all:
            raise invalid("addresses", "name the devices to give back in addresses, or set all (not both)")
        out = agent.write(lambda s: vfio.restore(s.host, s.paths, None if body.all else body.addresses,
                                                 kernel=agent.kernel), refresh="restore")
        return _json(out.to_json())

    @app.post("/models", response_model=ModelChangeDoc, responses=_errors(400, 401, 413, 422), tags=["models"],
              summary="Add a custom device model (as `passthru model add`)")
    def model_add(body: ModelBody) -> JSONResponse:
        st = agent.write(lambda s: config.add_model(s.paths.models_file, body.name, body.vendor, body.device,
                                                    body.kind, body.description), refresh="model add")
        return _json({"schema": 1, "name": body.name, "status": st})

    @app.delete("/models/{name}", response_model=ModelChangeDoc, responses=_errors(401, 404, 422),
                tags=["models"], summary="Forget a custom device model (as `passthru model remove`)")
    def model_remove(name: Name) -> JSONResponse:
        agent.write(lambda s: config.remove_model(s.paths.models_file, name), refresh="model remove")
        return _json({"schema": 1, "name": name, "status": "removed"})

    @app.post("/assign", response_model=AssignDoc, responses=_errors(400, 401, 404, 409, 413, 422, 500),
              tags=["assignments"], summary="Give devices to a VM: atomic claims, PCI groups to vfio-pci")
    def assign(body: AssignBody) -> JSONResponse:
        res = agent.write(lambda s: service.assign(s, body.vm, body.devices, numa=body.numa,
                                                   numa_policy=body.numa_policy, vm_uuid=body.vm_uuid,
                                                   bind=body.bind, kernel=agent.kernel), refresh="assign")
        return _json(res.to_json())

    @app.post("/release", response_model=ReleaseDoc, responses=_errors(400, 401, 404, 413, 422, 500),
              tags=["assignments"], summary="Take devices away from a VM (all, or those named)")
    def release(body: ReleaseBody) -> JSONResponse:
        out = agent.write(lambda s: service.release(s, body.vm, body.devices, restore=body.restore,
                                                    kernel=agent.kernel), refresh="release")
        return _json({"schema": 1, "vm": body.vm, "released": [a.device for a in out]})

    @app.post("/attach", response_model=AttachDoc, responses=_errors(400, 401, 404, 409, 413, 422, 500),
              tags=["vms"], summary="Hot-plug devices into a running VM over QMP (assigning them first if needed)")
    def attach(body: AttachBody) -> JSONResponse:
        check_qmp_socket(body.qmp)  # before the write lock: bad input changes nothing
        res = agent.write(lambda s: hot_attach(s, body.vm, body.devices, body.qmp, port=body.port,
                                                   kernel=agent.kernel), refresh="attach")
        return _json({"schema": 1, "vm": body.vm, "attached": res})

    @app.post("/detach", response_model=DetachDoc, responses=_errors(400, 401, 404, 409, 413, 422, 500),
              tags=["vms"], summary="Hot-unplug devices from a running VM, then release (or keep) them")
    def detach(body: DetachBody) -> JSONResponse:
        check_qmp_socket(body.qmp)
        res = agent.write(lambda s: hot_detach(s, body.vm, body.devices, body.qmp, keep=body.keep),
                          refresh="detach")
        return _json({"schema": 1, "vm": body.vm, "detached": res})

    _optional_routes(app, agent)


def _optional_routes(app: FastAPI, agent: Agent) -> None:
    """vGPU and SR-IOV VF endpoints, when this passthru has those modules (see vgpu.py)."""
    try:
        from .extra import add_routes
    except ImportError:
        return
    add_routes(app, agent, _errors, invalid)


def openapi_document() -> dict:
    """The schema docs/openapi.json commits (``python -m passthru.agent.api > docs/openapi.json``)."""
    return create_app("/nonexistent", udev=False, reconcile_on_start=False).openapi()


if __name__ == "__main__":
    import json
    import sys

    sys.stdout.write(json.dumps(openapi_document(), indent=2, sort_keys=False) + "\n")
