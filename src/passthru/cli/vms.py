"""CLI verbs of assignments and VM wiring: assign, release, assignments, qemu-args, libvirt-xml, attach, detach."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated, Optional

import typer

from ..service.session import Session
from ..service.listings import emit_json
from ..errors import UsageError
from .output import console, text

_JSON = typer.Option("--json", help="Print the JSON document.")
_DRY = typer.Option("--dry-run", help="Show what would change (same checks and refusals); change nothing.")


def assign(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="VM name.")],
    specs: Annotated[list[str], typer.Argument(metavar="SPEC...", help="0000:86:00.0 | gpu | MODEL | "
                                               "usb:VVVV:PPPP[:SERIAL] | usb:BUS-PORT | serial:/dev/ttyS1 | mdev:UUID")],
    numa: Annotated[Optional[int], typer.Option("--numa", help="Pick devices on this NUMA node.")] = None,
    numa_policy: Annotated[str, typer.Option("--numa-policy", help="strict (fail) or prefer (fall back).")] = "strict",
    count: Annotated[int, typer.Option("--count", help="How many devices of each kind/model SPEC.")] = 1,
    same_switch: Annotated[bool, typer.Option("--same-switch", help="Kind/model picks all behind one PCIe switch "
                                                                    "(or one root port).")] = False,
    same_numa: Annotated[bool, typer.Option("--same-numa", help="Kind/model picks all on one NUMA node.")] = False,
    allow_split: Annotated[bool, typer.Option("--allow-split", help="When no switch/node holds them all, take the "
                                                                    "best split the refusal names.")] = False,
    vm_uuid: Annotated[Optional[str], typer.Option("--uuid", help="The VM's UUID, recorded.")] = None,
    no_bind: Annotated[bool, typer.Option("--no-bind", help="Record only; do not move PCI devices to vfio-pci.")] = False,
    mac: Annotated[Optional[str], typer.Option("--mac", help="NIC VF: MAC address.")] = None,
    vlan: Annotated[Optional[int], typer.Option("--vlan", help="NIC VF: VLAN id (0 = none).")] = None,
    qos: Annotated[Optional[int], typer.Option("--qos", help="NIC VF: VLAN priority 0-7.")] = None,
    spoofchk: Annotated[Optional[str], typer.Option("--spoofchk", help="NIC VF: on or off.")] = None,
    trust: Annotated[Optional[str], typer.Option("--trust", help="NIC VF: on or off.")] = None,
    rate_min: Annotated[Optional[int], typer.Option("--rate-min", help="NIC VF: Mbit/s.")] = None,
    rate_max: Annotated[Optional[int], typer.Option("--rate-max", help="NIC VF: Mbit/s.")] = None,
    link_state: Annotated[Optional[str], typer.Option("--link-state", help="NIC VF: auto, enable, disable.")] = None,
    dry_run: Annotated[bool, _DRY] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Give devices to a VM: claimed atomically (never two VMs), PCI groups taken over for vfio-pci.

    Examples: `passthru assign vm1 0000:86:00.0`, `passthru assign vm1 gpu --numa 1`,
    `passthru assign vm1 usb:0403:6001 serial:/dev/ttyS4`, `passthru assign vm1 0000:3b:00.2 --mac
    52:54:00:12:34:56 --vlan 100 --spoofchk on` (a VF, configured through its PF; put back on release),
    `passthru assign vm1 gpu --dry-run` (what would be claimed and moved; same refusals, nothing changed),
    `passthru assign vm1 gpu --count 2 --same-switch --same-numa` (two GPUs under one PCIe switch, one node).
    """
    from ..service.assign import assign as do_assign

    c: Session = ctx.obj
    vf = {k: v for k, v in {"mac": mac, "vlan": vlan, "qos": qos, "spoofchk": spoofchk, "trust": trust,
                            "min_tx_rate": rate_min, "max_tx_rate": rate_max, "link_state": link_state}.items()
          if v is not None}
    res = do_assign(c, vm, specs, numa=numa, numa_policy=numa_policy, vm_uuid=vm_uuid, bind=not no_bind,
                    vf_options=vf or None, dry_run=dry_run, count=count, same_switch=same_switch,
                    same_numa=same_numa, allow_split=allow_split)
    if as_json:
        emit_json(res.to_json())
        return
    if dry_run:
        for a in res.assignments:
            print(f"{vm}: {a.device} would be reserved")
        for b in res.bound:
            print(f"{b}: would move to vfio-pci ({res.moves.get(b) or 'no driver'} -> vfio-pci)")
        for v in res.vfs:
            print(f"{v}: VF settings would be set ({', '.join(f'{k} {text(x)}' for k, x in vf.items())})")
        print("dry run: nothing was changed")
        return
    for a in res.assignments:
        print(f"{vm}: {a.device} {a.state}")
    for b in res.bound:
        print(f"{b}: now on vfio-pci")


