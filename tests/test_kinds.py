"""Device kinds (kinds/gpu.py, nvme.py, usb.py, serial.py) and host/openfiles.py on fixture hosts: doctor's kind
checks, the serial port held open by a getty refused at assign/attach, a USB device re-plugged at another port
found again and a different device in a held port refused, a USB serial adapter given one way only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import sysfs_fixtures as fx
from fake_kernel import FakeKernel
from passthru.cli import main as cli_main
from passthru.service.session import Session
from passthru.discovery import discover
from passthru.doctor import FAIL, PASS, WARN, run_doctor
from passthru.errors import NotFoundError, UsageError
from passthru.host.openfiles import describe, openers
from passthru.host.root import HostRoot
from passthru.inventory import ClaimError
from passthru.service.assign import assign, open_store
from passthru.service.release import release
from passthru.service.hotplug import attach
from passthru.kinds import KINDS, kind_for
from passthru.lookup import resolve_device
from sysfs_builder import SysfsBuilder

GETTY_CGROUP = "0::/system.slice/system-serial\\x2dgetty.slice/serial-getty@{tty}.service\n"


# -- helpers -------------------------------------------------------------------------------------------------------
def hold_open(root: Path | str, pid: int, comm: str, path: str, *, fd: int = 0, cgroup: str | None = None) -> None:
    """A process in the fixture's /proc holding ``path`` open on ``fd`` (the link text the kernel shows)."""
    d = Path(root) / "proc" / str(pid)
    (d / "fd").mkdir(parents=True, exist_ok=True)
    (d / "comm").write_text(comm + "\n")
    os.symlink(path, d / "fd" / str(fd))
    if cgroup is not None:
        (d / "cgroup").write_text(cgroup)


def findings(root: Path | str, *devices: str) -> dict[tuple[str, str | None], object]:
    h = HostRoot(root)
    inv = discover(h)
    rep = run_doctor(h, [resolve_device(inv, d) for d in devices], inv)
    return {(f.id, f.device): f for f in rep.findings}


def held(s: Session, vm: str) -> list[str]:
    return sorted(a.device for a in open_store(s).assignments(vm))


def unplug(b: SysfsBuilder, port: str) -> None:
    """Pull the USB device at ``port`` out of the fixture: its sysfs tree, bus links, ttys and /dev nodes."""
    sys_, dev = Path(b.sys), Path(b.dev)
    real = (sys_ / "bus/usb/devices" / port).resolve()
    for link in list((sys_ / "bus/usb/devices").iterdir()) + list((sys_ / "class/tty").iterdir()) + \
            list((sys_ / "bus/usb-serial/devices").glob("*")) + list((dev / "serial/by-id").glob("*")):
        target = link.resolve()
        if target == real or real in target.parents or (link.parent.name == "by-id" and not target.exists()):
            link.unlink()
    for tty in real.rglob("tty/tty*"):
        (dev / tty.name).unlink(missing_ok=True)
    for link in (dev / "serial/by-id").glob("*"):
        if not link.resolve().exists():
            link.unlink()
    shutil.rmtree(real)
    for k in [k for k in b.usb if k == port or k.startswith(port + ":") or k.startswith(port + ".")]:
        del b.usb[k]


def plug_ftdi(b: SysfsBuilder, port: str, *, serial: str = "A50285BI") -> None:
    b.usb_device(port, 0x0403, 0x6001, manufacturer="FTDI", product="FT232R USB UART", serial=serial,
                 bcd_device=0x0600, interfaces=[(0xFF, "ftdi_sio", 0xFF, 0xFF)])
    b.serial("ttyUSB0", backing="usb", address=port)


@pytest.fixture
def server(tmp_path):
    b = fx.make_gpu_server(tmp_path / "gs")
    s = Session(str(b.root), None, None)
    return b, s, FakeKernel(s.host)


# -- host/openfiles.py ---------------------------------------------------------------------------------------------
def test_openers_by_link_text_with_comm_and_unit(tmp_path):
    root = fx.gpu_server(tmp_path / "gs")
    hold_open(root, 812, "agetty", "/dev/ttyS4", cgroup=GETTY_CGROUP.format(tty="ttyS4"))
    hold_open(root, 812, "agetty", "/dev/ttyS4", fd=1)
    hold_open(root, 4711, "screen", "/dev/ttyS4", fd=5)
    hold_open(root, 4712, "bash", "/dev/pts/0")
    scan = openers(HostRoot(root), "/dev/ttyS4")
    assert [(o.pid, o.comm, o.fds, o.unit) for o in scan.openers] == [
        (812, "agetty", (0, 1), "serial-getty@ttyS4.service"), (4711, "screen", (5,), None)]
    assert describe(scan) == "agetty (pid 812) and screen (pid 4711)"
    assert scan.complete and scan.processes == 3  # the fixture's own /proc/2342 has no fd directory
    assert openers(HostRoot(root), "/dev/ttyS1").openers == []


