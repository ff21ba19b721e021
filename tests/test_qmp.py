"""passthru.vm.qmp against a real qemu-system-x86_64 (q35, TCG, -nodefaults, paused with -S unless a test runs it).
vfio-pci needs a host device, so the mechanics are exercised with devices that need none: e1000e functions, pci-serial
on a pty chardev, usb-host (QEMU accepts it without a matching device)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import qemu_proc
from passthru.errors import HostError, NotFoundError, UsageError
from passthru.vm.attachment import Attachment
from passthru.vm.qmp import QemuRefused, QmpSession, _address, attach, attach_devices, detach, plug_order

pytestmark = [pytest.mark.skipif(not qemu_proc.available(), reason="qemu-system-x86_64 not installed"),
              pytest.mark.timeout(60)]

PORTS = ["-device", "pcie-root-port,id=rp1,chassis=1", "-device", "pcie-root-port,id=rp2,chassis=2",
         "-device", "pcie-root-port,id=rp3,chassis=3", "-device", "qemu-xhci,id=xhci,bus=rp2"]
Start = Callable[..., qemu_proc.QemuProc]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    procs: list[qemu_proc.QemuProc] = []

    def _start(extra: list[str] | None = None, *, native: bool = True, paused: bool = True) -> qemu_proc.QemuProc:
        d = tmp_path / f"vm{len(procs)}"
        d.mkdir()
        p = qemu_proc.QemuProc(d, PORTS if extra is None else extra, native=native, paused=paused)
        procs.append(p)
        return p

    yield _start
    for p in procs:
        p.stop()


@pytest.fixture
def vm(start: Start) -> qemu_proc.QemuProc:
    return start()


@pytest.fixture
def pty() -> Iterator[str]:
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


def nic_pair(bus: str, base: str = "nic") -> list[dict]:
    """Two e1000e functions of one slot, function 0 first (as device_props lists them)."""
    return [{"driver": "e1000e", "id": base, "bus": bus, "addr": "0x0.0", "multifunction": "on"},
            {"driver": "e1000e", "id": f"{base}-f1", "bus": bus, "addr": "0x0.1"}]


def nic_att(base: str = "nic") -> Attachment:
    return Attachment(kind="pci", id=base, functions=("0000:05:00.0", "0000:05:00.1"))


def wait_numbered(s: QmpSession, ports: list[str], limit: float = 5.0) -> list[int]:
    """Firmware numbers the ports' buses shortly after `cont` (SeaBIOS, ~50 ms under TCG; while it scans a port
    reads secondary bus 0xff); bounded poll until every port has its own final number."""
    deadline = time.monotonic() + limit
    while True:
        pci = s.guest_addresses()
        secs = [pci[p][1] or 0 for p in ports]
        if all(0 < n < 0xFF for n in secs) and len(set(secs)) == len(secs):
            return secs
        assert time.monotonic() < deadline, f"buses not numbered within {limit} s: {secs}"
        time.sleep(0.02)


# -- pure helpers ------------------------------------------------------------------------------------------------

def test_address_forms() -> None:
    assert _address("/run/vm.qmp") == "/run/vm.qmp"
    assert _address("unix:/run/vm.qmp") == "/run/vm.qmp"
    assert _address("localhost:4444") == ("localhost", 4444)
    assert _address("tcp:10.0.0.1:4444") == ("10.0.0.1", 4444)
    assert _address("[::1]:4444") == ("::1", 4444)
    assert _address("vm.qmp") == "vm.qmp"


def test_plug_order_puts_function_0_last() -> None:
    devs = nic_pair("rp1") + [{"driver": "e1000e", "id": "x2", "bus": "rp1", "addr": "0x0.2"}]
    assert [d["id"] for d in plug_order(devs)] == ["nic-f1", "x2", "nic"]
    single = [{"driver": "pci-serial", "id": "s", "bus": "rp1"}]
    assert plug_order(single) == single


# -- session -----------------------------------------------------------------------------------------------------

def test_session_queries_in_prelaunch(vm: qemu_proc.QemuProc) -> None:
    with QmpSession(vm.socket, timeout=5) as s:
        assert s.peripherals() == ["rp1", "rp2", "rp3", "xhci"]
        assert s.running() is False
        assert s.hotplug_mode() == "native"
        assert s.root_ports() == ["rp1", "rp2", "rp3"]
        assert s.free_root_ports() == ["rp1", "rp3"]
        assert s.port_devices("rp2") == ["/machine/peripheral/xhci"]
        with pytest.raises(QemuRefused) as e:
            s.execute("qom-list", {"path": "/machine/peripheral/nope"})
        assert e.value.error_class == "DeviceNotFound"
        assert str(e.value) == "QEMU refused qom-list: DeviceNotFound: Device '/machine/peripheral/nope' not found"
        assert isinstance(e.value, HostError)


def test_hotplug_mode_acpi_and_hotplug_off_port(start: Start) -> None:
    p = start(["-device", "pcie-root-port,id=rp1,chassis=1,hotplug=off", "-device", "pcie-root-port,id=rp2,chassis=2"],
              native=False)
    with QmpSession(p.socket, timeout=5) as s:
        assert s.hotplug_mode() == "acpi"
        assert s.free_root_ports() == ["rp2"]
    with pytest.raises(UsageError, match="rp1 has hotplug=off; free ports: rp2"):
        attach(p.socket, Attachment(kind="serial", id="s", serial_path="/dev/null"), port="rp1", timeout=5)


def test_connect_errors(vm: qemu_proc.QemuProc, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist; start QEMU with `-qmp unix:"):
        QmpSession(str(tmp_path / "nope.sock")).open()
    with QmpSession(vm.socket, timeout=5):  # QEMU serves one client per QMP socket: a second one gets no greeting
        t = time.monotonic()
        with pytest.raises(HostError, match="did not answer the QMP greeting within 0.3 s .*another client"):
            QmpSession(vm.socket, timeout=0.3).open()
        assert time.monotonic() - t < 2


def test_qemu_exit_mid_session(vm: qemu_proc.QemuProc) -> None:
    with QmpSession(vm.socket, timeout=5) as s:
        vm.stop()
        with pytest.raises(HostError, match="lost during query-status|did not answer query-status"):
            s.execute("query-status")


# -- multi-function hot plug (attach_devices) --------------------------------------------------------------------

def test_function_0_first_is_refused_and_rolled_back(vm: qemu_proc.QemuProc) -> None:
    with pytest.raises(HostError, match="function 0 already occupied .* cannot be exposed to guest") as e:
        attach_devices(vm.socket, nic_pair("rp1"), timeout=5)
    assert "still in the VM" not in str(e.value)
    with QmpSession(vm.socket, timeout=5) as s:  # function 0 went in, then was unplugged again
        assert "nic" not in s.peripherals()
        assert s.free_root_ports() == ["rp1", "rp3"]


def test_multifunction_function_0_last_then_detach(vm: qemu_proc.QemuProc) -> None:
    ids = attach_devices(vm.socket, plug_order(nic_pair("rp3")), timeout=5)
    assert ids == ["nic-f1", "nic"]
    with QmpSession(vm.socket, timeout=5) as s:
        assert s.free_root_ports() == ["rp1"]
        assert sorted(s.port_devices("rp3")) == ["/machine/peripheral/nic", "/machine/peripheral/nic-f1"]
    t = time.monotonic()
    out = detach(vm.socket, nic_att(), timeout=5)  # one device_del of function 0 unplugs the slot
    assert time.monotonic() - t < 2
    assert out == {"ids": ["nic", "nic-f1"], "chardev": None, "mode": "native"}
    with QmpSession(vm.socket, timeout=5) as s:
        assert s.free_root_ports() == ["rp1", "rp3"]
        assert "nic-f1" not in s.peripherals()


def test_detach_non_zero_function_unplugs_whole_slot(vm: qemu_proc.QemuProc) -> None:
    attach_devices(vm.socket, plug_order(nic_pair("rp1")), timeout=5)
    with QmpSession(vm.socket, timeout=5) as s:
        assert s.unplug(["nic-f1", "nic"], 5) == []
        assert s.free_root_ports() == ["rp1", "rp3"]


def test_qemu_errors_carry_qemus_message(vm: qemu_proc.QemuProc) -> None:
    with pytest.raises(HostError, match="QEMU refused device_add: GenericError: Duplicate device ID 'rp1'"):
        attach_devices(vm.socket, [{"driver": "e1000e", "id": "rp1", "bus": "rp3"}], timeout=5)
    with pytest.raises(HostError, match="Property 'e1000e.bogus' not found"):
        attach_devices(vm.socket, [{"driver": "e1000e", "id": "n", "bus": "rp3", "bogus": 1}], timeout=5)
    vfio = Attachment(kind="pci", id="gpu", functions=("0000:99:00.0", "0000:99:00.1"))
    with pytest.raises(HostError, match=r"vfio /sys/bus/pci/devices/0000:99:00.1: no such host device"):
        attach(vm.socket, vfio, timeout=5)  # the non-zero function goes first, so that is the one QEMU refuses
    with QmpSession(vm.socket, timeout=5) as s:
        assert s.free_root_ports() == ["rp1", "rp3"]


def test_failed_device_rolls_back_chardev(vm: qemu_proc.QemuProc, pty: str) -> None:
    chardev = {"id": "chr-x", "backend": {"type": "serial", "data": {"device": pty}}}
    devices = [{"driver": "pci-serial", "id": "ok", "bus": "rp1", "chardev": "chr-x"},
               {"driver": "pci-serial", "id": "bad", "bus": "rp404", "chardev": "chr-x"}]
    with pytest.raises(HostError, match="Bus 'rp404' not found"):
        attach_devices(vm.socket, devices, chardevs=[chardev], timeout=5)
    with QmpSession(vm.socket, timeout=5) as s:
        assert "ok" not in s.peripherals()
        assert "chr-x" not in s.chardev_ids()


# -- attach / detach of Attachments ------------------------------------------------------------------------------

def test_serial_attach_detach(vm: qemu_proc.QemuProc, pty: str) -> None:
    att = Attachment(kind="serial", id="ser", serial_path=pty)
    assert attach(vm.socket, att, timeout=5) == {"port": "rp1", "ids": ["ser"], "pci": [None]}  # prelaunch
    with QmpSession(vm.socket, timeout=5) as s:
        assert "chr-ser" in s.chardev_ids()
        assert s.free_root_ports() == ["rp3"]
    with pytest.raises(UsageError, match="ser is already in the VM; detach it first"):
        attach(vm.socket, att, timeout=5)
    assert detach(vm.socket, att, timeout=5) == {"ids": ["ser"], "chardev": "chr-ser", "mode": "native"}
    with QmpSession(vm.socket, timeout=5) as s:
        assert "chr-ser" not in s.chardev_ids()
        assert s.free_root_ports() == ["rp1", "rp3"]
    with pytest.raises(NotFoundError, match="ser is not in the VM at .*devices: rp1, rp2, rp3, xhci"):
        detach(vm.socket, att, timeout=5)


def test_serial_bad_path_and_isa(vm: qemu_proc.QemuProc) -> None:
    with pytest.raises(HostError, match="Could not open '/dev/nonexistent-tty'"):
        attach(vm.socket, Attachment(kind="serial", id="ser", serial_path="/dev/nonexistent-tty"), timeout=5)
    with pytest.raises(UsageError, match="isa-serial cannot be hot plugged"):
        attach(vm.socket, Attachment(kind="serial", id="s", serial_path="/dev/null", serial_bus="isa"), timeout=5)


def test_usb_attach_detach(vm: qemu_proc.QemuProc) -> None:
    att = Attachment(kind="usb", id="key", device_kind="usb", usb_bus=1, usb_port="1.3")
    assert attach(vm.socket, att, timeout=5) == {"port": "xhci.0", "ids": ["key"], "pci": [None]}
    with QmpSession(vm.socket, timeout=5) as s:
        assert s.port_devices("rp2") == ["/machine/peripheral/xhci"]
        assert s.free_root_ports() == ["rp1", "rp3"]  # usb does not take a root port
    assert detach(vm.socket, att, timeout=5)["ids"] == ["key"]


def test_usb_needs_xhci(start: Start) -> None:
    p = start(["-device", "pcie-root-port,id=rp1,chassis=1"])
    att = Attachment(kind="usb", id="key", usb_bus=1, usb_port="2")
    with pytest.raises(UsageError, match=r"no xHCI \(USB 3\) controller in the VM; start QEMU with `-device qemu-xhci"):
        attach(p.socket, att, timeout=5)


def test_port_choice(vm: qemu_proc.QemuProc, pty: str) -> None:
    a = Attachment(kind="serial", id="a", serial_path=pty)
    assert attach(vm.socket, a, port="rp3", timeout=5)["port"] == "rp3"
    b = Attachment(kind="serial", id="b", serial_path=pty)
    with pytest.raises(UsageError, match="port rp3 is in use by a; free ports: rp1"):
        attach(vm.socket, b, port="rp3", timeout=5)
    with pytest.raises(UsageError, match="port rp9 does not exist in the VM; free ports: rp1"):
        attach(vm.socket, b, port="rp9", timeout=5)
    with pytest.raises(UsageError, match="xhci is a qemu-xhci, not a hot-pluggable PCIe port"):
        attach(vm.socket, b, port="xhci", timeout=5)
    assert attach(vm.socket, b, timeout=5)["port"] == "rp1"
    c = Attachment(kind="serial", id="c", serial_path=pty)
    with pytest.raises(UsageError, match=r"no free hot-plug port in the VM \(all in use: rp1, rp2, rp3\); start QEMU "
                                         r"with spare hot-plug ports, e.g. `-device pcie-root-port,id=rp9,chassis=9`"):
        attach(vm.socket, c, timeout=5)


# -- running VM, ACPI hot plug -----------------------------------------------------------------------------------

def test_running_vm_gets_guest_addresses(vm: qemu_proc.QemuProc, pty: str) -> None:
    with QmpSession(vm.socket, timeout=5) as s:
        s.execute("cont")
        assert s.running() is True
        bus = wait_numbered(s, ["rp1", "rp2", "rp3"])[2]
        assert s.free_root_ports() == ["rp1", "rp3"]  # same answer as in prelaunch
    out = attach(vm.socket, Attachment(kind="serial", id="ser", serial_path=pty), port="rp3", timeout=5)
    assert out["pci"] == [f"0000:{bus:02x}:00.0"]
    attach_devices(vm.socket, plug_order(nic_pair("rp1")), timeout=5)
    with QmpSession(vm.socket, timeout=5) as s:
        pci = s.guest_addresses()
        assert pci["nic"][0].endswith(":00.0") and pci["nic-f1"][0].endswith(":00.1")
        assert pci["nic"][0][:8] == pci["nic-f1"][0][:8] != "0000:00:"
    assert detach(vm.socket, nic_att(), timeout=5)["ids"] == ["nic", "nic-f1"]
    with QmpSession(vm.socket, timeout=5) as s:
        assert "nic" not in s.guest_addresses()
        assert s.free_root_ports() == ["rp1"]


def test_detach_with_acpi_hotplug_times_out_with_explanation(start: Start, pty: str) -> None:
    p = start(native=False)
    attach_devices(p.socket, plug_order(nic_pair("rp1")), timeout=5)
    ser = Attachment(kind="serial", id="ser", serial_path=pty)
    attach(p.socket, ser, timeout=5)
    t = time.monotonic()
    with pytest.raises(HostError) as e:
        detach(p.socket, nic_att(), timeout=0.5)
    assert time.monotonic() - t < 3
    msg = str(e.value)
    assert msg.startswith("nic, nic-f1 not unplugged within 0.5 s; the device is still in the VM: this VM uses ACPI")
    assert "(the VM is not even running)" in msg
    assert "-global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off" in msg
    with pytest.raises(HostError, match="not unplugged within 0.3 s"):  # the pending unplug is waited on again
        detach(p.socket, nic_att(), timeout=0.3)
    with pytest.raises(HostError, match=r"^ser not unplugged .*ACPI.*; chardev chr-ser kept$"):
        detach(p.socket, ser, timeout=0.2)
    with QmpSession(p.socket, timeout=5) as s:
        assert s.free_root_ports() == []
        s.execute("system_reset")  # a reset completes a pending ACPI unplug
        deadline = time.monotonic() + 5
        while {"nic", "ser"} & set(s.peripherals()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.free_root_ports() == ["rp1", "rp3"]
        assert "chr-ser" in s.chardev_ids()
    assert detach(p.socket, ser, timeout=5) == {"ids": [], "chardev": "chr-ser", "mode": "acpi"}  # the leftover
    with pytest.raises(NotFoundError):
        detach(p.socket, ser, timeout=5)
