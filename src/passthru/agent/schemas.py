"""The agent's wire types (pydantic): what each endpoint accepts and what it answers, and the error answers each
may give. docs/openapi.json is generated from these (``python -m passthru.agent.app``).

Request bodies are checked as a whole before anything runs: unknown fields, wrong types and malformed values are a
422 naming the field, so a bad request changes nothing. The answer documents are built by the service layer; these
classes describe them for the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from ..names import UUID_PATTERN, VM_NAME_MAX, VM_NAME_PATTERN

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

Text = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_NO_CONTROL)]
VgpuId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[0-9A-Fa-f:.-]+$")]
PfName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/@-]+$")]
Mac = Annotated[str, StringConstraints(pattern=r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")]


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
    count: Integer = Field(1, ge=1, le=64, description="How many devices of each kind/model spec.")
    same_switch: bool = Field(False, description="Kind/model picks all behind one PCIe switch (or root port).")
    same_numa: bool = Field(False, description="Kind/model picks all on one NUMA node.")
    allow_split: bool = Field(False, description="When none holds them all, take the best split.")


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


# -- the error answers an endpoint may give (its OpenAPI responses) ---------------------------------------------
ERRORS: dict[int | str, dict[str, Any]] = {
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


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that may answer these error statuses."""
    return {c: ERRORS[c] for c in codes}

