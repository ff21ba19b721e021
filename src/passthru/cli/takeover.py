"""CLI verbs of device takeover: bind, restore, status, reconcile, apply-boot."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..service.session import Session
from ..service.listings import emit_json
from ..errors import UsageError
from .output import console

_JSON = typer.Option("--json", help="Print the JSON document.")


def _print(out, as_json: bool) -> None:
    if as_json:
        emit_json(out.to_json())
        return
    con = console()
    for d in out.devices:
        mate = f" (group mate of {d.mate_of})" if d.mate_of else ""
        move = f"{d.before or 'no driver'} -> {d.after or 'no driver'}"
        note = f": {d.note}" if d.note else ""
        con.print(f"{d.address}{mate}: {d.status} ({move}){note}", markup=False)
    for w in out.warnings:
        con.print(f"warning: {w}", markup=False)
    for a in out.persisted:
        con.print(f"{a}: persisted (re-applied at boot by passthru-apply-boot.service)", markup=False)
    if not out.devices:
        con.print("nothing to do", markup=False)


def _refused(e, as_json: bool) -> None:
    from ..vfio import RefusedError

    if as_json and isinstance(e, RefusedError):
        emit_json({"schema": 1, "ok": False, "error": str(e), "refusals": e.refusals_json()})


def bind(
    ctx: typer.Context,
    addresses: Annotated[list[str], typer.Argument(metavar="ADDRESS...", help="PCI addresses, e.g. 0000:42:00.0.")],
    group: Annotated[bool, typer.Option("--group", help="Also take the other endpoints of each IOMMU group.")] = False,
    persist: Annotated[bool, typer.Option("--persist", help="Re-apply at boot (passthru apply-boot).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would move; change nothing.")] = False,
    force_netdev: Annotated[bool, typer.Option(
        "--force-netdev", help="Take a NIC even though it has an address or route.")] = False,
    allow_boot_vga: Annotated[bool, typer.Option(
        "--allow-boot-vga", help="Take the boot VGA (the host loses its console display).")] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Take devices over for vfio-pci, per device address; whole IOMMU groups with --group.

    Refuses (exit 2, nothing changed) devices the host needs: the boot VGA, disks with mounted filesystems or swap,
    NICs with an address or route, the console, a PF whose VFs are in use. If a step fails, every device goes back
    to its driver. Examples: `passthru bind 0000:86:00.0 --group`, `passthru bind 0000:5e:00.0 --persist`,
    `passthru bind 0000:86:00.0 --group --dry-run --json`.
    """
    from ..vfio import RefusedError
    from ..vfio import bind as do_bind

    c: Session = ctx.obj
    allow = frozenset(f for f, on in (("--force-netdev", force_netdev), ("--allow-boot-vga", allow_boot_vga)) if on)
    try:
        out = do_bind(c.host, c.paths, addresses, group=group, persist=persist, dry_run=dry_run, allow=allow)
    except RefusedError as e:
        _refused(e, as_json)
        raise
    _print(out, as_json)


