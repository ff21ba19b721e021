"""passthru's discovery on a real kernel: `passthru devices/usb/serial --json` in the lab guest agree with what lspci,
sysfs and the kernel say, and a capture made in the guest replays on the host to the same devices.

Each test runs the CLI from the lab venv inside the guest (one boot for all of them). A broken or missing CLI makes
these fail (exit status and stderr in the message), never pass.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from .guest import GuestRun, in_guest

pytestmark = pytest.mark.lab

PCI_GROUPS = """
for d in /sys/bus/pci/devices/*; do g=$(readlink "$d/iommu_group"); echo "${d##*/} ${g##*/}"; done > groups.txt
"""


def _devices(guest: GuestRun, name: str = "devices.json") -> dict:
    guest.check()
    doc = guest.json(name)
    assert doc.get("schema") == 1, doc.get("schema")
    return doc


def _pci(doc: dict) -> dict[str, dict]:
    return {d["address"]: d for d in doc["devices"] if d["bus"] == "pci"}


def _lspci(text: str) -> dict[str, dict]:
    """`lspci -nnk -D` -> {address: {class (4 hex), vendor, device, driver}}."""
    out: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"^([0-9a-f]{4,}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) .*?\[([0-9a-f]{4})\]: ", line)
        if m:
            ids = re.findall(r"\[([0-9a-f]{4}):([0-9a-f]{4})\]", line)
            assert ids, line
            cur = out[m.group(1)] = {"class": m.group(2), "vendor": ids[-1][0], "device": ids[-1][1],
                                     "driver": None}
        elif cur is not None and line.strip().startswith("Kernel driver in use:"):
            cur["driver"] = line.split(":", 1)[1].strip()
    return out


def _groups(text: str) -> dict[str, int | None]:
    rows = (line.split() for line in text.splitlines() if line.strip())
    return {r[0]: (int(r[1]) if len(r) > 1 else None) for r in rows}


@in_guest("""
    passthru devices --json > devices.json
    lspci -nnk -D > lspci.txt
""" + PCI_GROUPS)
def test_devices_agree_with_lspci_and_sysfs(guest):
    doc = _devices(guest)
    assert doc["iommu"]["enabled"] is True, doc["iommu"]
    pci = _pci(doc)
    lspci = _lspci(guest.file("lspci.txt"))
    groups = _groups(guest.file("groups.txt"))
    assert len(lspci) >= 20, "lspci saw too little; is this the lab?"
    assert sorted(pci) == sorted(lspci), "passthru and lspci list different PCI functions"
    for addr, want in lspci.items():
        got = pci[addr]
        assert (got["vendor"], got["device"]) == (want["vendor"], want["device"]), addr
        assert re.fullmatch(r"[0-9a-f]{6}", got["class"]) and got["class"][:4] == want["class"], (addr, got["class"])
        assert got["driver"] == want["driver"], (addr, got["driver"], want["driver"])
        assert got["iommu_group"] == groups[addr], (addr, got["iommu_group"], groups[addr])
        assert isinstance(got["numa_node"], int)
    kinds = {a: d["kind"] for a, d in pci.items()}
    assert sorted(k for k in kinds.values() if k == "nic") == ["nic", "nic"]
    assert [a for a, d in pci.items() if d["driver"] == "e1000e"] == [a for a, k in kinds.items() if k == "nic"]
    assert all(kinds[a] == "bridge" for a, d in pci.items() if d["class"].startswith("0604"))
    assert {d["kind"] for d in pci.values() if d["vendor"] == "1b36" and d["device"] == "0010"} == {"nvme"}


@in_guest("passthru devices --json > devices.json")
def test_gpu_and_its_hdmi_audio_travel_together(guest):
    pci = _pci(_devices(guest))
    boot_vga = pci["0000:00:02.0"]
    assert (boot_vga["vendor"], boot_vga["device"], boot_vga["class"][:4]) == ("1234", "1111", "0300")
    assert boot_vga["boot_vga"] is True and boot_vga["kind"] == "gpu"
    gpus = [d for d in pci.values() if d["class"].startswith("0380") and d["vendor"] == "1234"]
    audios = [d for d in pci.values() if d["class"].startswith("0403") and (d["vendor"], d["device"]) == ("8086",
                                                                                                         "293e")]
    assert len(gpus) == 1 and len(audios) == 1
    gpu, audio = gpus[0], audios[0]
    assert gpu["kind"] == "gpu" and gpu["role"] == "display"
    assert gpu["boot_vga"] is None, "the kernel has boot_vga only on VGA-class (0300) functions"
    assert gpu["iommu_group"] is not None and gpu["iommu_group"] == audio["iommu_group"]
    assert [d["address"] for d in pci.values() if d["iommu_group"] == gpu["iommu_group"]] == [gpu["address"],
                                                                                               audio["address"]]
    assert gpu["companions"] == [audio["address"]]
    assert audio["role"] == "companion" and audio["companion_of"] == gpu["address"]
    assert boot_vga["companions"] == []


@in_guest("""
    pf=$(dirname "$(ls /sys/bus/pci/devices/*/sriov_totalvfs | head -n1)")
    echo "${pf##*/}" > pf.txt
    passthru devices --json > before.json
    echo 2 > "$pf/sriov_numvfs"
    for v in "$pf"/virtfn*; do vf=$(readlink -f "$v"); echo "${vf##*/}"; done > vfs.txt
    passthru devices --json > devices.json
""" + PCI_GROUPS)
def test_sriov_vfs_are_found_with_their_pf(guest):
    pci = _pci(_devices(guest))
    pf_addr = guest.file("pf.txt").strip()
    vfs = guest.file("vfs.txt").split()
    assert len(vfs) == 2
    pf = pci[pf_addr]
    assert pf["kind"] == "nvme" and pf["role"] == "pf" and pf["physfn"] is None
    assert pf["vfs"] == vfs
    assert pf["sriov"] == {"totalvfs": 2, "numvfs": 2}
    groups = _groups(guest.file("groups.txt"))
    for i, addr in enumerate(vfs):
        vf = pci[addr]
        assert vf["physfn"] == pf_addr and vf["vf_index"] == i and vf["role"] == "vf" and vf["kind"] == "nvme"
        assert vf["iommu_group"] == groups[addr] and vf["iommu_group"] != pf["iommu_group"]
        assert "flr" in vf["reset_methods"]
    assert len({pci[a]["iommu_group"] for a in vfs}) == 2, "each VF is its own group"
    before = _pci(guest.json("before.json"))
    assert before[pf_addr]["vfs"] == [] and not set(vfs) & set(before)


@in_guest("""
    passthru usb --json > usb.json
    passthru devices --json > devices.json
    for d in /sys/bus/usb/devices/*; do
        [ -f "$d/idVendor" ] || continue
        echo "${d##*/} $(cat $d/busnum) $(cat $d/devnum) $(cat $d/idVendor) $(cat $d/idProduct) $(cat $d/bDeviceClass)"
    done > sysfs-usb.txt