def test_openers_on_the_live_host_match_by_device_number():
    """A pty slave held by a child process is found through stat(fd).st_rdev even when asked under another name
    (as /dev/serial/by-id/... resolves to the node); our own process is never listed."""
    master, slave = os.openpty()
    try:
        child = subprocess.Popen(["sleep", "30"], stdin=slave, stdout=subprocess.DEVNULL)
        try:
            st = os.fstat(slave)
            dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            for _ in range(100):  # the child has exec'd when its comm is "sleep"
                if (HostRoot("/").read(f"/proc/{child.pid}/comm") or "") == "sleep":
                    break
                time.sleep(0.02)
            scan = openers(HostRoot("/"), "/dev/serial/by-id/not-this-name", dev)
            assert [(o.pid, o.comm, o.fds) for o in scan.openers] == [(child.pid, "sleep", (0,))]
            assert os.getpid() not in [o.pid for o in scan.openers]
        finally:
            child.kill()
            child.wait()
    finally:
        os.close(master)
        os.close(slave)


def test_openers_without_permission_are_counted_not_guessed():
    """Another user's /proc/<pid>/fd is not readable: counted in ``unreadable``. As root the scan runs in a forked
    child that has dropped to nobody (root reads everything)."""
    base = Path(tempfile.mkdtemp(prefix="openfiles-"))
    try:
        base.chmod(0o755)
        hold_open(base, 812, "agetty", "/dev/ttyS1")
        hold_open(base, 900, "screen", "/dev/ttyS1")
        (base / "proc/812/fd").chmod(0o000 if os.geteuid() else 0o500)
        if os.geteuid():
            scan = openers(HostRoot(base), "/dev/ttyS1")
            got = [[o.pid for o in scan.openers], scan.unreadable, scan.processes]
        else:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: no exceptions may escape into pytest
                try:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                    scan = openers(HostRoot(base), "/dev/ttyS1")
                    os.write(w, json.dumps([[o.pid for o in scan.openers], scan.unreadable,
                                            scan.processes]).encode())
                finally:
                    os._exit(0)
            os.close(w)
            with os.fdopen(r) as f:
                text = f.read()
            os.waitpid(pid, 0)
            got = json.loads(text)
        assert got == [[900], 1, 2]
    finally:
        (base / "proc/812/fd").chmod(0o700)
        shutil.rmtree(base)


