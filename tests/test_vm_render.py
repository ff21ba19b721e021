"""vm/qemu.py and vm/libvirt.py: exact argv and XML, notes, errors; then the real qemu-system-x86_64 (paused,
QMP on stdio) and libvirt's virt-xml-validate accept what we render, and reject a deliberately broken variant."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

import vm_checks
from passthru.errors import UsageError
from passthru.vm.attachment import Attachment
from passthru.vm.libvirt import QEMU_NS, libvirt_xml, qemu_override_xml
from passthru.vm.qemu import qemu_args

GIB = 1 << 30
UUID = "2b0f4c1e-8f6a-4e0c-9a35-1e0c8d9b7c11"
needs_qemu = pytest.mark.skipif(vm_checks.QEMU is None, reason="qemu-system-x86_64 not installed "
                                "(scripts/install.sh --test installs qemu-system-x86)")
needs_libvirt = pytest.mark.skipif(vm_checks.VIRT_XML_VALIDATE is None, reason="virt-xml-validate not installed "
                                   "(Debian: libvirt-clients, and libxml2-utils for xmllint)")


@pytest.fixture
def rom(tmp_path):
    p = tmp_path / "gpu.rom"
    p.write_bytes(b"\x55\xaa" + bytes(510))
    return str(p)


def gpu(rom: str | None = None, **kw) -> Attachment:
    return Attachment("pci", "gpu0", "gpu", functions=("0000:01:00.0", "0000:01:00.1"), x_vga=True,
                      romfile=rom, rombar=False, **kw)


def usb(ident: str, port: str, **kw) -> Attachment:
    return Attachment("usb", ident, "usb", usb_bus=1, usb_port=port, **kw)


def serial(ident: str, path: str, bus: str = "pci") -> Attachment:
    return Attachment("serial", ident, "serial", serial_path=path, serial_bus=bus)


MDEV = Attachment("mdev", "vgpu0", "vgpu", mdev_uuid=UUID)


# ---- QEMU argv ----

def test_gpu_and_audio_share_one_root_port_as_functions_0_and_1(rom):
    r = qemu_args([gpu(rom)])
    assert r.argv == [
        "-device", "pcie-root-port,id=rp-gpu0,bus=pcie.0,chassis=1,slot=1",
        "-device", f"vfio-pci,host=0000:01:00.0,id=gpu0,bus=rp-gpu0,addr=0x0.0,multifunction=on,x-vga=on,"
                   f"romfile={rom},rombar=0",
        "-device", "vfio-pci,host=0000:01:00.1,id=gpu0-f1,bus=rp-gpu0,addr=0x0.1",
    ]
    assert any("x-vga=on" in n and "-vga none" in n for n in r.notes)


def test_pc_puts_the_functions_in_one_pci0_slot(rom):
    r = qemu_args([gpu(rom)], machine="pc")
    assert r.argv == [
        "-device", f"vfio-pci,host=0000:01:00.0,id=gpu0,bus=pci.0,addr=0x10.0,multifunction=on,x-vga=on,"
                   f"romfile={rom},rombar=0",
        "-device", "vfio-pci,host=0000:01:00.1,id=gpu0-f1,bus=pci.0,addr=0x10.1",
    ]
    assert any(n.startswith("pc machine:") and "PCIe" in n for n in r.notes)


def test_romfile_without_the_rom_signature_is_a_usage_error(tmp_path):
    bad = tmp_path / "not.rom"
    bad.write_bytes(b"MZ\x90\x00")
    with pytest.raises(UsageError) as e:
        qemu_args([gpu(str(bad))])
    msg = str(e.value)
    assert "\n" not in msg and "gpu0" in msg and "55 AA" in msg and "4d 5a" in msg
    with pytest.raises(UsageError, match="No such file"):
        qemu_args([gpu(str(tmp_path / "missing.rom"))])


def test_relative_romfile_becomes_absolute(rom, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = qemu_args([gpu("gpu.rom")])
    assert f"romfile={rom}" in r.argv[3]


def test_mdev_uses_sysfsdev():
    assert qemu_args([MDEV]).argv == [
        "-device", "pcie-root-port,id=rp-vgpu0,bus=pcie.0,chassis=1,slot=1",
        "-device", f"vfio-pci,sysfsdev=/sys/bus/mdev/devices/{UUID},id=vgpu0,bus=rp-vgpu0"]
    assert qemu_args([MDEV], machine="pc").argv == [
        "-device", f"vfio-pci,sysfsdev=/sys/bus/mdev/devices/{UUID},id=vgpu0,bus=pci.0,addr=0x10.0"]


def test_two_usb_devices_share_one_xhci_on_its_own_port():
    atts = [usb("kbd", "1.3"), usb("tab", "2")]
    r = qemu_args(atts, first_chassis=5)
    assert r.argv == [
        "-device", "pcie-root-port,id=rp-xhci-pt,bus=pcie.0,chassis=5,slot=5",
        "-device", "qemu-xhci,id=xhci-pt,bus=rp-xhci-pt",
        "-device", "usb-host,id=kbd,hostbus=1,hostport=1.3,bus=xhci-pt.0",
        "-device", "usb-host,id=tab,hostbus=1,hostport=2,bus=xhci-pt.0",
    ]
    assert any("kbd, tab" in n and "usb-host" in n for n in r.notes)
    assert qemu_args(atts, machine="pc").argv[:2] == ["-device", "qemu-xhci,id=xhci-pt,bus=pci.0,addr=0x10.0"]


def test_serial_ports_pci_and_isa_with_escaped_path():
    r = qemu_args([serial("com1", "/dev/serial/by-path/pci-0000:00:16.3,x"), serial("com2", "/dev/ttyS2", "isa")])
    assert r.argv == [
        "-chardev", "serial,id=chr-com1,path=/dev/serial/by-path/pci-0000:00:16.3,,x",
        "-device", "pcie-root-port,id=rp-com1,bus=pcie.0,chassis=1,slot=1",
        "-device", "pci-serial,id=com1,chardev=chr-com1,bus=rp-com1",
        "-chardev", "serial,id=chr-com2,path=/dev/ttyS2",
        "-device", "isa-serial,id=com2,chardev=chr-com2",
    ]
    assert any(n.startswith("com2: isa-serial") and "ISA bus" in n for n in r.notes)
    assert not any("com1" in n for n in r.notes)
    assert vm_checks.split_opts(r.argv[1]) == ("serial", {"id": "chr-com1",
                                                          "path": "/dev/serial/by-path/pci-0000:00:16.3,x"})


def test_mixed_set_numbers_chassis_in_order_and_pc_slots_from_0x10(rom):
    atts = [gpu(rom), MDEV, usb("kbd", "1"), serial("com1", "/dev/ttyS1"), serial("com2", "/dev/ttyS2", "isa")]
    q35 = [d for d in vm_checks.devices(qemu_args(atts).argv) if d[0] == "pcie-root-port"]
    assert [(p["id"], p["chassis"], p["slot"]) for _, p in q35] == [
        ("rp-gpu0", "1", "1"), ("rp-vgpu0", "2", "2"), ("rp-xhci-pt", "3", "3"), ("rp-com1", "4", "4")]
    pc = vm_checks.devices(qemu_args(atts, machine="pc").argv)
    assert [(p["id"], p.get("addr")) for _, p in pc] == [
        ("gpu0", "0x10.0"), ("gpu0-f1", "0x10.1"), ("vgpu0", "0x11.0"), ("xhci-pt", "0x12.0"), ("kbd", None),
        ("com1", "0x13.0"), ("com2", None)]


def test_machine_names():
    assert qemu_args([MDEV], machine="pc-q35-7.2").argv == qemu_args([MDEV]).argv
    assert qemu_args([MDEV], machine="pc-i440fx-7.2").argv == qemu_args([MDEV], machine="pc").argv
    with pytest.raises(UsageError, match="q35 or pc"):
        qemu_args([MDEV], machine="microvm")


def test_bad_input_is_a_usage_error():
    nic = Attachment("pci", "nic0", "nic", functions=("0000:02:00.0",))
    with pytest.raises(UsageError, match="used twice"):
        qemu_args([nic, nic])
    with pytest.raises(UsageError, match="at most 4 ISA"):
        qemu_args([serial(f"s{i}", "/dev/ttyS1", "isa") for i in range(5)])
    with pytest.raises(UsageError, match="out of pci.0 slots"):
        qemu_args([Attachment("pci", f"n{i}", functions=(f"0000:{i + 2:02x}:00.0",)) for i in range(17)],
                  machine="pc")
    with pytest.raises(UsageError, match="host bus and port"):
        qemu_args([Attachment("usb", "u", usb_vendor_id=1, usb_product_id=2)])
    with pytest.raises(UsageError, match="not a UUID"):
        qemu_args([Attachment("mdev", "m", mdev_uuid="nope")])
    with pytest.raises(UsageError, match="QEMU id"):
        qemu_args([Attachment("pci", "0bad", functions=("0000:02:00.0",))])


def test_notes_large_bar_and_operator_hints():
    big = Attachment("pci", "gpu1", "gpu", functions=("0000:81:00.0",), largest_bar=32 * GIB,
                     notes=("NVIDIA consumer GPU: hide the hypervisor (-cpu host,kvm=off)",))
    r = qemu_args([big])
    assert "NVIDIA consumer GPU: hide the hypervisor (-cpu host,kvm=off)" in r.notes
    mmio = [n for n in r.notes if "MMIO window" in n]
    assert mmio == ["gpu1: a 32 GiB 64-bit BAR: give the VM a 64 GiB 64-bit MMIO window (QEMU's q35 default is "
                    "32 GiB): -global q35-pcihost.pci-hole64-size=64G, and with OVMF -fw_cfg "
                    "name=opt/ovmf/X-PciMmio64Mb,string=65536"]
    # 16 GiB fits q35's default 32 GiB hole; on pc (2 GiB default) even 4 GiB asks for more
    mid = Attachment("pci", "gpu2", "gpu", functions=("0000:82:00.0",), largest_bar=16 * GIB)
    assert not any("MMIO" in n for n in qemu_args([mid]).notes)
    small = Attachment("pci", "gpu3", "gpu", functions=("0000:83:00.0",), largest_bar=4 * GIB)
    assert any("i440FX-pcihost.pci-hole64-size=8G" in n for n in qemu_args([small], machine="pc").notes)
    assert qemu_args([Attachment("pci", "nic0", functions=("0000:02:00.0",))]).notes == []


def test_to_json():
    r = qemu_args([usb("kbd", "1")])
    assert r.to_json() == {"argv": r.argv, "notes": r.notes}


# ---- the real QEMU ----

@needs_qemu
@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_real_qemu_accepts_usb_and_serial_args(machine, tmp_path):
    pty = vm_checks.Pty(str(tmp_path))
    try:
        atts = [usb("kbd", "1.3"), usb("tab", "2"), serial("com1", pty.link), serial("com2", pty.path, "isa")]
        r = qemu_args(atts, machine=machine)
        assert ",," in " ".join(r.argv), "the comma in the pty link's directory is escaped"
        ids = vm_checks.peripheral_ids(r.argv, machine)
    finally:
        pty.close()
    expect = {"kbd", "tab", "com1", "com2", "xhci-pt"} | ({"rp-xhci-pt", "rp-com1"} if machine == "q35" else set())
    assert expect <= ids


@needs_qemu
def test_real_qemu_check_fails_on_a_broken_argument(tmp_path):
    r = qemu_args([usb("kbd", "1")])
    broken = [a.replace("usb-host,", "usb-host,hostprot=1,") for a in r.argv]
    with pytest.raises(AssertionError, match="hostprot"):
        vm_checks.peripheral_ids(broken, "q35")


@needs_qemu
@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_real_qemu_accepts_the_mmio_window_options_of_the_note(machine):
    big = Attachment("pci", "gpu1", functions=("0000:81:00.0",), largest_bar=64 * GIB)
    note = next(n for n in qemu_args([big], machine=machine).notes if "MMIO window" in n)
    opts = re.findall(r"(-global|-fw_cfg) (\S+?)(?=,? and|$)", note)
    assert [o for o, _ in opts] == ["-global", "-fw_cfg"]
    rc, replies, err = vm_checks.run_paused([x for pair in opts for x in pair], machine, [])
    assert rc == 0, err


@needs_qemu
def test_vfio_property_names_exist_in_this_qemu(rom):
    known = vm_checks.driver_props("vfio-pci")
    argv = qemu_args([gpu(rom), MDEV]).argv + qemu_args([gpu(rom), MDEV], machine="pc").argv
    assert {"host", "sysfsdev", "x-vga", "romfile", "rombar", "multifunction", "addr"} <= known
    assert vm_checks.unknown_props(argv, "vfio-pci", known) == []
    misspelled = [a.replace("x-vga=", "x-vgaa=") for a in argv]
    assert vm_checks.unknown_props(misspelled, "vfio-pci", known) == ["vfio-pci.x-vgaa", "vfio-pci.x-vgaa"]


@needs_qemu
@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_real_qemu_parses_every_vfio_device_up_to_the_missing_host_device(machine, rom):
    """QEMU sets every property (name and value) before realize; realize then fails for want of the host device.
    So "no such host device" for each vfio-pci device, one at a time, means QEMU accepted all we wrote."""
    argv = qemu_args([gpu(rom), MDEV], machine=machine).argv
    hosts = [p.get("host") or p["sysfsdev"] for d, p in vm_checks.devices(argv) if d == "vfio-pci"]
    assert len(hosts) == 3
    for k, host in enumerate(hosts):
        rc, _, err = vm_checks.run_paused(vm_checks.without_other_devices(argv, "vfio-pci", k), machine, [])
        assert rc == 1 and "no such host device" in err and host.split("/")[-1] in err, err
    broken = [a.replace("rombar=0", "rombar=off") for a in argv]
    rc, _, err = vm_checks.run_paused(vm_checks.without_other_devices(broken, "vfio-pci", 0), machine, [])
    assert rc == 1 and "rombar" in err and "no such host device" not in err, err


# ---- libvirt ----

def test_libvirt_q35_structure(rom):
    frag = libvirt_xml([gpu(rom), MDEV, usb("kbd", "1.3", usb_vendor_id=0x0627, usb_product_id=0x1),
                        serial("com1", "/dev/ttyS1"), serial("com2", "/dev/ttyS2", "isa")])
    root = ET.fromstring(frag)
    assert root.tag == "devices"
    ctl = root.find("controller")
    assert ctl.attrib == {"type": "pci", "index": "1", "model": "pcie-root-port"}
    assert ctl.find("alias").get("name") == "ua-rp-gpu0"
    pci = root.findall("hostdev[@type='pci']")
    assert [h.get("managed") for h in pci] == ["no", "no"]
    assert [h.find("source/address").attrib for h in pci] == [
        {"domain": "0x0000", "bus": "0x01", "slot": "0x00", "function": f"0x{i}"} for i in (0, 1)]
    assert [h.find("address").attrib for h in pci] == [
        {"type": "pci", "domain": "0x0000", "bus": "0x01", "slot": "0x00", "function": "0x0", "multifunction": "on"},
        {"type": "pci", "domain": "0x0000", "bus": "0x01", "slot": "0x00", "function": "0x1"}]
    assert pci[0].find("rom").attrib == {"bar": "off", "file": rom}
    assert pci[1].find("rom") is None
    assert [h.find("alias").get("name") for h in pci] == ["ua-gpu0", "ua-gpu0-f1"]
    md = root.find("hostdev[@type='mdev']")
    assert md.get("model") == "vfio-pci" and md.find("source/address").get("uuid") == UUID
    assert md.find("alias").get("name") == "ua-vgpu0"
    u = root.find("hostdev[@type='usb']")
    assert (u.find("source/vendor").get("id"), u.find("source/product").get("id")) == ("0x0627", "0x0001")
    sers = root.findall("serial")
    assert [(s.get("type"), s.find("source").get("path"), s.find("target").get("type"), s.find("alias").get("name"))
            for s in sers] == [("dev", "/dev/ttyS1", "pci-serial", "ua-com1"), ("dev", "/dev/ttyS2", "isa-serial",
                                                                              "ua-com2")]
    assert "x-vga has no <hostdev> setting" in frag and "bus 1 port 1.3" in frag


def test_libvirt_pc_and_single_devices():
    nic = Attachment("pci", "nic0", "nic", functions=("0000:02:00.0",))
    root = ET.fromstring(libvirt_xml([gpu(), nic], machine="pc"))
    assert root.find("controller") is None
    hd = root.findall("hostdev")
    assert [h.find("address").get("slot") for h in hd[:2]] == ["0x10", "0x10"]
    assert hd[0].find("address").get("multifunction") == "on" and hd[0].find("rom").attrib == {"bar": "off"}
    assert hd[2].find("address") is None, "a single device is left for libvirt to place"
    with pytest.raises(UsageError, match="vendor:product"):
        libvirt_xml([usb("kbd", "1")])
    with pytest.raises(UsageError, match="not a PCI address"):
        libvirt_xml([Attachment("pci", "x", functions=("01:00",))])
    with pytest.raises(UsageError, match="q35 or pc"):
        libvirt_xml([nic], machine="virt")


def test_libvirt_override_and_notes():
    ov = ET.fromstring(qemu_override_xml([gpu()]))
    assert ov.tag == f"{{{QEMU_NS}}}override"
    prop = ov.find(f"{{{QEMU_NS}}}device/{{{QEMU_NS}}}frontend/{{{QEMU_NS}}}property")
    assert ov.find(f"{{{QEMU_NS}}}device").get("alias") == "ua-gpu0"
    assert prop.attrib == {"name": "x-vga", "type": "bool", "value": "true"}
    assert qemu_override_xml([MDEV]) is None
    big = Attachment("pci", "gpu1", functions=("0000:81:00.0",), largest_bar=32 * GIB, notes=("hide -- the hv",))
    frag = libvirt_xml([big])
    assert "<pcihole64 unit='GiB'>64</pcihole64>" in frag and "X-PciMmio64Mb'>65536" in frag
    assert "<!-- hide - - the hv -->" in frag  # "--" is not allowed inside an XML comment


@needs_libvirt
@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_libvirt_fragment_validates_against_the_domain_schema(machine, rom):
    atts = [gpu(rom), MDEV, usb("kbd", "1.3", usb_vendor_id=0x0627, usb_product_id=0x1),
            serial("com1", "/dev/ttyS1"), serial("com2", "/dev/ttyS2", "isa"),
            Attachment("pci", "nic0", functions=("0000:02:00.0",), largest_bar=64 * GIB)]
    xml = vm_checks.domain_xml(libvirt_xml(atts, machine=machine), machine, qemu_override_xml(atts))
    rc, out = vm_checks.validate_domain(xml)
    assert rc == 0, out
    assert "validates" in out


@needs_libvirt
def test_libvirt_validation_can_fail():
    frag = libvirt_xml([gpu()])
    broken = frag.replace('managed="no"', 'managed="maybe"', 1)
    rc, out = vm_checks.validate_domain(vm_checks.domain_xml(broken, "q35"))
    assert rc != 0 and "fails to validate" in out
    broken = frag.replace("<alias", "<nickname", 1).replace("</alias", "</nickname", 1)
    rc, out = vm_checks.validate_domain(vm_checks.domain_xml(broken, "q35"))
    assert rc != 0


@needs_libvirt
@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_libvirt_advice_in_comments_validates(machine):
    """The XML the comments suggest (pcihole64, fwcfg sysinfo, no emulated video) is valid where it says."""
    frag = libvirt_xml([gpu(largest_bar=64 * GIB)], machine=machine)
    ctl = re.search(r"<controller type='pci' index='0'.*?</controller>", frag).group(0)
    sysinfo = re.search(r"<sysinfo type='fwcfg'>.*?</sysinfo>", frag).group(0)
    video = re.search(r"<video>.*?</video>", frag).group(0)
    root = ET.fromstring(frag)
    root.insert(0, ET.fromstring(ctl))
    root.append(ET.fromstring(video))
    dom = ET.fromstring(vm_checks.domain_xml(ET.tostring(root, encoding="unicode"), machine))
    dom.insert(3, ET.fromstring(sysinfo))
    rc, out = vm_checks.validate_domain(ET.tostring(dom, encoding="unicode"))
    assert rc == 0, out


@needs_libvirt
def test_libvirt_x_vga_comment_override_validates():
    frag = libvirt_xml([gpu()])
    override = re.search(r"<qemu:override>.*?</qemu:override>", frag).group(0)
    ns = re.search(r"xmlns:qemu='([^']+)'", frag).group(1)
    override = override.replace("<qemu:override>", f'<qemu:override xmlns:qemu="{ns}">', 1)
    same = [ET.canonicalize(x, strip_text=True) for x in (override, qemu_override_xml([gpu()]))]
    assert same[0] == same[1], "the comment shows what qemu_override_xml renders"
    rc, out = vm_checks.validate_domain(vm_checks.domain_xml(frag, "q35", override))
    assert rc == 0, out
