"""Attachments rendered as QEMU command-line arguments (``passthru qemu-args VM``).

Only the device part of a command line: ``-device`` / ``-chardev`` arguments to append to a VM's own ``-machine``,
``-cpu``, memory and disks. Machine-level advice (a larger 64-bit MMIO window, x-vga's needs) goes into
:attr:`QemuArgs.notes`, never into ``argv``. One exception, asked for with ``hide_kvm``: a hidden hypervisor is
``-global x86_64-cpu.kvm=off``, which sets ``kvm=off`` on whatever ``-cpu`` model the VM's own arguments choose
(every x86 CPU model is an ``x86_64-cpu``; checked with ``qom-get`` on QEMU 7.2), the same as appending
``,kvm=off`` to its ``-cpu``. A ``kvm=on`` written in the VM's own ``-cpu`` wins over it.

Placement:

- ``q35``: every PCI-type attachment (``pci``, ``mdev``, ``pci-serial``) gets its own ``pcie-root-port`` with id
  ``rp-<id>`` on ``pcie.0``; ``chassis`` and ``slot`` count up from ``first_chassis`` (QEMU refuses two ports with
  the same chassis/slot pair, so give a higher ``first_chassis`` when the VM has root ports of its own). A
  multi-function set (a GPU and its audio) sits in one port as functions 0..n-1, ``multifunction=on`` on 0. All
  ``usb`` attachments share one ``qemu-xhci`` controller, id ``xhci-pt``, on its own port ``rp-xhci-pt``.
- ``pc`` (i440fx): no root ports; the devices and the xHCI controller take slots on ``pci.0`` from ``first_slot``
  (default 0x10, leaving 0x00-0x0f to the VM's own devices) up to 0x1f.
- ``isa-serial`` needs no port (both machines have an ISA bus); QEMU allows at most 4 ISA serial ports.

Values are escaped for QEMU's option syntax: a comma inside a value is doubled (``path=/a,,b``).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace

from passthru.errors import UsageError
from passthru.host.bars import HOLE64_DEFAULT, mmio64_window_for
from passthru.vm.attachment import Attachment, chardev_props, check_rom, device_props, function_id

__all__ = ["QemuArgs", "qemu_args", "machine_family", "prepare", "mmio64_window", "opt_string", "XHCI_ID",
           "PC_FIRST_SLOT", "PC_LAST_SLOT", "HOLE64_DEFAULT", "HIDE_KVM"]

HIDE_KVM = ["-global", "x86_64-cpu.kvm=off"]  # kvm=off on every x86 CPU model: no KVM signature in CPUID
XHCI_ID = "xhci-pt"  # the shared USB controller of usb attachments; its bus is "xhci-pt.0"
PC_FIRST_SLOT = 0x10
PC_LAST_SLOT = 0x1F
MAX_ISA_SERIAL = 4  # QEMU: "Max. supported number of ISA serial ports is 4."
MAX_FUNCTIONS = 8
HOST_BRIDGE = {"q35": "q35-pcihost", "pc": "i440FX-pcihost"}
_QDEV_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class QemuArgs:
    argv: list[str]  # only the device-related arguments, to append to a VM's command line
    notes: list[str]  # operator hints: what argv cannot say (machine/cpu/firmware options, limits)

    def to_json(self) -> dict:
        return {"argv": list(self.argv), "notes": list(self.notes)}


def machine_family(machine: str) -> str:
    """"q35" or "pc" for a machine name (``q35``, ``pc``, versioned ``pc-q35-7.2`` / ``pc-i440fx-7.2``)."""
    if machine == "q35" or machine.startswith("pc-q35-"):
        return "q35"
    if machine == "pc" or machine.startswith("pc-i440fx-"):
        return "pc"
    raise UsageError(f"machine {machine!r}: passthru places devices for q35 or pc (i440fx) machines; "
                     "give --machine q35 or --machine pc")


def opt_string(first: str, props: dict) -> str:
    """QEMU's ``first,key=value,...`` with commas inside values doubled; bools become on/off."""
    def val(v: object) -> str:
        s = ("on" if v else "off") if isinstance(v, bool) else str(v)
        return s.replace(",", ",,")
    return ",".join([val(first)] + [f"{k}={val(v)}" for k, v in props.items()])


