"""`passthru libvirt-xml VM --domain`: an ordinary existing domain (root ports at index 1..6, as virt-install makes
them) is read, and what passthru adds takes free controller indexes and slots. The merged domain is accepted by
`virsh define` on a real libvirtd and the element files by `virsh attach-device --config`, where the old fragment
is refused ("Multiple 'pci' controllers with index '1'"). Refusals are one line, exit 2, nothing written."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import libvirtd
from passthru.errors import UsageError
from passthru.vm.attachment import Attachment
from passthru.vm.domain import parse_domain
from passthru.vm.libvirt import libvirt_xml
from passthru.vm.merge import merge_domain, write_elements

VM1 = (Path(__file__).resolve().parent.parent / "docs" / "examples" / "vm1.xml").read_text()
GPU = Attachment("pci", "gpu0", "gpu", functions=("0000:19:00.0", "0000:19:00.1"))
NIC = Attachment("pci", "nic0", "nic", functions=("0000:3b:00.0",))
KBD = Attachment("usb", "kbd", "usb", usb_bus=1, usb_port="2", usb_vendor_id=0x0627, usb_product_id=0x0001)
needs_daemon = pytest.mark.skipif(not libvirtd.available(), reason=libvirtd.why_not() or "")


def pc_domain() -> str:
    """vm1 as an i440fx domain: no root ports, its devices in bus 0 slots (the disk in 0x10)."""
    root = ET.fromstring(VM1.replace("pc-q35-7.2", "pc-i440fx-7.2").replace("model='pcie-root'", "model='pci-root'"))
    devices = root.find("devices")
    for ctl in devices.findall("controller[@model='pcie-root-port']"):
        devices.remove(ctl)
    for addr in devices.iter("address"):
        if addr.get("type") == "pci" and addr.get("bus") != "0x00":
            addr.set("slot", "0x10" if addr.get("bus") == "0x04" else f"0x{int(addr.get('bus'), 16) + 2:02x}")
            addr.set("bus", "0x00")
    return ET.tostring(root, encoding="unicode")


def test_the_domain_is_read():
    dom = parse_domain(VM1)
    assert (dom.name, dom.uuid, dom.machine, dom.family) == ("vm1", "6f1c5a52-3d7e-4f0a-9c61-2b8e4d1a7c30",
                                                           "pc-q35-7.2", "q35")
    assert dom.pci_indexes == {0: "pcie-root", **{i: "pcie-root-port" for i in range(1, 7)}}
    assert {(0, 2), (0, 1), (0, 0x1F), (4, 0), (1, 0)} <= dom.slots
    assert dom.host_devices == []


def test_q35_multi_function_set_gets_a_root_port_above_the_domains_own():
    m = merge_domain(parse_domain(VM1), [GPU, NIC, KBD], hide_kvm=True)
    root = ET.fromstring(m.domain)
    ports = root.findall("devices/controller[@type='pci']")
    assert [p.get("index") for p in ports] == ["0", "1", "2", "3", "4", "5", "6", "7"]
    assert ports[-1].find("alias").get("name") == "ua-rp-gpu0"
    hd = root.findall("devices/hostdev[@type='pci']")
    assert [(h.find("address").get("bus"), h.find("address").get("function")) for h in hd[:2]] == [
        ("0x07", "0x0"), ("0x07", "0x1")]
    assert hd[2].find("address") is None  # a single device: libvirt adds a root port for it
    assert root.find("features/kvm/hidden").get("state") == "on"
    assert root.find("features/acpi") is not None, "the domain's own features stay"
    assert [n for n, _ in m.elements] == ["01-controller-rp-gpu0.xml", "02-hostdev-pci-gpu0.xml",
                                          "03-hostdev-pci-gpu0-f1.xml", "04-hostdev-pci-nic0.xml",
                                          "05-hostdev-usb-kbd.xml"]
    assert any("virsh edit" in n and "hidden" in n for n in m.notes)
    assert "libosinfo" in m.domain and "ns0:" not in m.domain


def test_pc_multi_function_set_takes_a_free_bus_0_slot():
    m = merge_domain(parse_domain(pc_domain()), [GPU, GPU.__class__("pci", "gpu1", functions=("0000:1a:00.0",
                                                                                              "0000:1a:00.1"))])
    root = ET.fromstring(m.domain)
    slots = [h.find("address").get("slot") for h in root.findall("devices/hostdev")]
    assert slots == ["0x11", "0x11", "0x12", "0x12"]  # 0x10 is the disk's
    assert root.find("devices/controller[@model='pcie-root-port']") is None


def test_refusals_are_one_line():
    merged = merge_domain(parse_domain(VM1), [GPU]).domain
    cases = [
        (merged, {}, "already has 0000:19:00.0"),
        (VM1, {"machine": "pc"}, "is a pc-q35-7.2 machine (q35), not pc"),
        (VM1.replace("<devices>", "<devices", 1), None, "does not parse"),
        (VM1.replace("type='kvm'", "type='xen'", 1), None, "KVM/QEMU domains"),
        (VM1.replace("pc-q35-7.2", "microvm"), None, "q35 or pc"),
        ("<network><name>x</name></network>", None, "not <domain>"),
        (VM1.replace("index='2'", "index='1'"), None, "two PCI controllers have index 1"),
    ]
    for text, kw, words in cases:
        with pytest.raises(UsageError) as e:
            merge_domain(parse_domain(text), [GPU], **kw) if kw is not None else parse_domain(text)
        assert words in str(e.value) and "\n" not in str(e.value)


def test_hostdevs_of_a_domain_become_specs():
    xml = VM1.replace("<devices>", """<devices>
    <hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x3b' slot='0x00'
      function='0x1'/></source></hostdev>
    <hostdev mode='subsystem' type='pci'><source><address domain='0' bus='25' slot='0' function='0'/></source>
      </hostdev>
    <hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address
      uuid='4B20D080-1B54-4048-85B3-A6A62D165C01'/></source></hostdev>
    <hostdev mode='subsystem' type='usb'><source><vendor id='0x0627'/><product id='0x0001'/></source></hostdev>
    <hostdev mode='subsystem' type='usb'><source><address bus='1' device='5'/></source></hostdev>
    <interface type='hostdev' managed='yes'><source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02'
      function='0x3'/></source></interface>""", 1)
    got = [(h.spec, h.managed) for h in parse_domain(xml).host_devices]
    assert got == [("0000:3b:00.1", True), ("0000:19:00.0", False),
                   ("mdev:4b20d080-1b54-4048-85b3-a6a62d165c01", False), ("usb:0627:0001", False),
                   ("usb-dev:1:5", False), ("0000:3b:02.3", True)]


def test_element_files_refuse_a_directory_with_xml(tmp_path):
    m = merge_domain(parse_domain(VM1), [GPU])
    paths = write_elements(str(tmp_path / "d"), m.elements)
    assert [Path(p).name for p in paths] == [n for n, _ in m.elements]
    with pytest.raises(UsageError, match="already has 01-controller"):
        write_elements(str(tmp_path / "d"), m.elements)


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh not installed (libvirt-clients)")
@pytest.mark.parametrize("text", [VM1, pc_domain()], ids=["q35", "pc"])
def test_virsh_test_driver_parses_the_merged_domain(tmp_path, text):
    f = tmp_path / "d.xml"
    f.write_text(merge_domain(parse_domain(text), [GPU, NIC, KBD], hide_kvm=True).domain)
    p = subprocess.run(["virsh", "-c", "test:///default", "define", str(f)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr


@needs_daemon
def test_real_libvirtd_defines_the_merged_domain_and_attaches_the_element_files(tmp_path):
    base = tmp_path / "vm1.xml"
    base.write_text(VM1)
    frag = tmp_path / "frag.xml"
    frag.write_text(VM1.replace("</devices>", libvirt_xml([GPU]).split("<devices>", 1)[1], 1))
    merged = tmp_path / "merged.xml"
    merged.write_text(merge_domain(parse_domain(VM1), [GPU, NIC, KBD], hide_kvm=True).domain)
    with libvirtd.Libvirtd(tmp_path) as d:
        old = d.virsh("define", str(frag))
        assert old.returncode != 0 and "Multiple 'pci' controllers with index '1'" in old.stderr, old.stderr
        ok = d.virsh("define", str(merged))
        assert ok.returncode == 0, ok.stderr
        dumped = ET.fromstring(d.virsh("dumpxml", "vm1").stdout)
        hds = dumped.findall("devices/hostdev")
        assert len(hds) == 4 and dumped.find("features/kvm/hidden").get("state") == "on"
        assert all(h.find("address") is not None for h in hds if h.get("type") == "pci"), "libvirt placed the NIC"
        assert d.virsh("undefine", "vm1").returncode == 0
        # the other form: the domain as it was, then one element per file, in name order
        assert d.virsh("define", str(base)).returncode == 0
        files = write_elements(str(tmp_path / "vm1.d"), merge_domain(parse_domain(VM1), [GPU, NIC, KBD]).elements)
        for f in files:
            r = d.virsh("attach-device", "vm1", f, "--config")
            assert r.returncode == 0, f"{f}: {r.stderr}"
        dumped = ET.fromstring(d.virsh("dumpxml", "vm1").stdout)
        assert [c.get("index") for c in dumped.findall("devices/controller[@type='pci']")][-1] in ("7", "8")
        assert len(dumped.findall("devices/hostdev")) == 4
        # out of order: libvirt adds a controller of its own for the hostdev's bus, and then refuses passthru's
        assert d.virsh("undefine", "vm1").returncode == 0 and d.virsh("define", str(base)).returncode == 0
        assert d.virsh("attach-device", "vm1", files[1], "--config").returncode == 0
        r = d.virsh("attach-device", "vm1", files[0], "--config")
        assert r.returncode != 0 and "index='7' already exists" in r.stderr, r.stderr


def test_cli_domain_forms_and_hide_kvm(tmp_path, capsys):
    import sysfs_fixtures as fx
    from passthru.cli import main

    root = fx.gpu_server(tmp_path / "gs")
    dom = tmp_path / "vm1.xml"
    dom.write_text(VM1)
    run = lambda *a: main(["--root", str(root), *a])  # noqa: E731
    assert run("assign", "vm1", "0000:19:00.0") == 0
    capsys.readouterr()
    assert run("libvirt-xml", "vm1", "--domain", str(dom), "--hide-kvm") == 0
    out, err = capsys.readouterr()
    root_el = ET.fromstring(out)
    assert root_el.find("features/kvm/hidden") is not None and root_el.find("devices/controller[@index='7']") is not None
    assert "# note: hidden hypervisor" in err
    assert run("libvirt-xml", "vm1", "--domain", str(dom), "--attach-dir", str(tmp_path / "d")) == 0
    names = [Path(p).name for p in capsys.readouterr().out.split()]
    assert names == ["01-controller-rp-pt-0000-19-00-0.xml", "02-hostdev-pci-pt-0000-19-00-0.xml",
                     "03-hostdev-pci-pt-0000-19-00-0-f1.xml"]
    for args, words in [(["--domain", str(dom), "--machine", "pc"], "not pc"),
                        (["--attach-dir", str(tmp_path / "e")], "goes with --domain"),
                        (["--domain", "vm1"], "with --root, give the domain as a file"),
                        (["--domain", str(tmp_path / "missing.xml")], "No such file")]:
        assert run("libvirt-xml", "vm1", *args) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert not (tmp_path / "e").exists()
    assert run("qemu-args", "vm1", "--hide-kvm", "--json") == 0
    doc = __import__("json").loads(capsys.readouterr().out)
    assert doc["argv"][-2:] == ["-global", "x86_64-cpu.kvm=off"]
    assert any(n.startswith("hidden hypervisor") for n in doc["notes"])
    assert run("libvirt-xml", "vm1", "--hide-kvm") == 0
    assert "<features><kvm><hidden state='on'/></kvm></features>" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")
def test_the_hide_kvm_global_sets_kvm_off_on_any_cpu_model():
    import vm_checks
    from passthru.vm.qemu import HIDE_KVM

    ask = [{"execute": "qom-get", "arguments": {"path": "/machine/unattached/device[0]", "property": "kvm"}}]
    for cpu, want in [("max", False), ("qemu64", False), ("max,kvm=on", True)]:
        rc, replies, err = vm_checks.run_paused(["-cpu", cpu, *HIDE_KVM], "q35", ask)
        assert rc == 0, err
        assert [r["return"] for r in replies if isinstance(r.get("return"), bool)] == [want], (cpu, replies)
