"""Listings: ``passthru devices|groups|usb|serial|show``. The JSON documents come from ``commands.py`` (which the
Typer-free fast path also prints); here they become tables.

Each command imports the library modules it calls in its body: importing every command's library at start-up costs
several times what ``passthru --help`` costs in all (python -X importtime), and each command needs only its own.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from ..service.session import Session
from ..service.listings import devices_doc, emit_json, groups_data, groups_doc, select_devices, serial_doc, usb_doc
from .output import console, table, text

KIND_HELP = "Only this kind: gpu, nic, nvme, usb, serial, bridge, other, or a custom model's kind."


def devices(
    ctx: typer.Context,
    kind: Annotated[Optional[str], typer.Option("--kind", "-k", help=KIND_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include bridges in the table.")] = False,
) -> None:
    """List passthrough-relevant devices: PCI functions, USB devices and serial ports.

    Examples: `passthru devices`, `passthru devices --kind nic --json`, `passthru devices -k gpu`.
    """
    c: Session = ctx.obj
    if as_json:
        emit_json(devices_doc(c, kind))
        return
    inv, selected = select_devices(c, kind)
    names = c.namer()
    con = console()
    if not inv.iommu.enabled:
        con.print(f"[yellow]! {inv.iommu.message}[/yellow]")
    t = table(None, ["ADDRESS/ID", "KIND", "ROLE", "IDS", "NAME", "DRIVER", "GROUP", "NUMA", "NOTES"],
               drop=("NOTES", "ROLE", "NUMA", "IDS"))
    shown = 0
    for d in selected:
        if d.kind == "bridge" and not (all_ or kind == "bridge"):
            continue
        shown += 1
        if d.bus == "pci":
            fn = d.fact
            notes = []
            if fn.boot_vga:
                notes.append("boot VGA")
            if d.companions:
                notes.append("with " + ",".join(a.split(":", 1)[1] for a in d.companions))
            if d.companion_of:
                notes.append("of " + d.companion_of.split(":", 1)[1])
            if fn.sriov_totalvfs:
                notes.append(f"VFs {fn.sriov_numvfs or 0}/{fn.sriov_totalvfs}")
            if fn.physfn:
                notes.append(f"VF {fn.vf_index} of {fn.physfn.split(':', 1)[1]}")
            if fn.mdev_types:
                notes.append(f"mdev types {len(fn.mdev_types)}")
            if fn.netdevs:
                notes.append(" ".join(fn.netdevs))
            if d.model:
                notes.append(f"model {d.model}")
            name = names.pci.device(fn.vendor_id, fn.device_id) or names.pci.pci_class(fn.class_code) or "-"
            t.add_row(d.id, d.kind, text(d.role), fn.ids, name, text(fn.driver), text(fn.iommu_group),
                      "-" if fn.numa_node < 0 else str(fn.numa_node), ", ".join(notes))
        elif d.bus == "usb":
            u = d.fact
            name = u.product or names.usb.device(u.vendor_id, u.product_id) or "-"
            notes = [f"bus {u.busnum} dev {u.devnum}"] + (["serial " + u.serial] if u.serial else [])
            t.add_row(d.id, d.kind, text(d.role), u.ids, name, text(u.driver), "-", "-", ", ".join(notes))
        else:
            p = d.fact
            notes = (["console"] if p.console else []) + ([f"{p.backing_bus} {p.backing_id}"] if p.backing_bus else [])
            t.add_row(d.id, d.kind, text(d.role), "-", p.name, text(p.driver), "-", "-", ", ".join(notes))
    con.print(t)
    con.print(f"{shown} devices" + ("" if all_ or kind else " (bridges hidden; --all shows them)"))


def groups(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
) -> None:
    """List IOMMU groups with their members and whether each group is viable for vfio.

    A group is viable when every endpoint in it is unbound or on vfio-pci/pci-stub; bridges may stay.
    """
    c: Session = ctx.obj
    if as_json:
        emit_json(groups_doc(c))
        return
    inv, gs = groups_data(c)
    names = c.namer()
    con = console()
    if not inv.iommu.enabled:
        con.print(f"[yellow]! {inv.iommu.message}[/yellow]")
        return
    t = table(None, ["GROUP", "VIABLE", "ADDRESS", "KIND", "IDS", "NAME", "DRIVER"], drop=("KIND", "IDS", "NAME"))
    for g in gs:
        first = True
        for addr in g.devices or ("-",):
            fn = inv.pci_function(addr)
            dev = inv.by_id(addr)
            t.add_row(str(g.number) if first else "", ("yes" if g.viable else "no") if first else "", addr,
                      dev.kind if dev else "-", fn.ids if fn else "-",
                      (names.pci.device(fn.vendor_id, fn.device_id) or "-") if fn else "-",
                      text(fn.driver if fn else None))
            first = False
        for other in g.other_members:
            t.add_row("", "", other, "mdev/other", "-", "-", "-")
    con.print(t)
    from ..host.isolation import explain_groups

    why = explain_groups(inv, gs)
    alone = [str(g.number) for g in gs if len(g.devices) == 1 and not g.viable and not why[g.number][0].note]
    if alone:
        con.print(f"group{'s' if len(alone) > 1 else ''} {', '.join(alone)}: one device each, isolated; not viable "
                  "only because of drivers", markup=False, highlight=False)
    for g in gs:
        if len(g.devices) > 1:
            for line in _why_lines(g.number, g.viable, *why[g.number]):
                con.print(line, markup=False, highlight=False)
    con.print(f"{len(gs)} groups, {sum(g.viable for g in gs)} viable")


def _why_lines(number: int, viable: bool, e, iso) -> list[str]:
    """Why group ``number`` is as big as it is (isolation), apart from whether it is viable (drivers)."""
    if not e.causes and e.isolated and not e.note:
        return [f"group {number}: one device, isolated" + ("" if viable else "; not viable only because of drivers")]
    out = [f"group {number}: " + ("isolated (one card); " if e.isolated else "shared: ") + e.text]
    if iso is not None:
        out.append(f"  to isolate: {iso.text}")
    return out


def usb(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
) -> None:
    """List USB devices with their stable port paths (BUS-PORT[.PORT]); root hubs and hubs are flagged."""
    from ..host.usb import scan_usb
    from ..render import usb_json

    c: Session = ctx.obj
    if as_json:
        emit_json(usb_doc(c))
        return
    devs = scan_usb(c.host)
    names = c.namer()
    con = console()
    if not devs:
        con.print("no USB devices (no USB bus on this host)")
        return
    t = table(None, ["PORT PATH", "BUS", "DEV", "IDS", "NAME", "SERIAL", "SPEED", "DRIVER", "NOTES"],
               drop=("DEV", "BUS", "SPEED", "SERIAL"))
    for u in devs:
        d = usb_json(u, names)
        notes = "root hub" if u.is_root_hub else ("hub" if u.is_hub else "")
        t.add_row(u.port_path, str(u.busnum), text(u.devnum), u.ids, text(d["name"]), text(u.serial),
                  text(u.speed_mbps) + (" Mb/s" if u.speed_mbps else ""), text(u.driver), notes)
    con.print(t)


def serial(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
) -> None:
    """List serial ports: real UARTs, USB serial adapters, ghosts (no UART behind them) and the console."""
    from ..host.serial import scan_serial

    c: Session = ctx.obj
    if as_json:
        emit_json(serial_doc(c))
        return
    ports = scan_serial(c.host)
    con = console()
    t = table(None, ["PORT", "DEVICE", "TYPE", "BACKING", "DRIVER", "NOTES"], drop=("TYPE",))
    for p in ports:
        notes = ", ".join(n for n, on in (("console", p.console), ("ghost: no UART", p.ghost)) if on)
        t.add_row(p.name, p.device, p.kind, f"{p.backing_bus} {p.backing_id}" if p.backing_bus else "-",
                  text(p.driver), notes)
    con.print(t)


def show(
    ctx: typer.Context,
    ident: Annotated[str, typer.Argument(metavar="DEVICE",
                                         help="PCI address (0000:42:00.0 or 42:00.0), USB port path (1-1.2), "
                                              "or serial port (ttyS1, /dev/ttyS1).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
) -> None:
    """Everything known about one device, including its IOMMU group mates.

    Examples: `passthru show 42:00.0`, `passthru show 1-1.2 --json`, `passthru show ttyS1`.
    """
    from ..host.iommu import group_verdict
    from ..lookup import resolve_device
    from ..render import SCHEMA, device_json, iommu_json, pci_json

    c: Session = ctx.obj
    inv = c.inventory()
    dev = resolve_device(inv, ident)
    names = c.namer()
    doc: dict[str, Any] = {"schema": SCHEMA, "iommu": iommu_json(inv.iommu), "device": device_json(dev, names),
                           "group": None}
    if dev.bus == "pci" and dev.fact.iommu_group is not None:
        mates = inv.group_mates(dev.id)
        viable, blockers, reason = group_verdict([dev.fact, *mates])
        doc["group"] = {"number": dev.fact.iommu_group, "viable": viable, "blockers": list(blockers),
                        "reason": reason, "mates": [pci_json(m, names) | {"kind": inv.by_id(m.address).kind}
                                                    for m in mates]}
        from ..host.isolation import why_group
        from ..render import explanation_json

        why = why_group(inv, dev.fact.iommu_group)
        doc["group"]["explanation"], doc["group"]["isolation"] = explanation_json(why) if why else (None, None)
    if as_json:
        emit_json(doc)
        return
    con = console()
    d = doc["device"]
    t = table(f"{dev.id} ({dev.kind})", ["FIELD", "VALUE"])
    for k, v in d.items():
        if isinstance(v, (list, dict)):
            if not v:
                continue
            v = json.dumps(v)
        t.add_row(k, text(v))
    con.print(t)
    g = doc["group"]
    if g is not None:
        con.print(f"IOMMU group {g['number']}: {g['reason']}")
        if why is not None and (g["mates"] or not g["viable"]):
            for line in _why_lines(g["number"], g["viable"], *why):
                con.print(line, markup=False, highlight=False)
        for m in g["mates"]:
            con.print(f"  {m['address']}  {m['kind']}  {m['vendor']}:{m['device']}  {text(m['name'])}  "
                      f"driver {text(m['driver'])}")
    elif dev.bus == "pci":
        con.print(f"no IOMMU group: {inv.iommu.message}")