def restore(
    ctx: typer.Context,
    addresses: Annotated[Optional[list[str]], typer.Argument(metavar="[ADDRESS...]")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Give back every device passthru holds.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go back; change nothing.")] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Give devices back to the driver they had before `passthru bind` (and drop their boot persistence).

    A device's held IOMMU group mates go back with it. Examples: `passthru restore 0000:86:00.0`,
    `passthru restore --all`, `passthru restore --all --dry-run`.
    """
    from ..vfio import restore as do_restore

    if bool(addresses) == all_:
        raise UsageError("name the devices to give back, or --all (not both)")
    c: Session = ctx.obj
    out = do_restore(c.host, c.paths, None if all_ else addresses, dry_run=dry_run)
    _print(out, as_json)
    if dry_run and not as_json:
        console().print("dry run: nothing was changed", markup=False)


def status(ctx: typer.Context, as_json: Annotated[bool, _JSON] = False) -> None:
    """What passthru holds (prior drivers, the driver now), and what is persisted for boot.

    Example: `passthru status --json`.
    """
    from ..vfio import status as do_status

    c: Session = ctx.obj
    doc = do_status(c.host, c.paths)
    if as_json:
        emit_json(doc)
        return
    con = console()
    if not doc["held"] and not doc["persisted"] and not doc["operations"]:
        con.print("passthru holds no devices", markup=False)
    for op in doc["operations"]:
        what = "running" if op["running"] else "interrupted: run `passthru reconcile`"
        con.print(f"{op['kind']} of {', '.join(op['members'])} (pid {op['pid']}, since {op['started']}): {what}",
                  markup=False)
    for x in doc["held"]:
        state = "ok" if x["consistent"] else f"{x['phase']}, driver now {x['driver'] or 'none'}: run passthru reconcile"
        con.print(f"{x['address']}  {x['vendor_id']}:{x['device_id']}  group {x['iommu_group']}  "
                  f"was {x['prior_driver'] or 'no driver'}  {'persisted  ' if x['persisted'] else ''}{state}",
                  markup=False)
    held = {x["address"] for x in doc["held"]}
    for p in doc["persisted"]:
        if p["address"] not in held:
            con.print(f"{p['address']}  persisted for boot, not held now (passthru apply-boot binds it)", markup=False)


def reconcile(ctx: typer.Context, as_json: Annotated[bool, _JSON] = False) -> None:
    """Make the records agree with the kernel: finish or undo what an interrupted bind/restore/assign/release left
    (every IOMMU group whole), take assigned devices over again, put back leftovers. Exit 1 when something
    cannot be repaired (each with the command that would).

    Example: `passthru reconcile`.
    """
    from ..service.reconcile import reconcile as do_reconcile

    c: Session = ctx.obj
    doc = do_reconcile(c, kernel=None)
    if as_json:
        emit_json(doc)
    else:
        con = console()
        for d in doc["devices"]:
            mate = f" (group mate of {d['group_mate_of']})" if d["group_mate_of"] else ""
            note = f": {d['note']}" if d["note"] else ""
            con.print(f"{d['address']}{mate}: {d['status']} ({d['before'] or 'no driver'} -> "
                      f"{d['after'] or 'no driver'}){note}", markup=False)
        inv = doc["inventory"]
        for op in inv["operations"]:
            con.print(f"{op['kind']} {op['op']} (VM {op['vm']}): {op.get('action', 'failed')}"
                      + "".join(f"; {e}" for e in op.get("errors", [])), markup=False)
        for a in inv["assignments"] + inv["leftovers"]:
            con.print(f"VM {a['vm']} {a['device']}: {a['action']}" + (f" ({a['why']})" if a.get("why") else ""),
                      markup=False)
        if doc["error"]:
            con.print(f"not repaired: {doc['error']}", markup=False)
        con.print(doc["status"], markup=False)
    if not doc["ok"]:
        raise typer.Exit(1)


def apply_boot(ctx: typer.Context, as_json: Annotated[bool, _JSON] = False) -> None:
    """Re-apply persisted bindings and re-create persisted vGPUs (run at boot by passthru-apply-boot.service,
    before networking and VMs)."""
    from ..service.vgpu import start_persisted
    from ..vfio import apply_boot as do_apply_boot

    c: Session = ctx.obj
    out = do_apply_boot(c.host, c.paths)
    vgpus = start_persisted(c.host, c.paths)
    if as_json:
        emit_json({**out.to_json(), "vgpus": vgpus.to_json()})
    else:
        _print(out, False)
        for item in vgpus.items:
            print(f"vgpu {item.id} on {item.parent}: {item.status}" + (f" ({item.note})" if item.note else ""))
        if vgpus.error:
            print(f"vgpu: {vgpus.error}")
    if out.error or vgpus.error:
        raise typer.Exit(1)


def units(
    ctx: typer.Context,
    install: Annotated[bool, typer.Option("--install", help="Write them to /etc/systemd/system and enable them.")] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """The systemd units passthru ships (passthru-apply-boot.service), rendered for this installation.

    Examples: `passthru units` (print them), `passthru units --install`.
    """
    from ..units import install_units, render_units

    c: Session = ctx.obj
    if install:
        done = install_units(c.host, c.paths)
        if as_json:
            emit_json({"schema": 1, "units": [{"path": p, "status": s} for p, s in done]})
        else:
            for p, s in done:
                print(f"{p}: {s}")
        return
    rendered = render_units(c.paths)
    if as_json:
        emit_json({"schema": 1, "units": [{"name": n, "text": t} for n, t in rendered.items()]})
    else:
        for name, text in rendered.items():
            print(f"# {name}\n{text}")