""")
def test_usb_devices_by_port_path(guest):
    guest.check()
    doc = guest.json("usb.json")
    assert doc.get("schema") == 1
    usb = {u["port_path"]: u for u in doc["usb"]}
    sysfs = {r[0]: r[1:] for r in (line.split() for line in guest.file("sysfs-usb.txt").splitlines())}
    non_root = {name: row for name, row in sysfs.items() if not name.startswith("usb")}
    assert set(non_root) == {"1-1", "1-1.1", "1-2"}, sysfs
    for path, (busnum, devnum, vendor, product, cls) in non_root.items():
        u = usb[path]
        assert (u["busnum"], u["devnum"], u["vendor"], u["product"]) == (int(busnum), int(devnum), vendor, product)
        assert u["is_root_hub"] is False
        assert u["is_hub"] is (cls == "09")
    assert usb["1-1"]["is_hub"] is True
    assert (usb["1-1.1"]["vendor"], usb["1-1.1"]["product"]) == ("0627", "0001")  # keyboard behind the hub
    assert (usb["1-2"]["vendor"], usb["1-2"]["product"]) == ("0627", "0001")  # tablet
    roots = [u for u in doc["usb"] if u["is_root_hub"]]
    assert len(roots) == len([n for n in sysfs if n.startswith("usb")]) == 2
    listed = {d["id"]: d for d in guest.json("devices.json")["devices"] if d["bus"] == "usb"}
    assert set(listed) == {"1-1", "1-1.1", "1-2"}, "devices lists USB devices without root hubs"
    assert listed["1-1"]["role"] == "hub" and listed["1-2"]["role"] == "device"


@in_guest("""
    passthru serial --json > serial.json
    lspci -D -n -d 1b36:0002 | cut -d' ' -f1 > pci-serial.txt
    cat /sys/class/tty/console/active > console.txt