# -- serial ----------------------------------------------------------------------------------------------------
def test_a_serial_port_held_by_a_getty_is_refused_naming_it(server, capsys):
    b, s, k = server
    hold_open(b.root, 812, "agetty", "/dev/ttyS4", cgroup=GETTY_CGROUP.format(tty="ttyS4"))
    with pytest.raises(UsageError) as e:
        assign(s, "vms", ["serial:/dev/ttyS4", "usb:1-2"], kernel=k)
    assert str(e.value) == ("serial:/dev/ttyS4: open by agetty (pid 812): stop it first "
                            "(systemctl stop serial-getty@ttyS4)")
    assert held(s, "vms") == []  # nothing of the request was claimed
    assert cli_main(["--root", str(b.root), "assign", "vms", "serial:/dev/ttyS4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "agetty (pid 812)" in err and "serial-getty@ttyS4" in err
    # the getty stopped: the port is given
    shutil.rmtree(Path(b.root) / "proc/812")
    assign(s, "vms", ["serial:/dev/ttyS4"], kernel=k)
    assert held(s, "vms") == ["serial:/dev/ttyS4"]


def test_serial_hints_and_who_is_scanned(server):
    b, s, k = server
    hold_open(b.root, 4711, "screen", "/dev/ttyUSB0", fd=3)
    with pytest.raises(UsageError, match=r"open by screen \(pid 4711\): stop it first \(close it there, or kill "
                                         r"4711\)"):
        assign(s, "vm1", ["serial:/dev/ttyUSB0"], kernel=k)
    hold_open(b.root, 700, "agetty", "/dev/ttyS4")  # no cgroup: the getty's name decides the hint
    with pytest.raises(UsageError, match=r"systemctl stop serial-getty@ttyS4\)"):
        assign(s, "vm1", ["serial:/dev/ttyS4"], kernel=k)
    shutil.rmtree(Path(b.root) / "proc/700")
    # the VM holding the port: its own QEMU has it open, assigning again is no refusal
    assign(s, "vm1", ["serial:/dev/ttyS4"], kernel=k)
    hold_open(b.root, 9000, "qemu-system-x86", "/dev/ttyS4", fd=17)
    assign(s, "vm1", ["serial:/dev/ttyS4"], kernel=k)
    assert held(s, "vm1") == ["serial:/dev/ttyS4"]
    # attach of a reserved port checks again (hot plug opens it now), before any QMP
    with pytest.raises(UsageError, match=r"open by qemu-system-x86 \(pid 9000\)"):
        attach(s, "vm1", ["serial:/dev/ttyS4"], _listening(Path(b.root) / "qmp.sock"))
    # consoles stay refused by the inventory, with the reason
    with pytest.raises(NotFoundError, match="console"):
        assign(s, "vm2", ["serial:/dev/ttyS0"], kernel=k)


def test_a_usb_serial_adapter_goes_one_way(server):
    b, s, k = server
    assign(s, "vm1", ["serial:/dev/ttyUSB0"], kernel=k)
    with pytest.raises(UsageError, match=r"usb:1-1.3: its serial port /dev/ttyUSB0 is assigned to VM 'vm1'"):
        assign(s, "vm2", ["usb:1-1.3"], kernel=k)
    with pytest.raises(UsageError, match="its serial port"):
        assign(s, "vm1", ["usb:1-1.3"], kernel=k)
    release(s, "vm1", kernel=k)
    assign(s, "vm2", ["usb:1-1.3"], kernel=k)
    with pytest.raises(UsageError, match=r"serial:/dev/ttyUSB0: its USB adapter usb:1-1.3 is assigned to VM 'vm2'"):
        assign(s, "vm1", ["serial:/dev/ttyUSB0"], kernel=k)


def test_doctor_serial_checks(tmp_path):
    root = fx.gpu_server(tmp_path / "gs")
    hold_open(root, 812, "agetty", "/dev/ttyS4", cgroup=GETTY_CGROUP.format(tty="ttyS4"))
    c = findings(root, "ttyS4", "/dev/ttyS0", "ttyUSB0")
    assert c["serial.open", "/dev/ttyS4"].status == FAIL
    assert "agetty (pid 812)" in c["serial.open", "/dev/ttyS4"].evidence
    assert "systemctl stop serial-getty@ttyS4" in c["serial.open", "/dev/ttyS4"].fix
    assert c["serial.console", "/dev/ttyS4"].status == PASS
    assert "16550A on pci 0000:03:00.0" in c["serial.port", "/dev/ttyS4"].evidence
    assert c["serial.console", "/dev/ttyS0"].status == FAIL and "console=" in c["serial.console", "/dev/ttyS0"].fix
    assert c["serial.open", "/dev/ttyS0"].status == PASS
    usb = c["serial.port", "/dev/ttyUSB0"].evidence
    assert "USB serial adapter 0403:6001 on usb:1-1.3 (driver ftdi_sio)" in usb


# -- usb -------------------------------------------------------------------------------------------------------
def test_a_device_replugged_at_another_port_is_found_by_ids_and_new_port(server):
    b, s, k = server
    assign(s, "vm0", ["usb:1-1.1"], kernel=k)  # the store has seen the host
    before = {d["identity"]: d for d in open_store(s).devices(kind="usb")}
    assert before["usb:1-1.3"]["serial"] == "A50285BI"
    unplug(b, "1-1.3")
    plug_ftdi(b, "2-3")  # another bus: another bus number and address
    assert HostRoot(b.root).read(f"{b.sys}/bus/usb/devices/2-3/busnum") == "2"
    res = assign(s, "vm1", ["usb:0403:6001:A50285BI"], kernel=k)
    assert [a.device for a in res.assignments] == ["usb:2-3"]
    devs = {d["identity"]: d for d in open_store(s).devices()}
    assert devs["usb:1-1.3"]["state"] == "lost" and devs["usb:2-3"]["vm"] == "vm1"
    with pytest.raises(ClaimError, match="lost"):
        assign(s, "vm2", ["usb:1-1.3"], kernel=k)
    release(s, "vm1", kernel=k)
    assign(s, "vm2", ["usb:2-3"], kernel=k)
    assert held(s, "vm2") == ["usb:2-3"]
    assert cli_main(["--root", str(b.root), "qemu-args", "vm2", "--json"]) == 0


def test_same_port_new_bus_address_is_the_same_device(server, capsys):
    b, s, k = server
    assign(s, "vm1", ["usb:1-1.3"], kernel=k)
    devnum = HostRoot(b.root).read(f"{b.sys}/bus/usb/devices/1-1.3/devnum")
    unplug(b, "1-1.3")
    plug_ftdi(b, "1-1.3")
    assert HostRoot(b.root).read(f"{b.sys}/bus/usb/devices/1-1.3/devnum") != devnum
    assign(s, "vm1", ["usb:1-1.3"], kernel=k)  # no change, no refusal
    assert held(s, "vm1") == ["usb:1-1.3"]
    assert not [a for a in open_store(s).audit_log(50) if a["action"] == "usb.replaced"]


def test_another_device_in_a_held_port_is_refused_until_released(server, capsys):
    b, s, k = server
    assign(s, "vm1", ["usb:1-1.3"], kernel=k)
    unplug(b, "1-1.3")
    b.usb_device("1-1.3", 0x0781, 0x5581, manufacturer="SanDisk", product="Ultra", serial="4C5300",
                 interfaces=[(8, "usb-storage", 6, 0x50)])
    msg = r"usb:1-1.3: the device in this port changed since VM 'vm1' was given it \(0403:6001:A50285BI -> " \
          r"0781:5581:4C5300\)"
    with pytest.raises(UsageError, match=msg):
        assign(s, "vm1", ["usb:1-1.3"], kernel=k)
    with pytest.raises(UsageError, match=msg):  # the sync reports it once; the refusal lasts
        assign(s, "vm1", ["usb:1-1.3"], kernel=k)
    with pytest.raises(UsageError, match=msg):  # hot plug too, before any QMP
        attach(s, "vm1", ["usb:1-1.3"], _listening(Path(b.root) / "qmp.sock"))
    assert cli_main(["--root", str(b.root), "assign", "vm1", "usb:1-1.3"]) == 2
    assert "release it (`passthru release vm1 usb:1-1.3`)" in capsys.readouterr().err
    audit = [a for a in open_store(s).audit_log(50) if a["action"] == "usb.replaced"]
    assert [(a["device"], a["vm"], a["detail"]) for a in audit] == [
        ("usb:1-1.3", "vm1", {"old": "0403:6001:A50285BI", "new": "0781:5581:4C5300"})]
    # the original plugged back in: fine again
    unplug(b, "1-1.3")
    plug_ftdi(b, "1-1.3")
    assign(s, "vm1", ["usb:1-1.3"], kernel=k)
    # or: another device again, released, assigned anew: the VM knowingly takes the new one
    unplug(b, "1-1.3")
    b.usb_device("1-1.3", 0x0781, 0x5581, serial="4C5300")
    with pytest.raises(UsageError, match="changed since"):
        assign(s, "vm1", ["usb:1-1.3"], kernel=k)
    release(s, "vm1", ["usb:1-1.3"], kernel=k)
    assign(s, "vm1", ["usb:1-1.3"], kernel=k)
    assert held(s, "vm1") == ["usb:1-1.3"]


def test_doctor_usb_checks(tmp_path):
    b = fx.make_gpu_server(tmp_path / "gs")
    b.usb_device("2-1", 0x046D, 0xC31C, manufacturer="Logitech", product="USB Keyboard", speed="1.5")
    root = b.root
    c = findings(root, "1-1", "1-1.3", "1-1.1")
    hub = c["usb.hub", "1-1"]
    assert hub.status == WARN and "skips device class 09" in hub.evidence and "1-1.3 0403:6001" in hub.evidence
    assert "usb:1-1.1" in hub.fix and "0000:00:14.0" in hub.fix
    ident = c["usb.identity", "1-1.3"]
    assert ident.status == PASS and "hostbus=1 hostport=1.3" in ident.evidence
    assert "usb:0403:6001:A50285BI" in ident.evidence and "serial:/dev/ttyUSB0" in ident.evidence
    twin = c["usb.identity", "1-1.1"]  # the same keyboard model without a serial number on 2-1
    assert twin.status == WARN and "usb:2-1" in twin.evidence and "usb:1-1.1" in twin.fix


# -- gpu -------------------------------------------------------------------------------------------------------
def _rewrite_resource(root: Path | str, address: str, line: int, text: str) -> None:
    p = Path(root) / f"sys/bus/pci/devices/{address}/resource"
    lines = p.read_text().splitlines(keepends=True)
    lines[line] = text + "\n"
    p.chmod(0o644)
    p.write_text("".join(lines))


def test_doctor_gpu_large_bar(tmp_path):
    root = fx.gpu_server(tmp_path / "gs")
    c = findings(root, "19:00.0", "d8:00.0", "18:00.0")
    fits = c["gpu.large_bar", "0000:19:00.0"]
    assert fits.status == PASS and "BAR1 (16 GiB, 64-bit prefetchable)" in fits.evidence
    assert "above-4G decoding is on" in fits.evidence and "fits QEMU's default 32 GiB" in fits.evidence
    big = c["gpu.large_bar", "0000:d8:00.0"]
    assert big.status == WARN and "128 GiB" in big.evidence and "256 GiB" in big.evidence
    assert "pci-hole64-size=256G" in big.fix and "X-PciMmio64Mb,string=262144" in big.fix
    assert c["gpu.large_bar", "0000:18:00.0"].status == PASS
    # the firmware left BAR1 unassigned (Above 4G Decoding off): start 0, the size kept, IORESOURCE_UNSET
    _rewrite_resource(root, "0000:18:00.0", 1, "0x0000000000000000 0x000000000fffffff 0x000000002014220c")
    f = findings(root, "18:00.0")["gpu.large_bar", "0000:18:00.0"]
    assert f.status == FAIL and "BAR1 (256 MiB, 64-bit prefetchable) has no address" in f.evidence
    assert "Above 4G Decoding" in f.fix and "pci=realloc" in f.fix


def test_doctor_gpu_companions_against_the_group(tmp_path):
    root = fx.gpu_server(tmp_path / "gs")
    c = findings(root, "18:00.0", "18:00.1")
    assert c["gpu.companions", "0000:18:00.0"].status == PASS
    assert "exactly the endpoints" in c["gpu.companions", "0000:18:00.0"].evidence
    assert "companion of GPU 0000:18:00.0" in c["gpu.companions", "0000:18:00.1"].evidence
    assert ("gpu.large_bar", "0000:18:00.1") not in c  # the audio function has no GPU BARs to judge
    # the audio function in a group of its own (an ACS-capable multifunction card): it does not come along
    sysfs = Path(root) / "sys"
    grp = Path(os.readlink(sysfs / "bus/pci/devices/0000:18:00.1/iommu_group")).name
    (sysfs / f"kernel/iommu_groups/{grp}/devices/0000:18:00.1").unlink()
    new = sysfs / "kernel/iommu_groups/99/devices"
    new.mkdir(parents=True)
    os.symlink("../../../../devices/pci0000:17/0000:17:00.0/0000:18:00.1", new / "0000:18:00.1")
    link = sysfs / "devices/pci0000:17/0000:17:00.0/0000:18:00.1/iommu_group"
    link.unlink()
    os.symlink("../../../../kernel/iommu_groups/99", link)
    f = findings(root, "18:00.0")["gpu.companions", "0000:18:00.0"]
    assert f.status == WARN and "0000:18:00.1 is in another IOMMU group" in f.evidence
    assert "passthru assign VM 0000:18:00.0 0000:18:00.1" in f.fix
    # a card behind a switch without ACS: its group holds a USB and a SATA controller too
    desk = fx.broken_desktop(tmp_path / "bd")
    g = findings(desk, "03:00.0")["gpu.companions", "0000:03:00.0"]
    assert g.status == WARN and "0000:04:00.0 (serial bus/USB, driver xhci_hcd)" in g.evidence
    assert "0000:05:00.0 (storage, driver ahci)" in g.evidence and "VM gets them too" in g.evidence


def test_doctor_gpu_rom(tmp_path):
    root = fx.gpu_server(tmp_path / "gs")
    assert findings(root, "19:00.0")["gpu.rom", "0000:19:00.0"].status == PASS
    _rewrite_resource(root, "0000:19:00.0", 6, "0x0000000000000000 0x0000000000000000 0x0000000000000000")
    c = findings(root, "19:00.0", "02:00.0")
    assert c["gpu.rom", "0000:19:00.0"].status == WARN and "--romfile 0000:19:00.0=FILE" in c["gpu.rom",
                                                                                              "0000:19:00.0"].fix
    assert ("gpu.rom", "0000:02:00.0") not in c  # the boot VGA: refused anyway (device.boot_vga)


# -- nvme ------------------------------------------------------------------------------------------------------
def test_doctor_nvme_namespaces(tmp_path):
    root = fx.busy_host(tmp_path / "busy")
    c = findings(root, "5e:00.0", "5f:00.0", "60:00.0")
    mounted = c["nvme.namespaces", "0000:5e:00.0"]
    assert mounted.status == FAIL
    assert mounted.evidence == "0000:5e:00.0: nvme0n1: nvme0n1p1 mounted on /var/lib/libvirt/images (xfs)"
    held_ = c["nvme.namespaces", "0000:5f:00.0"]
    assert held_.status == FAIL and "nvme1n1: dm-2 (vg1-data) holds nvme1n1" in held_.evidence
    assert "vgchange -an" in held_.fix
    assert c["nvme.namespaces", "0000:60:00.0"].status == PASS
    assert c["nvme.namespaces", "0000:60:00.0"].evidence == "0000:60:00.0: nvme2n1: not in use"


def test_doctor_nvme_multipath_and_several_namespaces(tmp_path):
    b = SysfsBuilder(tmp_path / "mp")
    b.proc()
    b.bridge("0000:00:01.0")
    for fn in (0, 1):
        b.pci(f"0000:01:00.{fn}", 0x144D, 0xA824, 0x010802, parent="0000:00:01.0", driver="nvme",
              bars=[("mem64", 16384)], multifunction=True)
    b.nvme_multipath([("0000:01:00.0", 0), ("0000:01:00.1", 1)], partitions=(100_000,))
    b._block(f"{b.fn('0000:01:00.0').path}/nvme/nvme0", "nvme2n1", 1 << 21, "disk", None)  # a private namespace
    b.mount("/dev/nvme0n1p1", "/srv", "xfs")
    b.build()
    f = findings(b.root, "0000:01:00.0")["nvme.namespaces", "0000:01:00.0"]
    assert f.status == FAIL
    assert ("nvme0n1 (multipath: also reached through other controllers): nvme0n1p1 mounted on /srv (xfs)"
            in f.evidence) and "nvme2n1: not in use" in f.evidence


def test_nvme_on_vfio_has_no_namespaces_to_check(tmp_path):
    b = fx.make_busy_host(tmp_path / "busy")
    b.bind("0000:60:00.0", "vfio-pci")
    b.build()
    f = findings(b.root, "60:00.0")["nvme.namespaces", "0000:60:00.0"]
    assert f.status == PASS and "on vfio-pci" in f.evidence


# -- the registry ----------------------------------------------------------------------------------------------
def test_kinds_register_and_unknown_kinds_get_the_plain_behaviour():
    import passthru.kinds.gpu  # noqa: F401
    import passthru.kinds.nvme  # noqa: F401
    import passthru.kinds.serial  # noqa: F401
    import passthru.kinds.usb  # noqa: F401

    assert {"gpu", "nvme", "usb", "serial"} <= set(KINDS)
    assert kind_for("no-such-kind").checks(None, None) == []
    assert kind_for("serial").name == "serial" and kind_for("usb").hotpluggable


def test_doctor_json_carries_kind_checks(tmp_path, capsys):
    root = fx.gpu_server(tmp_path / "gs")
    assert cli_main(["--root", str(root), "doctor", "19:00.0", "ttyS4", "1-1.3", "--json"]) == 1
    ids = {(c["id"], c["device"]) for c in json.loads(capsys.readouterr().out)["checks"]}
    assert {("gpu.large_bar", "0000:19:00.0"), ("gpu.companions", "0000:19:00.0"), ("gpu.rom", "0000:19:00.0"),
            ("serial.open", "/dev/ttyS4"), ("usb.identity", "1-1.3")} <= ids


_SOCKETS: list = []


def _listening(path: Path) -> str:
    """A unix socket file at ``path`` (nothing answers QMP on it: the refusals under test come first)."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    _SOCKETS.append(sock)
    return str(path)
