"""CLI verbs of vGPUs: ``passthru vgpu types|list|create|remove|start-persisted``."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ..service.session import Session
from ..service.listings import emit_json
from ..errors import UsageError
from .output import console, table, text

_JSON = typer.Option("--json", help="Print the JSON document.")
vgpu_app = typer.Typer(
    name="vgpu", no_args_is_help=True, rich_markup_mode=None,
    help="vGPUs: mediated devices (mdev, any parent in /sys/class/mdev_bus) and NVIDIA SR-IOV vGPU VFs.\n\n"
         "Examples:\n\n"
         "  passthru vgpu types                       # parents, types, available instances\n\n"
         "  passthru vgpu create 0000:af:00.0 nvidia-224 --persist\n\n"
         "  passthru vgpu create 'GRID T4-1Q' --placement spread   # any parent offering the type\n\n"
         "  passthru vgpu remove 4b6a7c3e-1f2d-4e5a-9b8c-0d1e2f3a4b5c")


@vgpu_app.command("types")
def types(
    ctx: typer.Context,
    parent: Annotated[Optional[str], typer.Argument(
        help="Only this parent: an mdev_bus name (0000:af:00.0, mtty) or an NVIDIA vGPU PF/VF.")] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """vGPU parents and their types: name, description, available instances.

    Examples: `passthru vgpu types`, `passthru vgpu types 0000:af:00.0 --json`.
    """
    from ..service.vgpu import types_doc

    c: Session = ctx.obj
    doc = types_doc(c.host, parent)
    if as_json:
        emit_json(doc)
        return
    if not doc["parents"]:
        print("no vGPU parents on this host: none in /sys/class/mdev_bus and no GPU VF with nvidia/"
              "creatable_vgpu_types (load the vendor's vGPU host driver; AMD SR-IOV GPUs: assign their VFs)")
        return
    t = table(None, ["PARENT", "BUS", "TYPE", "NAME", "AVAILABLE", "INSTANCES", "API", "DESCRIPTION"],
               drop=("DESCRIPTION", "API", "BUS", "INSTANCES"))
    for p in doc["parents"]:
        bus = p["bus"] + (" (SR-IOV VFs)" if p["mode"] == "nvidia-sriov" else "")
        for ty in p["types"]:
            n = sum(1 for i in p["instances"] if i["type"] == ty["id"])
            t.add_row(p["parent"], bus, ty["id"], text(ty["name"]), text(ty["available_instances"]), str(n),
                      text(ty["device_api"]), text(ty["description"]))
        if not p["types"]:
            t.add_row(p["parent"], bus, "-", "-", "-", str(len(p["instances"])), "-", "offers no types now")
    console().print(t)


def _positional(args: list[str]) -> tuple[str | None, str]:
    if len(args) == 1:
        return None, args[0]
    if len(args) == 2:
        return args[0], args[1]
    raise UsageError("give the type, or the parent and the type: `passthru vgpu create [PARENT] TYPE`")


def _line(r) -> str:
    name = f" ({r.type_name})" if r.type_name else ""
    what = "mdev" if r.mode == "mdev" else "vGPU VF"
    where = f" on {r.parent}"
    dev = f"; sysfsdev /sys/bus/mdev/devices/{r.id}" if r.mode == "mdev" and r.status != "undefined" else ""
    note = f"; {r.note}" if r.note else ""
    vm = f"; assigned to {r.vm} (removed when it releases it)" if r.vm else ""
    return f"{what} {r.id}: {r.status} {r.mdev_type}{name}{where}{dev}{vm}{note}"


@vgpu_app.command("create")
def create(
    ctx: typer.Context,
    args: Annotated[list[str], typer.Argument(metavar="[PARENT] TYPE", help="Type id or name, after an optional "
                                              "parent (an mdev_bus name, or an NVIDIA vGPU PF or VF).")],
    uuid: Annotated[Optional[str], typer.Option("--uuid", metavar="UUID",
                                                help="The mdev's UUID [default: a new one].")] = None,
    persist: Annotated[bool, typer.Option("--persist", help="Re-create at boot (vgpu start-persisted).")] = False,
    placement: Annotated[str, typer.Option("--placement", help="Without PARENT: pack (fill one parent first) or "
                                           "spread (the parent with the fewest instances).")] = "pack",
    vm: Annotated[Optional[str], typer.Option("--vm", help="Assign it to this VM now; removed when the VM releases "
                                              "it.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show where it would go; change nothing.")] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Create a vGPU: an mdev instance (UUID written to the type's `create`), or an NVIDIA SR-IOV VF's vGPU type.

    Refused (exit 2, nothing changed): an unknown type or parent, no capacity, a bad or taken UUID. Examples:
    `passthru vgpu create mtty mtty-2 --persist`, `passthru vgpu create nvidia-224 --placement spread`,
    `passthru vgpu create 0000:d8:00.0 A100-4C --vm vm1`.
    """
    from ..service.vgpu import VgpuOutcome
    from ..service.vgpu import create as do_create

    c: Session = ctx.obj
    parent, type_text = _positional(args)
    r = do_create(c.host, c.paths, parent, type_text, uuid=uuid, persist=persist, placement=placement, vm=vm,
                  dry_run=dry_run)
    if as_json:
        emit_json(VgpuOutcome("create", [r]).to_json())
        return
    print(_line(r))
    if r.persisted:
        print(f"{r.id}: persisted in {c.paths.config_dir}/mdev.d/{r.parent}/ (re-created at boot by "
              "`passthru vgpu start-persisted`)")