""")
def test_serial_ports_pci_backing_and_console(guest):
    guest.check()
    doc = guest.json("serial.json")
    assert doc.get("schema") == 1
    ports = {p["name"]: p for p in doc["serial"]}
    pci_serial = guest.file("pci-serial.txt").strip()
    assert re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", pci_serial)
    assert "ttyS0" in guest.file("console.txt").split()
    assert ports["ttyS0"]["console"] is True and ports["ttyS0"]["ghost"] is False
    s1 = ports["ttyS1"]
    assert s1["device"] == "/dev/ttyS1" and s1["console"] is False and s1["ghost"] is False
    assert s1["backing"] is not None and (s1["backing"]["bus"], s1["backing"]["address"]) == ("pci", pci_serial)
    assert ports["ttyS2"]["ghost"] is True and ports["ttyS3"]["ghost"] is True


@in_guest("""
    passthru devices --json > devices.json
    passthru capture -o cap.tar.gz
""")
def test_capture_replays_on_the_host(guest, lab_host_cli, tmp_path):
    live = _devices(guest)
    replay = tmp_path / "replay"
    replay.mkdir()
    subprocess.run(["tar", "xzf", str(guest.path("cap.tar.gz")), "-C", str(replay)], check=True, timeout=60)
    p = lab_host_cli("--root", str(replay), "devices", "--json")
    assert p.returncode == 0, p.stderr
    replayed = json.loads(p.stdout)
    assert replayed["schema"] == 1
    if replayed["devices"] != live["devices"]:
        a = {d["id"]: d for d in live["devices"]}
        b = {d["id"]: d for d in replayed["devices"]}
        diffs = [f"{k}: missing in replay" for k in a.keys() - b.keys()]
        diffs += [f"{k}: only in replay" for k in b.keys() - a.keys()]
        for k in a.keys() & b.keys():
            diffs += [f"{k}.{f}: guest {a[k].get(f)!r} / replay {b[k].get(f)!r}"
                      for f in sorted(a[k].keys() | b[k].keys()) if a[k].get(f) != b[k].get(f)]
        diffs = diffs or ["the same devices in a different order"]
        pytest.fail("the replayed capture differs from the live guest:\n" + "\n".join(sorted(diffs)[:60]))


@in_guest("""
    passthru devices --json > devices.json
    for d in /sys/bus/pci/devices/*; do
        printf '%s|%s|%s|%s|%s|%s|%s\\n' "${d##*/}" "$(cat $d/current_link_speed 2>/dev/null)" \\
            "$(cat $d/current_link_width 2>/dev/null)" "$(cat $d/max_link_speed 2>/dev/null)" \\
            "$(cat $d/max_link_width 2>/dev/null)" "$(cat $d/reset_method 2>/dev/null)" "$(cat $d/numa_node)"
    done > attrs.txt
""")
def test_link_reset_and_numa_match_the_kernel_attributes(guest):
    """passthru takes the PCIe link from config space (one read per function); the kernel's own attribute files
    must say the same for every function of a real kernel."""
    pci = _pci(_devices(guest))
    checked = 0
    for line in guest.file("attrs.txt").splitlines():
        addr, cur_s, cur_w, max_s, max_w, reset, numa = line.split("|")
        d = pci[addr]
        want_cur = None if not cur_s or cur_s.startswith("Unknown") else cur_s
        want_max = None if not max_s or max_s.startswith("Unknown") else max_s
        assert d["link"] == {"current_speed": want_cur, "current_width": int(cur_w) if cur_w else None,
                             "max_speed": want_max, "max_width": int(max_w) if max_w else None}, addr
        assert d["reset_methods"] == reset.split(), addr
        assert d["numa_node"] == int(numa), addr
        checked += bool(cur_s)
    assert checked >= 8, "expected PCIe link attributes on the lab's root ports and endpoints"


@in_guest("""
    python - > bursts.json <<'PY'
    import json, os, threading, time
    from passthru.agent.events import UdevSource, Watcher
    dev = sorted(os.listdir("/sys/bus/pci/devices"))[0]
    bursts, got = [], threading.Event()
    w = Watcher(UdevSource(), lambda evs: (bursts.append(evs), got.set()), debounce=0.05)
    w.start()
    try:
        deadline = time.monotonic() + 30
        while not got.is_set() and time.monotonic() < deadline:
            with open(f"/sys/bus/pci/devices/{dev}/uevent", "w") as f:
                f.write("change")  # what `udevadm trigger` sends; nothing changes
            got.wait(2)
    finally:
        w.stop()
    print(json.dumps({"device": dev, "bursts": [[[e.action, e.subsystem, e.name] for e in b] for b in bursts]}))
    PY
""")
def test_kernel_uevents_reach_the_watcher(guest):
    """The live source: a "change" uevent on the guest's first PCI device comes through pyudev's kernel netlink
    monitor to the debounced watcher (tests/test_agent.py drives the same code with a stand-in monitor)."""
    guest.check()
    doc = guest.json("bursts.json")
    assert ["change", "pci", doc["device"]] in [e for b in doc["bursts"] for e in b], doc