def _check_one(att: Attachment) -> Attachment:
    """Validated ``att`` (UsageError naming the attachment and the fix); a romfile is made absolute."""
    where = f"attachment {att.id!r}"
    if not _QDEV_ID.match(att.id):
        raise UsageError(f"{where}: a QEMU id starts with a letter and has only letters, digits, '-', '_', '.'")
    if att.kind == "pci":
        if not att.functions:
            raise UsageError(f"{where}: a pci attachment needs at least one host function address")
        if len(att.functions) > MAX_FUNCTIONS:
            raise UsageError(f"{where}: {len(att.functions)} functions; one guest slot holds at most 8")
        if att.romfile:
            try:
                check_rom(att.romfile)
            except ValueError as e:
                raise UsageError(f"{where}: {e}") from None
            att = replace(att, romfile=os.path.abspath(att.romfile))
    elif att.kind == "mdev":
        try:
            uuid.UUID(att.mdev_uuid or "")
        except ValueError:
            raise UsageError(f"{where}: mdev UUID {att.mdev_uuid!r} is not a UUID") from None
    elif att.kind == "usb":
        if att.usb_bus is None or not att.usb_port:
            # usb-host without hostbus/hostport would take any device QEMU can open
            raise UsageError(f"{where}: a usb attachment needs the host bus and port path (e.g. 1 and '1.3')")
    elif att.kind == "serial":
        if not att.serial_path:
            raise UsageError(f"{where}: a serial attachment needs the host device path (e.g. /dev/ttyS1)")
        if att.serial_bus not in ("pci", "isa"):
            raise UsageError(f"{where}: serial bus {att.serial_bus!r}: expected pci or isa")
    return att


def prepare(attachments: Iterable[Attachment]) -> list[Attachment]:
    """The attachments checked for rendering (ids unique, fields each kind needs present, ROMs valid)."""
    out = [_check_one(a) for a in attachments]
    seen: set[str] = set()
    for att in out:
        ids = [function_id(att, i) for i in range(max(1, len(att.functions)))] + [f"rp-{att.id}", f"chr-{att.id}"]
        if att.id in (XHCI_ID, f"rp-{XHCI_ID}") or seen.intersection(ids):
            raise UsageError(f"attachment id {att.id!r} is used twice (or clashes with passthru's own ids); "
                             "give each attachment its own id")
        seen.update(ids)
    isa = sum(1 for a in out if a.kind == "serial" and a.serial_bus == "isa")
    if isa > MAX_ISA_SERIAL:
        raise UsageError(f"{isa} isa-serial attachments: QEMU has at most {MAX_ISA_SERIAL} ISA serial ports; "
                         "use serial_bus 'pci' for the others")
    return out


def mmio64_window(attachments: Iterable[Attachment], family: str) -> int | None:
    """Bytes of 64-bit MMIO window the attachments' large BARs need on this machine family, else None
    (:func:`passthru.host.bars.mmio64_window_for`)."""
    return mmio64_window_for([a.largest_bar for a in attachments if a.largest_bar], family)


def _gib(n: int) -> str:
    return f"{n >> 30} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"


