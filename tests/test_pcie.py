"""ACS and the PCIe tree from config space (host/pcie.py) and why a group is as big as it is (host/isolation.py), on
fixture trees whose groups the builder computes with the kernel's rule."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import sysfs_fixtures as fx
from sysfs_builder import SysfsBuilder

from passthru.cli import main as cli_main
from passthru.discovery import discover
from passthru.host.iommu import scan_groups
from passthru.host.isolation import acs_verdict, explain_groups
from passthru.host.pcie import extended_caps, parse_config, read_pcie
from passthru.host.root import HostRoot


def _why(root):
    inv = discover(HostRoot(root))
    gs = scan_groups(inv.root, inv.pci)
    by_dev = {a: g.number for g in gs for a in g.devices}
    return inv, by_dev, explain_groups(inv, gs)


def test_acs_and_port_kinds_from_config(gpu_server):
    h = HostRoot(gpu_server)
    rp = read_pcie(h, "0000:17:00.0")
    assert rp.kind == "root_port" and rp.readable == 4096 and not rp.short
    assert rp.acs is not None and (rp.acs.offset, rp.acs.cap, rp.acs.ctrl) == (0x100, 0x1F, 0x1D)
    assert rp.acs.bits(rp.acs.ctrl) == {"SrcValid": True, "TransBlk": False, "ReqRedir": True, "CmpltRedir": True,
                                        "UpstreamFwd": True, "EgressCtrl": False, "DirectTrans": False}
    assert rp.acs.enabled and acs_verdict(rp) == (True, "acs")
    nic = read_pcie(h, "0000:3b:00.0")  # multifunction ConnectX-5 PF with ACS and SR-IOV
    assert nic.kind == "endpoint" and nic.multifunction and nic.ext_caps == (0x000D, 0x0010)
    assert acs_verdict(nic) == (True, "acs")
    gpu = read_pcie(h, "0000:18:00.0")
    assert gpu.multifunction and gpu.acs is None and acs_verdict(gpu) == (False, "multifunction_no_acs")
    bmc_bridge = read_pcie(h, "0000:01:00.0")
    assert bmc_bridge.kind == "pcie_to_pci" and acs_verdict(bmc_bridge) == (False, "pcie_to_pci")
    ast = read_pcie(h, "0000:02:00.0")  # conventional PCI behind it: 256 bytes, no PCIe capability
    assert ast.readable == 256 and ast.kind == "pci" and ast.acs is None
    single = read_pcie(h, "0000:af:00.0")
    assert single.kind == "endpoint" and acs_verdict(single) == (True, "not_applicable")


def test_short_and_broken_config_never_crash(gpu_server):
    cfg = Path(gpu_server, "sys/bus/pci/devices/0000:17:00.0/config").read_bytes()
    short = parse_config("0000:17:00.0", cfg[:64])  # what a non-root user reads
    assert short.short and short.kind == "unknown" and short.acs is None and short.header_type == 1
    assert acs_verdict(short) == (None, "unreadable")
    assert parse_config("x", None).readable == 0 and parse_config("x", b"\xff" * 4096).header_type is None
    looped = bytearray(cfg)
    struct.pack_into("<I", looped, 0x100, 0x000D | 1 << 16 | 0x100 << 20)  # next points at itself
    assert extended_caps(bytes(looped)) == [(0x000D, 1, 0x100)]
    struct.pack_into("<I", looped, 0x100, 0x000D | 1 << 16 | 0x040 << 20)  # next points into the header
    assert extended_caps(bytes(looped)) == [(0x000D, 1, 0x100)]
    assert parse_config("y", cfg[:0x104]).acs is None  # the capability cut off


def _host(tmp_path, ctrl: int) -> SysfsBuilder:
    b = SysfsBuilder(tmp_path / "h", auto_groups=True)
    b.iommu("intel")
    b.bridge("0000:00:01.0", acs_ctrl=ctrl, numa_node=0)
    b.pci("0000:01:00.0", 0x10DE, 0x1B06, 0x030000, parent="0000:00:01.0", driver="nouveau", numa_node=0)
    b.bridge("0000:00:02.0", numa_node=0, secondary=2)  # an empty slot with ACS on
    b.bridge("0000:00:03.0", numa_node=0)
    b.pci("0000:03:00.0", 0x8086, 0x1533, 0x020000, parent="0000:00:03.0", driver="igb", numa_node=0)
    b.build()
    return b


def test_acs_present_but_redirect_off(tmp_path):
    b = _host(tmp_path, 0x11)  # SV and UF on, RR and CR off (pci=disable_acs_redir= does this)
    assert b.groups[b.fn("0000:01:00.0").group] == ["0000:00:01.0", "0000:01:00.0"]  # the kernel's rule
    inv, by_dev, why = _why(b.root)
    e, iso = why[by_dev["0000:01:00.0"]]
    assert [(c.address, c.reason, c.missing) for c in e.causes] == [("0000:00:01.0", "acs_off", ("RR", "CR"))]
    assert "has ACS but RR/CR off" in e.text and e.isolated and iso is None  # one card: nothing else pulled in
    on, _, _ = _why(_host(tmp_path / "on", 0x1D).root)
    g = scan_groups(on.root, on.pci)
    assert all(len(x.devices) == 1 for x in g)


def test_broken_desktop_names_the_switch_and_the_slots(broken_desktop, capsys):
    assert cli_main(["--root", str(broken_desktop), "groups", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    g = next(g for g in doc["groups"] if any(d["address"] == "0000:03:00.0" for d in g["devices"]))
    assert {"number", "type", "viable", "reason", "blockers", "devices", "other_members"} < set(g)
    e = g["explanation"]
    assert e["isolated"] is False
    assert [(c["address"], c["reason"]) for c in e["causes"]] == [
        ("0000:01:00.0", "multifunction_no_acs"), ("0000:02:00.0", "no_acs"), ("0000:02:04.0", "no_acs"),
        ("0000:02:08.0", "no_acs")]
    assert [s["root_port"] for s in g["isolation"]["slots"]] == ["0000:00:08.1"]
    assert g["isolation"]["acs_override"]["kernel_argument"] == "pcie_acs_override=downstream,multifunction"
    assert "DMA to each other unchecked" in g["isolation"]["acs_override"]["warning"]
    assert cli_main(["--root", str(broken_desktop), "groups"]) == 0
    out = capsys.readouterr().out
    assert "group 7: shared: 0000:01:00.0 (switch upstream port)" in " ".join(out.split())
    assert "pcie_acs_override" in out and out.splitlines()[-1] == "9 groups, 6 viable"
    assert cli_main(["--root", str(broken_desktop), "show", "03:00.0", "--json"]) == 0
    show = json.loads(capsys.readouterr().out)["group"]
    assert show["explanation"] == e and show["isolation"] == g["isolation"]


def test_gpu_server_groups_are_explained(gpu_server, capsys):
    inv, by_dev, why = _why(gpu_server)
    e, iso = why[by_dev["0000:02:00.0"]]  # the BMC's VGA behind its PCIe-to-PCI bridge
    assert [(c.address, c.reason) for c in e.causes] == [("0000:01:00.0", "pcie_to_pci")]
    assert e.isolated and iso is None and e.note is None and e.root_buses == ("0000:00",)
    assert why[by_dev["0000:d8:00.0"]][0].root_buses == ("0000:d7",)  # socket 1's PCIe stack
    e, _ = why[by_dev["0000:18:00.0"]]
    assert [(c.address, c.reason) for c in e.causes] == [("0000:18:00.0", "multifunction_no_acs")]
    assert "0000:18:00.* (endpoint) is a multifunction device without ACS" in e.text
    assert all(w[0].note is None for w in why.values()), "the fixture's groups follow the kernel's rule"
    assert cli_main(["--root", str(gpu_server), "doctor", "--json"]) == 1
    checks = [c for c in json.loads(capsys.readouterr().out)["checks"] if c["id"] == "iommu.isolation"]
    assert [c["status"] for c in checks] == ["pass"]


def test_doctor_warns_about_a_shared_group(broken_desktop, capsys):
    cli_main(["--root", str(broken_desktop), "doctor", "--json", "0000:03:00.0"])
    checks = json.loads(capsys.readouterr().out)["checks"]
    iso = [c for c in checks if c["id"] == "iommu.isolation"]
    assert len(iso) == 1 and iso[0]["status"] == "warn" and "0000:02:00.0 (switch downstream port)" in iso[0]["evidence"]
    assert "0000:00:08.1" in iso[0]["fix"]
    grp = next(c for c in checks if c["id"] == "device.group")
    assert "shared because 0000:01:00.0" in grp["evidence"] and "to isolate" in grp["fix"]


def test_memoized_chains_are_the_inventorys(gpu_server, broken_desktop):
    from passthru.host.isolation import Explainer

    for root in (gpu_server, broken_desktop):
        inv = discover(HostRoot(root))
        ex = Explainer(inv)
        assert [ex.upstream(f.address) for f in inv.pci] == [inv.upstream(f.address) for f in inv.pci]
        assert any(len(inv.upstream(f.address)) >= 2 for f in inv.pci)
