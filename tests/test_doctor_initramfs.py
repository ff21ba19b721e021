"""doctor's early-binding checks (passthru/doctor_initramfs.py) and the initramfs reader under them
(passthru/host/cpio.py), against real newc cpio images in the layouts mkinitramfs and dracut write (an
uncompressed microcode archive, then a compressed main one), built here byte by byte."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pytest

from passthru.config import Paths
from passthru.doctor import FAIL, PASS, SKIP, WARN
from passthru.doctor_initramfs import early_findings
from passthru.host.cpio import BadArchive, Unsupported, read_initramfs
from passthru.host.root import HostRoot
from passthru.prepare import HostFacts, PrepareOptions, apply_plan, make_plan
from prepare_fixtures import FakeRunner, KERNELS, boot_host
from test_prepare_early import EARLY, PREPARED_GRUB, workstation

K61 = KERNELS[(6, 1)]
MODULE_PATHS = {"vfio": "kernel/drivers/vfio/vfio.ko", "vfio_iommu_type1": "kernel/drivers/vfio/vfio_iommu_type1.ko",
                "vfio_pci": "kernel/drivers/vfio/pci/vfio-pci.ko", "vfio_virqfd": "kernel/drivers/vfio/vfio_virqfd.ko"}


# -- building images --------------------------------------------------------------------------------------------
def newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive (what the kernel unpacks): header, name, data, each padded to 4 bytes; a trailer; zeros
    to a 512-byte block like cpio -H newc writes."""
    out = b""
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        nb = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 1_700_000_000, len(data), 0, 0, 0, 0, len(nb), 0)
        out += b"070701" + b"".join(b"%08X" % v for v in fields) + nb + b"\0" * (-(110 + len(nb)) % 4)
        out += data + b"\0" * (-len(data) % 4)
    return out + b"\0" * (-len(out) % 512)


def image(files: dict[str, bytes], compress: str = "gzip", microcode: bool = True) -> bytes:
    """An initramfs: optionally the early microcode archive, then ``files`` (with their directories) compressed."""
    entries, dirs = [], set()
    for name in sorted(files):
        parts = name.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append((d, 0o40755, b""))
        entries.append((name, 0o100644, files[name]))
    main = newc([(".", 0o40755, b"")] + entries)
    packed = {"gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress, "none": bytes,
              "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE),
              "zstd": lambda b: b"\x28\xb5\x2f\xfd" + b"\0" * 16}[compress](main)
    early = newc([("kernel", 0o40755, b""), ("kernel/x86/microcode/GenuineIntel.bin", 0o100644, b"\x01" * 48)])
    return (early if microcode else b"") + packed


def mkinitramfs(root: Path):
    """A FakeRunner effect standing in for ``update-initramfs -u -k all``: every kernel's /boot/initrd.img gets
    the modules /etc/initramfs-tools/modules lists and every /etc/modprobe.d/*.conf, as mkinitramfs copies them."""
    def effect(argv):
        if argv[0] != "update-initramfs":
            return
        listed = [ln.split()[0] for ln in (root / "etc/initramfs-tools/modules").read_text().splitlines()
                  if ln.strip() and not ln.startswith("#")]
        for img in (root / "boot").glob("initrd.img-*"):
            rel = img.name[len("initrd.img-"):]
            files = {f"usr/lib/modules/{rel}/{MODULE_PATHS[m]}": b"\x7fELF" for m in listed if m in MODULE_PATHS}
            files.update({f"etc/modprobe.d/{p.name}": p.read_bytes() for p in (root / "etc/modprobe.d").glob("*.conf")})
            img.write_bytes(image(files))
    return effect


def prepared(tmp_path, *addresses: str, stat_btime: int = 1_600_000_000, pci=workstation) -> tuple[Path, HostRoot]:
    """The workstation after `passthru prepare --early ADDRESS... --apply` and a rebuild, booted at ``btime``."""
    root = boot_host(tmp_path, "debian", kernel=K61, grub=PREPARED_GRUB, pci=pci)
    (root / "proc/stat").write_text(f"cpu  1 2 3 4\nbtime {stat_btime}\nprocesses 4242\n")
    h = HostRoot(root)
    plan = make_plan(h, HostFacts("intel", (6, 1), True), PrepareOptions(early=addresses))
    apply_plan(h, plan, Paths.for_root(h), FakeRunner(effect=mkinitramfs(root)))
    return root, h


def by_id(findings, ident):
    return [f for f in findings if f.id == ident]


