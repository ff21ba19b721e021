"""`passthru doctor`: each check's verdict and fix on realistic hosts, and the exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sysfs_fixtures as fx
from passthru.cli import main as cli_main
from passthru.discovery import discover
from passthru.doctor import FAIL, PASS, SKIP, WARN, run_doctor
from passthru.host.root import HostRoot
from passthru.lookup import resolve_device

INTEL_LOG = ["DMAR: IOMMU enabled", "DMAR: Host address width 46",
             "DMAR-IR: Enabled IRQ remapping in x2apic mode", "pci 0000:00:00.0: Adding to iommu group 0"]
AMD_LOG = ["AMD-Vi: Interrupt remapping enabled", "AMD-Vi: Virtual APIC enabled",
           "pci 0000:00:00.2: AMD-Vi: Found IOMMU cap 0x40"]


def put(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def checks(root: Path, *devices: str) -> dict[str, object]:
    h = HostRoot(root)
    inv = discover(h)
    rep = run_doctor(h, [resolve_device(inv, d) for d in devices], inv)
    out: dict[str, object] = {}
    for f in rep.findings:
        out[f.id if f.device is None else f"{f.id}@{f.device}"] = f
    return out


def prepared(b, log=INTEL_LOG, kernel="6.8.0-45-generic", conf="vfio\nvfio_iommu_type1\nvfio_pci\n") -> Path:
    b.modules("vfio", "vfio_iommu_type1", "vfio_pci")
    b.build()
    root = Path(b.root)
    put(root, {"dev/kmsg": "\n".join(log) + "\n", "proc/sys/kernel/osrelease": kernel + "\n",
               "etc/modules-load.d/vfio.conf": conf})
    return root


def test_bad_host_fails_with_the_fixes(tmp_path, capsys):
    root = Path(fx.bare_host(tmp_path / "b"))
    c = checks(root)
    for cid in ("iommu.firmware", "iommu.active", "kernel.cmdline", "vfio.loaded", "vfio.boot"):
        assert c[cid].status == FAIL, cid
    assert "VT-d" in c["iommu.firmware"].fix and "prepare --apply" in c["kernel.cmdline"].fix
    assert "intel_iommu=on" in c["kernel.cmdline"].evidence
    assert "modprobe vfio-pci" in c["vfio.loaded"].fix
    assert c["iommu.irq_remapping"].status == SKIP
    assert cli_main(["--root", str(root), "doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL IOMMU active" in out and "fix: " in out
    assert cli_main(["--root", str(root), "doctor", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["summary"]["fail"] >= 5


def test_prepared_intel_host_passes(tmp_path, capsys):
    root = prepared(fx.make_gpu_server(tmp_path / "s"))
    c = checks(root)
    for cid in ("cpu.vendor", "cpu.virtualization", "iommu.firmware", "iommu.active", "kernel.cmdline",
                "iommu.irq_remapping", "vfio.loaded", "vfio.boot"):
        assert c[cid].status == PASS, (cid, c[cid])
    assert "not needed" in c["iommu.irq_remapping"].evidence
    assert "DMAR" in c["iommu.firmware"].evidence
    assert cli_main(["--root", str(root), "doctor"]) == 0
    capsys.readouterr()


def test_amd_vendor_arguments(tmp_path):
    b = fx.make_broken_desktop(tmp_path / "d")
    root = prepared(b, log=AMD_LOG)
    c = checks(root)
    assert c["cpu.vendor"].evidence.startswith("AMD") and c["cpu.virtualization"].evidence.startswith("svm")
    assert c["kernel.cmdline"].status == PASS and "iommu=pt" in c["kernel.cmdline"].evidence
    assert c["iommu.irq_remapping"].status == PASS


def test_vmx_missing_in_a_guest(tmp_path):
    b = fx.make_bare_host(tmp_path / "b")
    b.proc(cpu_flags="fpu vme de pse tsc msr pae hypervisor lm")
    b.build()
    f = checks(Path(b.root))["cpu.virtualization"]
    assert f.status == FAIL and "nested virtualization" in f.fix and "Intel VT-x" in f.fix


@pytest.mark.parametrize("log, unsafe, status, words", [
    (["DMAR: IOMMU enabled", "DMAR-IR: Enabled IRQ remapping in x2apic mode"], True, WARN, "only weakens"),
    (["DMAR: IOMMU enabled"], False, FAIL, "allow_unsafe_interrupts=1"),
    (["DMAR: IOMMU enabled"], True, WARN, "weaker isolation"),
    (["DMAR: IOMMU enabled", "DMAR-IR: IRQ remapping was enabled on dmar0 but we are not in kdump mode",
      "DMAR-IR: Failed to enable irq remapping"], False, FAIL, "allow_unsafe_interrupts=1"),
])
def test_interrupt_remapping(tmp_path, log, unsafe, status, words):
    b = fx.make_gpu_server(tmp_path / "s")
    if unsafe:
        b.proc("BOOT_IMAGE=/vmlinuz intel_iommu=on iommu=pt vfio_iommu_type1.allow_unsafe_interrupts=1")
    f = checks(prepared(b, log=log))["iommu.irq_remapping"]
    assert f.status == status and words in (f.fix or "") + f.evidence


def test_unreadable_kernel_log_is_a_skip_not_a_guess(tmp_path):
    root = prepared(fx.make_gpu_server(tmp_path / "s"))
    (root / "dev/kmsg").unlink()
    f = checks(root)["iommu.irq_remapping"]
    # a root other than / is a fixture or capture: the log is not in it, and running as root would not help
    assert f.status == SKIP and "not in this root" in f.fix and "as root" not in f.fix


def test_what_cannot_be_read_says_why_by_where_doctor_runs(tmp_path):
    from passthru.doctor import unreadable_fix
    from passthru.host.root import HostRoot

    capture = unreadable_fix(HostRoot(tmp_path), "the kernel log (/dev/kmsg)", "or set kernel.dmesg_restrict=0")
    assert capture.startswith(f"the kernel log (/dev/kmsg): not in this root ({tmp_path}; a capture keeps only part")
    user = unreadable_fix(HostRoot("/"), "the kernel log (/dev/kmsg)", "or set kernel.dmesg_restrict=0", euid=1000)
    assert user == ("run `passthru doctor` as root (the kernel log (/dev/kmsg) is readable by root only, or set "
                    "kernel.dmesg_restrict=0)")
    root = unreadable_fix(HostRoot("/"), "the kernel log (/dev/kmsg)", euid=0)
    assert "not readable even as root" in root and "run `passthru doctor` as root" not in root


def test_doctor_on_a_fixture_never_says_run_as_root(tmp_path, capsys):
    root = fx.gpu_server(tmp_path / "s")
    assert cli_main(["--root", str(root), "doctor", "ttyS4", "0000:af:00.0"]) in (0, 1)
    out = capsys.readouterr().out
    assert "as root" not in out and "not in this root" in out


@pytest.mark.parametrize("kernel, conf, status, words", [
    ("6.1.0-26-amd64", "vfio\nvfio_iommu_type1\nvfio_pci\n", FAIL, "vfio_virqfd"),
    ("6.1.0-26-amd64", "vfio\nvfio_iommu_type1\nvfio_pci\nvfio_virqfd\n", PASS, "vfio_virqfd"),
    ("6.8.0-45-generic", "vfio\nvfio_iommu_type1\nvfio_pci\nvfio_virqfd\n", WARN, "merged"),
    ("6.8.0-45-generic", "# comment\nvfio  # inline\nvfio_iommu_type1\nvfio-pci\n", PASS, "vfio_pci"),
])
def test_vfio_modules_at_boot_by_kernel_version(tmp_path, kernel, conf, status, words):
    f = checks(prepared(fx.make_gpu_server(tmp_path / "s"), kernel=kernel, conf=conf))["vfio.boot"]
    assert f.status == status and words in f.evidence


def test_hugepages_and_memlock(tmp_path):
    root = prepared(fx.make_gpu_server(tmp_path / "s"))
    c = checks(root)
    assert c["memory.hugepages"].status in (WARN, SKIP) and c["memory.memlock"].status == SKIP
    hp = {"sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages": "16\n",
          "sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages": "12\n",
          "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages": "0\n",
          "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages": "0\n"}
    for n, (tot, free) in enumerate(((8, 4), (8, 8))):
        base = f"sys/devices/system/node/node{n}/hugepages/hugepages-1048576kB"
        hp[f"{base}/nr_hugepages"], hp[f"{base}/free_hugepages"] = f"{tot}\n", f"{free}\n"
    hp["proc/self/limits"] = ("Limit                     Soft Limit           Hard Limit           Units\n"
                              "Max locked memory         8388608              8388608              bytes\n")
    hp["proc/meminfo"] = "MemTotal:       263878124 kB\n"
    put(root, hp)
    c = checks(root)
    assert c["memory.hugepages"].status == PASS
    assert c["memory.hugepages"].evidence == "1G: 12/16 free; per node: node0 1G 4/8, node1 1G 8/8"
    assert c["memory.memlock"].status == WARN and "8 MiB" in c["memory.memlock"].evidence
    put(root, {"proc/self/limits": "Max locked memory         unlimited            unlimited            bytes\n"})
    assert checks(root)["memory.memlock"].status == PASS


def test_device_checks(tmp_path):
    root = prepared(fx.make_gpu_server(tmp_path / "s"))
    c = checks(root, "19:00.0", "18:00.0", "02:00.0")
    assert c["device.driver@0000:19:00.0"].status == PASS and c["device.group@0000:19:00.0"].status == PASS
    # 18:00.0 is on nvidia, its audio on snd_hda_intel: only its own companion blocks the group -> warn, --group
    assert c["device.driver@0000:18:00.0"].status == WARN
    g = c["device.group@0000:18:00.0"]
    assert g.status == WARN and "--group" in g.fix and "0000:18:00.1" in g.fix
    assert c["gpu.host_drivers"].status == WARN and "0000:18:00.0 (nvidia)" in c["gpu.host_drivers"].evidence
    assert c["device.boot_vga@0000:02:00.0"].status == FAIL


def test_device_in_a_shared_group_names_the_strangers(tmp_path, capsys):
    root = prepared(fx.make_broken_desktop(tmp_path / "d"), log=AMD_LOG)
    g = checks(root, "0000:03:00.0")["device.group@0000:03:00.0"]
    assert g.status == FAIL and "0000:05:00.0" in g.fix and "0000:04:00.0" in g.fix
    assert "0000:03:00.1" not in g.fix.split("also holds")[1].split("which")[0], "the audio companion is no stranger"
    assert cli_main(["--root", str(root), "doctor", "9-9"]) == 2
    assert "no USB device" in capsys.readouterr().err


def _boot_check(root: Path) -> object:
    from passthru.config import Paths
    h = HostRoot(root)
    rep = run_doctor(h, [], discover(h), Paths.for_root(h))
    return next(f for f in rep.findings if f.id == "boot.reboot")


def test_reboot_needed_after_prepare_until_the_kernel_has_the_arguments(tmp_path, capsys):
    from prepare_fixtures import boot_host
    root = boot_host(tmp_path, "debian", boot_id="11111111-2222-3333-4444-555555555555")
    before = _boot_check(root)
    assert before.status == PASS and "sets no IOMMU/vfio arguments" in before.evidence
    assert cli_main(["--root", str(root), "prepare", "--apply"]) == 0
    capsys.readouterr()
    after = _boot_check(root)
    assert after.status == WARN and "reboot" in after.fix
    assert "/etc/default/grub has intel_iommu=on iommu=pt" in after.evidence
    # the reboot: a new boot id and the arguments on the running command line
    put(root, {"proc/sys/kernel/random/boot_id": "99999999-2222-3333-4444-555555555555\n",
               "proc/cmdline": "BOOT_IMAGE=/boot/vmlinuz-6.8.0-45-generic root=/dev/sda2 ro intel_iommu=on iommu=pt "
                               "quiet\n"})
    done = _boot_check(root)
    assert done.status == PASS and "intel_iommu=on iommu=pt" in done.evidence


def test_reboot_needed_for_an_argument_the_config_dropped_and_for_bls(tmp_path):
    from prepare_fixtures import boot_host
    root = boot_host(tmp_path, "debian", name="a",
                     cmdline="BOOT_IMAGE=/vmlinuz ro intel_iommu=on iommu=pt vfio_iommu_type1.allow_unsafe_interrupts=1",
                     grub='GRUB_CMDLINE_LINUX="intel_iommu=on iommu=soft iommu=pt"\n')
    f = _boot_check(root)
    assert f.status == WARN
    assert "running kernel has vfio_iommu_type1.allow_unsafe_interrupts=1" in f.evidence
    assert "iommu=soft" not in f.evidence  # the kernel takes the last iommu=, which is in effect
    bls = boot_host(tmp_path, "rhel-bls", name="b", bls_options="root=/dev/mapper/rhel-root ro intel_iommu=on")
    f = _boot_check(bls)
    assert f.status == WARN and "the BLS boot entry has intel_iommu=on" in f.evidence
    assert _boot_check(boot_host(tmp_path, "unknown", name="c")).status == SKIP


def test_the_iommu_not_the_cpu_decides_the_arguments(tmp_path):
    """An AMD host giving its guest QEMU's virtual VT-d (the lab on an AMD machine): the guest's CPU says AMD, its
    ACPI DMAR table says Intel, and intel_iommu=on is what that kernel needs."""
    from passthru.prepare import read_host_facts
    b = fx.make_bare_host(tmp_path / "g")
    b.iommu("intel")
    b.proc("BOOT_IMAGE=/vmlinuz ro iommu=pt", cpu_vendor="AuthenticAMD")
    root = prepared(b)
    c = checks(root)
    assert c["kernel.cmdline"].status == FAIL and "intel_iommu=on" in c["kernel.cmdline"].evidence
    assert "the IOMMU is Intel VT-d (ACPI DMAR table" in c["cpu.vendor"].evidence
    assert "VT-d" in c["iommu.firmware"].evidence or c["iommu.firmware"].status == PASS
    assert read_host_facts(HostRoot(root)).cpu_vendor == "intel"


def test_device_in_use_by_the_host(tmp_path):
    root = fx.busy_host(tmp_path / "busy")
    c = checks(Path(root), "0000:5e:00.0", "0000:3c:00.0", "0000:60:00.0")
    mounted = c["device.host_use@0000:5e:00.0"]
    assert mounted.status == FAIL and "/var/lib/libvirt/images" in mounted.evidence and "unmount" in mounted.fix
    nic = c["device.host_use@0000:3c:00.0"]
    assert nic.status == WARN and "198.51.100.0/24" in nic.evidence and "--force-netdev" in nic.fix
    assert c["device.host_use@0000:60:00.0"].status == PASS