def release(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="VM name.")],
    specs: Annotated[Optional[list[str]], typer.Argument(metavar="[SPEC...]", help="Default: all its devices.")] = None,
    restore: Annotated[bool, typer.Option("--restore", help="Give PCI devices back to their host drivers.")] = False,
    dry_run: Annotated[bool, _DRY] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Take devices away from a VM's record (all of them, or the SPECs). Examples: `passthru release vm1`,
    `passthru release vm1 0000:86:00.0 --restore`, `passthru release vm1 --restore --dry-run`."""
    from ..service.dryrun import plan_release
    from ..service.release import release as do_release

    c: Session = ctx.obj
    if dry_run:
        doc = plan_release(c, vm, specs or None, restore=restore)
        if as_json:
            emit_json(doc)
            return
        for ident in doc["released"]:
            print(f"{vm}: {ident} would be released")
        for ident in doc["vf_settings_restored"]:
            print(f"{ident}: its VF settings would be put back")
        for m in doc["restored"]:
            mate = f" (group mate of {m['group_mate_of']})" if m["group_mate_of"] else ""
            print(f"{m['address']}{mate}: {m['status']} ({m['from'] or 'no driver'} -> {m['to'] or 'no driver'})")
        for ident in doc["vgpus_removed"]:
            print(f"{ident}: made for {vm} (`vgpu create --vm`): would be removed")
        print("dry run: nothing was changed")
        return
    out = do_release(c, vm, specs or None, restore=restore)
    if as_json:
        emit_json({"schema": 1, "vm": vm, "released": [a.device for a in out]})
        return
    for a in out:
        print(f"{vm}: {a.device} released")


def assignments(
    ctx: typer.Context,
    vm: Annotated[Optional[str], typer.Argument(help="Only this VM.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include released assignments.")] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Who holds what. Example: `passthru assignments --json`."""
    from ..service.assign import assignment_json, open_store

    c: Session = ctx.obj
    rows = open_store(c).assignments(vm, active=not all_)
    if as_json:
        emit_json({"schema": 1, "assignments": [assignment_json(a) for a in rows]})
        return
    con = console()
    if not rows:
        con.print("no assignments", markup=False)
    for a in rows:
        con.print(f"{a.vm}  {a.device}  {a.state}  since {a.created}", markup=False)


def _attachments(c: Session, vm: str, x_vga: list[str], romfile: list[str], rombar_off: list[str], serial_bus: str):
    from ..host.pci import normalize_address
    from ..service.hotplug import vm_attachments
    from ..service.attachments import AttachOptions

    def addr(t: str) -> str:
        try:
            return normalize_address(t)
        except ValueError as e:
            raise UsageError(str(e)) from None

    roms = {}
    for item in romfile:
        a, sep, path = item.partition("=")
        if not sep or not path:
            raise UsageError(f"--romfile {item!r}: use ADDRESS=FILE, e.g. 0000:86:00.0=/var/lib/passthru/gpu.rom")
        roms[addr(a)] = path
    if serial_bus not in ("pci", "isa"):
        raise UsageError(f"--serial-bus {serial_bus!r}: pci or isa")
    opts = AttachOptions(x_vga=frozenset(addr(a) for a in x_vga), romfile=roms,
                         rombar_off=frozenset(addr(a) for a in rombar_off), serial_bus=serial_bus)
    return vm_attachments(c, vm, opts)


_XVGA = typer.Option("--x-vga", metavar="ADDRESS", help="Primary display GPU (x-vga=on).")
_ROM = typer.Option("--romfile", metavar="ADDRESS=FILE", help="ROM image for a device.")
_ROMBAR = typer.Option("--rombar-off", metavar="ADDRESS", help="Hide the device's ROM BAR.")
_SERBUS = typer.Option("--serial-bus", help="pci (pci-serial) or isa (isa-serial).")


_HIDE = typer.Option("--hide-kvm", help="Hide the hypervisor (kvm=off; NVIDIA GeForce before R465).")


def qemu_args(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="VM name.")],
    machine: Annotated[str, typer.Option("--machine", help="q35 or pc.")] = "q35",
    x_vga: Annotated[list[str], _XVGA] = [],  # noqa: B006 - typer needs a literal default
    romfile: Annotated[list[str], _ROM] = [],  # noqa: B006
    rombar_off: Annotated[list[str], _ROMBAR] = [],  # noqa: B006
    serial_bus: Annotated[str, _SERBUS] = "pci",
    hide_kvm: Annotated[bool, _HIDE] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """QEMU arguments for the VM's devices (one pcie-root-port each on q35; a GPU and its audio in one slot).

    Example: `qemu-system-x86_64 ... $(passthru qemu-args vm1)`. --hide-kvm adds -global x86_64-cpu.kvm=off
    (kvm=off on whatever -cpu the VM has).
    """
    from ..vm.qemu import qemu_args as render

    c: Session = ctx.obj
    out = render(_attachments(c, vm, x_vga, romfile, rombar_off, serial_bus), machine=machine, hide_kvm=hide_kvm)
    if as_json:
        emit_json(out.to_json())
        return
    print(" ".join(shlex.quote(a) for a in out.argv))
    for n in out.notes:
        print(f"# note: {n}", file=sys.stderr)


