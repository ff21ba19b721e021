"""`passthru assign/release/assignments/qemu-args/libvirt-xml` on a fixture host: specs resolve to devices, PCI
groups come along and move to vfio-pci (through the fake kernel), two VMs never share a device, a failed bind
leaves nothing claimed, and the rendered arguments match what the VM holds."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import sysfs_fixtures as fx
from fake_kernel import FakeKernel
from passthru.cli import main as cli_main
from passthru.service.session import Session
from passthru.errors import HostError, NotFoundError, UsageError
from passthru.inventory import ClaimError
from passthru.service.assign import assign, open_store
from passthru.service.release import release
from passthru.vfio import Holdings


@pytest.fixture
def host(tmp_path):
    root = Path(fx.gpu_server(tmp_path / "gs"))
    s = Session(str(root), None, None)
    return s, FakeKernel(s.host)


def held(s: Session, vm: str) -> list[str]:
    return sorted(a.device for a in open_store(s).assignments(vm))


def driver(s: Session, addr: str) -> str | None:
    return s.host.link_name(f"{s.host.sys}/bus/pci/devices/{addr}/driver")


def test_an_address_brings_its_group_and_binds_it(host):
    s, k = host
    res = assign(s, "vm1", ["86:00.0"], kernel=k)
    assert held(s, "vm1") == ["pci:0000:86:00.0", "pci:0000:86:00.1"]
    assert res.bound == ["0000:86:00.0", "0000:86:00.1"]
    assert driver(s, "0000:86:00.0") == driver(s, "0000:86:00.1") == "vfio-pci"
    # the same request again changes nothing; another VM is refused, naming the holder
    again = assign(s, "vm1", ["0000:86:00.0"], kernel=k)
    assert again.bound == [] and held(s, "vm1") == ["pci:0000:86:00.0", "pci:0000:86:00.1"]
    with pytest.raises(ClaimError, match="vm1"):
        assign(s, "vm2", ["0000:86:00.1"], kernel=k)
    assert held(s, "vm2") == []


def test_kind_with_numa_strict_and_prefer(host):
    s, k = host
    # NUMA node 1 has GPUs 86:00.0, 87:00.0 (nouveau), the T4 and the A100; node 0 the 1080 Tis on 18/19
    a = assign(s, "vm1", ["gpu"], numa=1, kernel=k)
    first = a.assignments[0].device
    assert first.startswith("pci:0000:8") or first.startswith("pci:0000:af") or first.startswith("pci:0000:d8")
    assert all(not d.endswith(".1") or d[:-1] + "0" in held(s, "vm1") for d in held(s, "vm1"))
    with pytest.raises(ClaimError, match="no free device"):
        assign(s, "vm2", ["nvme"], numa=1, kernel=k)  # both NVMe drives are on node 0
    got = assign(s, "vm2", ["nvme"], numa=1, numa_policy="prefer", kernel=k)
    assert got.assignments[0].device in ("pci:0000:5e:00.0", "pci:0000:5f:00.0")


def test_usb_and_serial_specs(host):
    s, k = host
    assign(s, "vm1", ["usb:046d:c31c", "usb:0403:6001:A50285BI", "serial:/dev/ttyS4"], kernel=k)
    assert held(s, "vm1") == ["serial:/dev/ttyS4", "usb:1-1.1", "usb:1-1.3"]
    with pytest.raises(NotFoundError, match="console"):
        assign(s, "vm2", ["serial:/dev/ttyS0"], kernel=k)
    with pytest.raises(NotFoundError, match="no such USB device"):
        assign(s, "vm2", ["usb:dead:beef"], kernel=k)
    with pytest.raises(ClaimError):
        assign(s, "vm2", ["usb:1-1.1"], kernel=k)
    # a hub is given only by its port path, never as "any usb device"
    assign(s, "vm2", ["usb:1-1"], kernel=k)
    assert held(s, "vm2") == ["usb:1-1"]


def test_a_failed_bind_releases_what_was_claimed(host):
    s, k = host
    k.fail("unbind", errno.EBUSY, addr="0000:86:00.1")
    with pytest.raises(HostError, match="in use"):
        assign(s, "vm1", ["0000:86:00.0", "usb:1-2"], kernel=k)
    assert held(s, "vm1") == [] and driver(s, "0000:86:00.0") == "nouveau"
    assert Holdings(s.paths).holdings() == []


def test_release_keeps_vfio_unless_restore(host):
    s, k = host
    assign(s, "vm1", ["0000:86:00.0", "0000:87:00.0"], kernel=k)
    release(s, "vm1", ["0000:86:00.1"], kernel=k)  # a function brings its group
    assert held(s, "vm1") == ["pci:0000:87:00.0", "pci:0000:87:00.1"] and driver(s, "0000:86:00.0") == "vfio-pci"
    release(s, "vm1", None, restore=True, kernel=k)
    assert held(s, "vm1") == [] and driver(s, "0000:87:00.0") == "nouveau"
    with pytest.raises(NotFoundError, match="holds no devices"):
        release(s, "vm1", kernel=k)


def test_cli_assign_qemu_args_libvirt_xml(host, capsys, tmp_path):
    s, _ = host
    root = str(s.host.base)
    # a VM's devices already on vfio-pci (19:00.0 + audio) need no bind: the CLI works on the fixture root
    assert cli_main(["--root", root, "assign", "vm1", "0000:19:00.0", "usb:1-2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [a["device"] for a in doc["assignments"]] == ["pci:0000:19:00.0", "pci:0000:19:00.1", "usb:1-2"]
    rom = tmp_path / "gpu.rom"
    rom.write_bytes(b"\x55\xaa" + bytes(510))
    assert cli_main(["--root", root, "qemu-args", "vm1", "--x-vga", "0000:19:00.0", "--romfile",
                     f"0000:19:00.0={rom}", "--json"]) == 0
    argv = json.loads(capsys.readouterr().out)["argv"]
    fn0 = next(a for a in argv if "host=0000:19:00.0" in a)
    assert "multifunction=on" in fn0 and "x-vga=on" in fn0 and f"romfile={rom}" in fn0
    assert any("host=0000:19:00.1" in a and "addr=0x0.1" in a for a in argv)
    assert any(a.startswith("usb-host,") and "hostbus=1" in a and "hostport=2" in a for a in argv)
    rom.write_bytes(b"MZ" + bytes(510))
    assert cli_main(["--root", root, "qemu-args", "vm1", "--romfile", f"0000:19:00.0={rom}"]) == 2
    assert "55 AA" in capsys.readouterr().err
    assert cli_main(["--root", root, "libvirt-xml", "vm1"]) == 0
    xml = capsys.readouterr().out
    assert "managed=\"no\"" in xml and 'bus="0x19"' in xml and 'multifunction="on"' in xml
    assert cli_main(["--root", root, "assignments", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["assignments"]
    assert {r["vm"] for r in rows} == {"vm1"} and len(rows) == 3
    # binding on a fixture root is refused plainly, and nothing stays claimed
    assert cli_main(["--root", root, "assign", "vm2", "0000:86:00.0"]) == 2
    assert "live host" in capsys.readouterr().err
    assert held(s, "vm2") == []
    assert cli_main(["--root", root, "assign", "vm2", "bogus!"]) == 2
    assert cli_main(["--root", root, "qemu-args", "nobody"]) == 2


def test_models_are_specs(host, capsys):
    s, k = host
    root = str(s.host.base)
    assert cli_main(["--root", root, "model", "add", "oxford-uart", "--vendor", "1415", "--device", "c158",
                     "--kind", "uart"]) == 0
    assert cli_main(["--root", root, "model", "add", "gpu", "--vendor", "1", "--device", "2"]) == 2
    assert "built-in kind" in capsys.readouterr().err
    s2 = Session(root, None, None)
    res = assign(s2, "vm1", ["oxford-uart"], kernel=FakeKernel(s2.host))
    assert [a.device for a in res.assignments] == ["pci:0000:03:00.0"]
    assert cli_main(["--root", root, "model", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["models"][0]["name"] == "oxford-uart"
    assert cli_main(["--root", root, "model", "remove", "nope"]) == 2
    with pytest.raises(UsageError):
        assign(s2, "vm1", ["no-such-model"], kernel=FakeKernel(s2.host))


def test_vf_settings_per_assignment_are_put_back_on_release(host):
    """gpu_server's ConnectX-5 VF 3b:00.2 (VF 0 of enp59s0f0np0), through the netlink boundary of writers/netlink.py
    (pyroute2's own request encoding, a fake kernel side) and the fake sysfs kernel."""
    from test_sriov import FakeIPRoute

    from passthru.kinds import KINDS, load_all
    from passthru.kinds.nic_vf import NicKind, VfNetlink

    s, k = host
    load_all()
    ip = FakeIPRoute({"enp59s0f0np0": 8, "enp59s0f1np1": 8})
    saved = KINDS["nic"]
    KINDS["nic"] = NicKind(netlink=VfNetlink(iproute=ip))
    try:
        with pytest.raises(UsageError, match="mac"):
            assign(s, "vm1", ["0000:3b:00.2"], vf_options={"mac": "zz"}, kernel=k)
        assert held(s, "vm1") == [] and ip.calls == []
        assign(s, "vm1", ["0000:3b:00.2"], vf_options={"mac": "52:54:00:12:34:56", "vlan": 100, "trust": "on"},
               kernel=k)
        vf0 = ip.vfs["enp59s0f0np0"][0]
        assert (vf0["mac"], vf0["vlan"], vf0["trust"]) == ("52:54:00:12:34:56", 100, 1)
        assert driver(s, "0000:3b:00.2") == "vfio-pci"
        release(s, "vm1", kernel=k)
        vf0 = ip.vfs["enp59s0f0np0"][0]
        assert vf0["vlan"] == 0 and vf0["trust"] == 0 and vf0["mac"] != "52:54:00:12:34:56"
        with pytest.raises(UsageError, match="none of the devices is an SR-IOV VF"):
            assign(s, "vm2", ["0000:86:00.0"], vf_options={"vlan": 5}, kernel=k)
        assert held(s, "vm2") == [] and driver(s, "0000:86:00.0") == "nouveau"  # bound, then given back
    finally:
        KINDS["nic"] = saved