def _notes(atts: list[Attachment], family: str) -> list[str]:
    notes = [n for a in atts for n in a.notes]  # the producer's hints, verbatim (they name their device)
    vga = [a.id for a in atts if a.kind == "pci" and a.x_vga]
    if vga:
        notes.append(f"{', '.join(vga)}: x-vga=on makes the device the guest's legacy VGA: start QEMU with "
                     "-vga none (-nodefaults implies it) on a q35 or pc machine; the host kernel needs "
                     "CONFIG_VFIO_PCI_VGA")
    if len(vga) > 1:
        notes.append(f"{', '.join(vga)}: only one device can own the legacy VGA ranges; keep x-vga on one")
    window = mmio64_window(atts, family)
    if window:
        big = max((a for a in atts if a.largest_bar), key=lambda a: a.largest_bar or 0)
        notes.append(f"{big.id}: a {_gib(big.largest_bar or 0)} 64-bit BAR: give the VM a {_gib(window)} 64-bit "
                     f"MMIO window (QEMU's {family} default is {_gib(HOLE64_DEFAULT[family])}): -global "
                     f"{HOST_BRIDGE[family]}.pci-hole64-size={window >> 30}G, and with OVMF -fw_cfg "
                     f"name=opt/ovmf/X-PciMmio64Mb,string={window >> 20}")
    isa = [a.id for a in atts if a.kind == "serial" and a.serial_bus == "isa"]
    if isa:
        notes.append(f"{', '.join(isa)}: isa-serial needs a machine with an ISA bus (q35 and pc have one); it takes "
                     "the next free COM port (COM1 at 0x3f8 first when the VM has no -serial of its own), at most 4")
    usb = [a.id for a in atts if a.kind == "usb"]
    if usb:
        notes.append(f"{', '.join(usb)}: usb-host waits for a device at hostbus/hostport: QEMU starts even when "
                     "nothing is plugged there; QEMU needs access to /dev/bus/usb")
    if family == "pc" and any(a.kind in ("pci", "mdev") for a in atts):
        notes.append("pc machine: assigned devices sit on a conventional PCI bus, so the guest sees no PCIe "
                     "capabilities; prefer q35 for PCIe GPUs and NICs")
    return list(dict.fromkeys(notes))


def qemu_args(attachments: list[Attachment], *, machine: str = "q35", first_chassis: int = 1,
              first_slot: int = PC_FIRST_SLOT, hide_kvm: bool = False) -> QemuArgs:
    """The QEMU arguments for ``attachments`` on ``machine`` (module docstring: placement and ids).
    UsageError for an unknown machine, a bad ROM file, missing fields, or running out of chassis/slots."""
    family = machine_family(machine)
    atts = prepare(attachments)
    if not 0 <= first_chassis <= 255:
        raise UsageError(f"first chassis {first_chassis}: a PCIe chassis number is 0..255")
    argv: list[str] = []
    chassis, slot = first_chassis, first_slot

    def device(props: dict) -> None:
        props = dict(props)
        argv.extend(["-device", opt_string(props.pop("driver"), props)])

    def place(owner: str) -> tuple[str, int]:
        """A bus for one guest slot: a new root port (q35) or the next pci.0 slot (pc)."""
        nonlocal chassis, slot
        if family == "q35":
            if chassis > 255:
                raise UsageError("out of PCIe chassis numbers (255); give a lower first chassis")
            device({"driver": "pcie-root-port", "id": f"rp-{owner}", "bus": "pcie.0", "chassis": chassis,
                    "slot": chassis})
            chassis += 1
            return f"rp-{owner}", 0
        if slot > PC_LAST_SLOT:
            raise UsageError(f"out of pci.0 slots: passthru uses {first_slot:#x}..{PC_LAST_SLOT:#x} on a pc machine; "
                             "use q35 or fewer devices")
        slot += 1
        return "pci.0", slot - 1

    xhci = False
    for att in atts:
        chardev = chardev_props(att)
        if chardev:
            argv.extend(["-chardev", opt_string("serial", chardev)])
        if att.kind == "usb":
            if not xhci:
                bus, s = place(XHCI_ID)
                ctl = {"driver": "qemu-xhci", "id": XHCI_ID, "bus": bus}
                if bus == "pci.0":
                    ctl["addr"] = f"{s:#x}.0"
                device(ctl)
                xhci = True
            props = device_props(att, f"{XHCI_ID}.0")
        elif att.kind == "serial" and att.serial_bus == "isa":
            props = device_props(att, None)
        else:
            bus, s = place(att.id)
            props = device_props(att, bus, s)
        for p in props:
            device(p)
    notes = _notes(atts, family)
    if hide_kvm:
        argv.extend(HIDE_KVM)
        notes.append("hidden hypervisor: -global x86_64-cpu.kvm=off is the VM's -cpu with kvm=off (no KVM "
                     "signature in CPUID), whatever CPU model it names; a kvm=on in its own -cpu wins over it")
    return QemuArgs(argv=argv, notes=notes)