# -- the reader -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", ["gzip", "xz", "lzma", "bzip2", "none"])
@pytest.mark.parametrize("microcode", [True, False])
def test_reader_lists_names_and_keeps_asked_files(compress, microcode):
    data = image({"etc/modprobe.d/passthru-vfio.conf": b"options vfio-pci ids=10de:1b06\n",
                  "usr/lib/modules/6.1.0-25-amd64/kernel/drivers/vfio/pci/vfio-pci.ko": b"\x7fELF" * 100},
                 compress, microcode)
    got = read_initramfs(BytesIO(data), keep=lambda n: n.startswith("etc/"))
    assert got["etc/modprobe.d/passthru-vfio.conf"] == b"options vfio-pci ids=10de:1b06\n"
    assert got["usr/lib/modules/6.1.0-25-amd64/kernel/drivers/vfio/pci/vfio-pci.ko"] is None
    assert got["etc/modprobe.d"] is None  # directories carry no content
    assert ("kernel/x86/microcode/GenuineIntel.bin" in got) is microcode


def test_reader_refuses_what_it_cannot_read():
    with pytest.raises(Unsupported, match="zstd"):
        read_initramfs(BytesIO(image({"init": b"#!/bin/sh\n"}, "zstd")))
    with pytest.raises(BadArchive):
        read_initramfs(BytesIO(b"MZ\x90\x00 this is a kernel, not an initramfs"))
    with pytest.raises(BadArchive):
        read_initramfs(BytesIO(b""))
    whole = image({"etc/modprobe.d/x.conf": b"x" * 5000}, "gzip", microcode=False)
    with pytest.raises(BadArchive):
        read_initramfs(BytesIO(whole[: len(whole) // 2]))
    with pytest.raises(BadArchive):
        read_initramfs(BytesIO(newc([("etc/x", 0o100644, b"abc")])[:120]))


# -- boot.initramfs ---------------------------------------------------------------------------------------------
def test_nothing_configured_is_a_skip(tmp_path):
    root = boot_host(tmp_path, "debian", kernel=K61, pci=workstation)
    (f,) = early_findings(HostRoot(root), live=True)
    assert (f.id, f.status) == ("boot.initramfs", SKIP) and "no early binding configured" in f.evidence


def test_initramfs_holds_the_configuration(tmp_path):
    root, h = prepared(tmp_path, "0000:01:00.0", "0000:01:00.1")
    (img,) = by_id(early_findings(h, live=True), "boot.initramfs")
    assert img.status == PASS, img
    assert img.evidence == f"/boot/initrd.img-{K61} holds vfio-pci, {EARLY} (read by passthru)"
    (skip,) = by_id(early_findings(h), "boot.initramfs")  # a root other than / is not the running host
    assert skip.status == SKIP and "live host only" in skip.evidence


def test_changed_file_not_rebuilt_fails_with_the_rebuild_command(tmp_path):
    root, h = prepared(tmp_path, "0000:01:00.0", "0000:01:00.1")
    conf = root / EARLY.lstrip("/")
    conf.write_text(conf.read_text().replace("softdep nouveau", "softdep nvidia"))
    (img,) = by_id(early_findings(h, live=True), "boot.initramfs")
    assert img.status == FAIL and f"has an older {EARLY}" in img.evidence
    assert img.fix == "`update-initramfs -u -k all`, then reboot"


def test_vfio_module_missing_fails_with_prepare(tmp_path):
    root, h = prepared(tmp_path, "0000:01:00.0", "0000:01:00.1")
    mods = root / "etc/initramfs-tools/modules"
    mods.write_text("".join(ln + "\n" for ln in mods.read_text().splitlines() if not ln.startswith("vfio")))
    mkinitramfs(root)(["update-initramfs", "-u", "-k", "all"])
    (img,) = by_id(early_findings(h, live=True), "boot.initramfs")
    assert img.status == FAIL and "lacks the vfio-pci module" in img.evidence
    assert img.fix.startswith("`passthru prepare --early 0000:01:00.0 0000:01:00.1 --apply`")


def test_a_guides_own_modprobe_file_is_checked_too(tmp_path):
    root, h = prepared(tmp_path, "0000:01:00.0", "0000:01:00.1")
    (root / "etc/modprobe.d/vfio.conf").write_text("options vfio-pci ids=10de:1b06 disable_vga=1\n")
    (img,) = by_id(early_findings(h, live=True), "boot.initramfs")
    assert img.status == FAIL and "lacks /etc/modprobe.d/vfio.conf" in img.evidence


def test_zstd_image_is_listed_by_the_distributions_tool(tmp_path):
    root, h = prepared(tmp_path, "0000:01:00.0", "0000:01:00.1")
    img = root / f"boot/initrd.img-{K61}"
    img.write_bytes(image({}, "zstd"))
    listing = (f"kernel\nkernel/x86/microcode/GenuineIntel.bin\n.\netc/modprobe.d/passthru-vfio.conf\n"
               f"usr/lib/modules/{K61}/kernel/drivers/vfio/pci/vfio-pci.ko\n")
    runner = FakeRunner()
    runner.run = lambda argv, timeout: (runner.calls.append(argv), (0, listing, ""))[1]
    (f,) = by_id(early_findings(h, runner, live=True), "boot.initramfs")
    assert f.status == PASS and "listed by lsinitramfs" in f.evidence
    assert runner.calls == [["lsinitramfs", str(img)]]
    os.utime(img, (1_000_000_000, 1_000_000_000))  # older than the configuration: only names are known
    (f,) = by_id(early_findings(h, runner, live=True), "boot.initramfs")
    assert f.status == FAIL and f"{EARLY} from before its last change" in f.evidence
    (f,) = by_id(early_findings(h, FakeRunner(fail={"lsinitramfs": (127, "not found")}), live=True), "boot.initramfs")
    assert f.status == SKIP and "zstd-compressed and lsinitramfs is not installed" in f.evidence


def test_no_image_for_the_running_kernel_warns(tmp_path):
    root, h = prepared(tmp_path, "0000:01:00.1")
    (root / f"boot/initrd.img-{K61}").unlink()
    (f,) = by_id(early_findings(h, live=True), "boot.initramfs")
    assert f.status == WARN and f.fix == "`update-initramfs -u -k all`, then reboot"


# -- vfio.early -------------------------------------------------------------------------------------------------
def test_device_on_vfio_passes_and_on_a_host_driver_warns_with_the_cause(tmp_path):
    root, h = prepared(tmp_path, "0000:01:00.0", "0000:01:00.1", stat_btime=int(os.stat(tmp_path).st_mtime) + 3600)
    found = by_id(early_findings(h), "vfio.early")
    assert [(f.device, f.status) for f in found] == [("0000:01:00.0", WARN), ("0000:01:00.1", WARN)]
    assert found[0].evidence.startswith("0000:01:00.0 is on nouveau, not vfio-pci: likely vfio-pci did not get it "
                                        "first, or something rebound it after boot")
    assert found[0].fix == "`passthru bind 0000:01:00.0` moves it now"


def test_written_after_this_boot_means_reboot(tmp_path):
    root, h = prepared(tmp_path, "0000:01:00.0")
    (f,) = by_id(early_findings(h), "vfio.early")
    assert f.status == WARN and f"{EARLY} was written after this boot" in f.evidence and f.fix.startswith("reboot")


def test_causes_ids_softdep_and_vfio(tmp_path):
    late = int(os.stat(tmp_path).st_mtime) + 3600
    root, h = prepared(tmp_path, "0000:01:00.0", "0000:01:00.1", stat_btime=late)
    conf = root / EARLY.lstrip("/")
    text = conf.read_text()
    conf.write_text(text.replace("10de:10ef", "10de:10f0").replace("softdep nouveau pre: vfio-pci\n", ""))
    os.utime(conf, (late - 7200, late - 7200))
    f0, f1 = by_id(early_findings(h), "vfio.early")
    assert "no softdep orders nouveau after vfio-pci" in f0.evidence
    assert "its IDs 10de:10ef are not in ids=10de:1b06:10de:120f,10de:10f0" in f1.evidence


def test_device_already_on_vfio_passes(tmp_path):
    def bound(b):
        workstation(b)
        b.bind("0000:01:00.0", "vfio-pci")
    root, h = prepared(tmp_path, "0000:01:00.0", pci=bound)
    (f,) = by_id(early_findings(h), "vfio.early")
    assert (f.status, f.evidence) == (PASS, "0000:01:00.0 is on vfio-pci")


def test_doctor_cli_reports_both_checks(tmp_path):
    root, h = prepared(tmp_path, "0000:01:00.1")
    p = subprocess.run([sys.executable, "-m", "passthru", "--root", str(root), "doctor", "--json"],
                       capture_output=True, text=True, timeout=120)
    checks = {c["id"]: c for c in json.loads(p.stdout)["checks"]}
    assert checks["boot.initramfs"]["status"] == "skip" and checks["vfio.early"]["device"] == "0000:01:00.1"


def test_boot_reboot_sees_vfio_pci_ids_waiting_on_the_command_line(tmp_path):
    """vfio-pci built in: prepare --early puts vfio-pci.ids= on the kernel command line; until the reboot the
    running kernel lacks it, and boot.reboot says so."""
    from passthru.doctor import run_doctor

    root = boot_host(tmp_path, "debian", kernel=K61, grub=PREPARED_GRUB, pci=workstation, vfio_builtin=True)
    h = HostRoot(root)
    plan = make_plan(h, HostFacts("intel", (6, 1), True), PrepareOptions(early=("0000:01:00.0", "0000:01:00.1")))
    apply_plan(h, plan, Paths.for_root(h), FakeRunner())
    (f,) = [f for f in run_doctor(h).findings if f.id == "boot.reboot"]
    assert f.status == WARN and "vfio-pci.ids=10de:1b06:10de:120f,10de:10ef" in f.evidence