@vgpu_app.command("remove")
def remove(
    ctx: typer.Context,
    ident: Annotated[str, typer.Argument(metavar="UUID", help="The mdev UUID, or the address of an NVIDIA vGPU VF.")],
    keep_definition: Annotated[bool, typer.Option("--keep-definition", help="Keep the persisted definition (it "
                                                  "comes back at boot).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go; change nothing.")] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Remove a vGPU (`1` to its `remove`; an SR-IOV VF gets its prior type back) and its persisted definition.

    Refused while a VM holds it (`passthru release` first). Example: `passthru vgpu remove 4b6a7c3e-...`.
    """
    from ..service.vgpu import VgpuOutcome
    from ..service.vgpu import remove as do_remove

    c: Session = ctx.obj
    r = do_remove(c.host, c.paths, ident, keep_definition=keep_definition, dry_run=dry_run)
    if as_json:
        emit_json(VgpuOutcome("remove", [r]).to_json())
    else:
        print(_line(r))


@vgpu_app.command("list")
def list_(ctx: typer.Context, as_json: Annotated[bool, _JSON] = False) -> None:
    """vGPU instances: live ones, definitions (passthru's and mdevctl's /etc/mdevctl.d), and which passthru made (and
    for which VM). Example: `passthru vgpu list --json`.
    """
    from ..service.vgpu import list_vgpus

    c: Session = ctx.obj
    rows = list_vgpus(c.host, c.paths)
    if as_json:
        emit_json({"schema": 1, "vgpus": rows})
        return
    if not rows:
        print("no vGPU instances (create one with `passthru vgpu create [PARENT] TYPE`)")
        return
    t = table(None, ["ID", "PARENT", "TYPE", "NAME", "GROUP", "STATUS"], drop=("GROUP", "NAME"))
    for r in rows:
        t.add_row(r["id"], r["parent"], text(r["mdev_type"]), text(r["type_name"]), text(r["iommu_group"]), _status(r))
    console().print(t)


def _status(r: dict) -> str:
    """"live; at boot: mdevctl (auto); made by passthru for vm1" - what `vgpu list` knows of one vGPU, in words."""
    out = ["live" if r["live"] else "not live"]
    ctl, pt = r.get("mdevctl"), r["passthru"]
    if r["persisted"]:
        out.append("at boot: passthru")
    if ctl is not None:
        start = {"auto": "at boot", "manual": "on `mdevctl start`"}.get(ctl["start"] or "", ctl["start"] or "?")
        differs = " as " + text(ctl["mdev_type"]) if ctl["mdev_type"] != r["mdev_type"] else ""
        out.append(f"defined by mdevctl{differs} ({start})" if not ctl["problem"] else
                   f"mdevctl file unreadable: {ctl['problem']} ({ctl['path']})")
    if pt is not None:
        out.append(f"made by passthru for {pt['vm']}" if pt["vm"] else "made by passthru")
        if pt["phase"] != "created":
            out.append(f"{pt['phase']} (interrupted: the next vgpu command settles it)")
    return "; ".join(out)


@vgpu_app.command("start-persisted")
def start_persisted(
    ctx: typer.Context,
    parent: Annotated[Optional[str], typer.Option("--parent", help="Only this parent's definitions (for a hook "
                                                  "that runs when the parent's driver registers it).")] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Re-create persisted vGPUs that are not live (run at boot, after the vendor driver; part of apply-boot).

    Exit 1 when one could not be started (the others still are). Examples: `passthru vgpu start-persisted`,
    `passthru vgpu start-persisted --parent 0000:af:00.0`.
    """
    from ..service.vgpu import start_persisted as do_start

    c: Session = ctx.obj
    out = do_start(c.host, c.paths, parent=parent)
    if as_json:
        emit_json(out.to_json())
    else:
        for r in out.items:
            print(_line(r))
        if not out.items:
            print("no persisted vGPUs")
    if out.error:
        if not as_json:
            print(f"passthru: {out.error}", file=sys.stderr)
        raise typer.Exit(1)