def libvirt_xml(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="VM name.")],
    machine: Annotated[Optional[str], typer.Option("--machine", help="q35 or pc (default: the domain's, "
                                                   "else q35).")] = None,
    x_vga: Annotated[list[str], _XVGA] = [],  # noqa: B006
    romfile: Annotated[list[str], _ROM] = [],  # noqa: B006
    rombar_off: Annotated[list[str], _ROMBAR] = [],  # noqa: B006
    serial_bus: Annotated[str, _SERBUS] = "pci",
    hide_kvm: Annotated[bool, _HIDE] = False,
    domain: Annotated[Optional[str], typer.Option("--domain", metavar="NAME|FILE", help="Merge into this "
                                                  "libvirt domain (a file, or `virsh dumpxml NAME`).")] = None,
    connect: Annotated[Optional[str], typer.Option("--connect", metavar="URI", help="virsh -c URI for "
                                                   "--domain NAME.")] = None,
    attach_dir: Annotated[Optional[str], typer.Option("--attach-dir", metavar="DIR", help="With --domain: one "
                                                      "element per file for `virsh attach-device --config`.")] = None,
) -> None:
    """libvirt XML for the VM's devices: a <devices> fragment, or with --domain the whole updated domain.

    Examples: `passthru libvirt-xml vm1 --domain vm1 > vm1.xml && virsh define vm1.xml`;
    `passthru libvirt-xml vm1 --domain vm1 --attach-dir vm1.d` (then `virsh attach-device vm1 FILE --config` for
    each file in name order: controllers first). docs/libvirt.md.
    """
    from ..vm.libvirt import libvirt_xml as render
    from ..vm.libvirt import qemu_override_xml

    c: Session = ctx.obj
    if domain is None and (attach_dir or connect):
        raise UsageError(f"{'--attach-dir' if attach_dir else '--connect'} goes with --domain NAME|FILE (the domain "
                         "whose controllers and addresses passthru must avoid)")
    if domain is not None:
        from ..vm.domain import parse_domain, read_domain
        from ..vm.merge import merge_domain, write_elements

        dom = parse_domain(read_domain(domain, connect, live=c.host.is_live))
        atts = _attachments(c, vm, x_vga, romfile, rombar_off, serial_bus)
        merged = merge_domain(dom, atts, machine=machine, hide_kvm=hide_kvm)
        if attach_dir:
            for path in write_elements(attach_dir, merged.elements):
                print(path)
        else:
            sys.stdout.write(merged.domain)
        for n in merged.notes:
            print(f"# note: {n}", file=sys.stderr)
        return
    atts = _attachments(c, vm, x_vga, romfile, rombar_off, serial_bus)
    print(render(atts, machine=machine or "q35", hide_kvm=hide_kvm))
    override = qemu_override_xml(atts)
    if override:
        print("<!-- x-vga: libvirt >= 8.2.0; put this in <domain xmlns:qemu="
              "'http://libvirt.org/schemas/domain/qemu/1.0'> -->")
        print(override)


def attach(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="VM name.")],
    specs: Annotated[list[str], typer.Argument(metavar="SPEC...")],
    qmp: Annotated[str, typer.Option("--qmp", metavar="SOCKET", help="The running VM's QMP socket.")],
    port: Annotated[Optional[str], typer.Option("--port", help="pcie-root-port id to use.")] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Hot-plug devices into a running VM over QMP (assigning them first if needed).

    Example: `passthru attach vm1 0000:86:00.0 --qmp /run/vm1.qmp`.
    """
    from ..service.hotplug import attach as do_attach

    c: Session = ctx.obj
    res = do_attach(c, vm, specs, qmp, port=port)
    if as_json:
        emit_json({"schema": 1, "vm": vm, "attached": res})
        return
    for r in res:
        print(f"{vm}: attached {', '.join(r['ids'])}" + (f" on {r['port']}" if r.get("port") else ""))


def detach(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="VM name.")],
    specs: Annotated[list[str], typer.Argument(metavar="SPEC...")],
    qmp: Annotated[str, typer.Option("--qmp", metavar="SOCKET", help="The running VM's QMP socket.")],
    keep: Annotated[bool, typer.Option("--keep", help="Keep the assignment (reserved) after unplugging.")] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Hot-unplug devices from a running VM (waits for QEMU's DEVICE_DELETED), then release them.

    Example: `passthru detach vm1 0000:86:00.0 --qmp /run/vm1.qmp`.
    """
    from ..service.hotplug import detach as do_detach

    c: Session = ctx.obj
    res = do_detach(c, vm, specs, qmp, keep=keep)
    if as_json:
        emit_json({"schema": 1, "vm": vm, "detached": res})
        return
    for r in res:
        print(f"{vm}: detached {', '.join(r['ids'])}")
