"""`passthru prepare --apply` on the lab guest's own /etc (a tmpfs overlay over this machine's Debian 12 root),
run as root on the live root with the real subprocess runner: it writes the expected files, runs the regenerate
command, leaves the reboot flag doctor reports, a second run is "unchanged", a failing regenerate restores the files
byte for byte, and --rollback restores the originals. The same for `prepare --early` (modprobe.d, the initramfs
modules, update-initramfs), and the real kernel's proof that the modprobe.d file does what it claims: with it,
reloading the HD audio function's driver lands the function on vfio-pci (softdep loads vfio-pci first, ids= makes it
claim the device); after --rollback the same reload gives it back to snd_hda_intel.

The guest has no GRUB installed and a real ``update-grub`` cannot run on a 9p/overlay root (grub-probe finds no
disk), so the step puts Debian's stock /etc/default/grub in place and an ``update-grub`` on PATH that does what
grub-mkconfig does with that file: source it as shell and write the menu's ``linux`` line from
GRUB_CMDLINE_LINUX + GRUB_CMDLINE_LINUX_DEFAULT. That checks passthru's edit is still valid shell for GRUB.
"""

from __future__ import annotations

import pytest

from .guest import in_guest

pytestmark = pytest.mark.lab

DEBIAN_GRUB = """\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=ttyS0,115200"
"""

UPDATE_GRUB = """\
#!/bin/sh
# lab stand-in for update-grub: read /etc/default/grub the way grub-mkconfig does and write the menu entry
set -e
. /etc/default/grub
echo "update-grub $*" >> "$LAB_STEP/update-grub.calls"
[ ! -e "$LAB_STEP/fail-update-grub" ] || { echo "error: lab says no" >&2; exit 1; }
mkdir -p /boot/grub
printf 'menuentry "Debian" {\\n\\tlinux /vmlinuz root=/dev/vda ro %s %s\\n}\\n' \\
    "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT" > /boot/grub/grub.cfg
"""

# Debian's /etc/initramfs-tools/modules as installed (this machine has no initramfs-tools)
ITOOLS_MODULES = """\
# List of modules that you want to include in your initramfs.
# They will be loaded at boot time in the order below.
#
# Syntax:  module_name [args ...]
#
# You must run update-initramfs(8) to effect this change.
"""

# A real update-initramfs cannot run here (no initramfs-tools, klibc or cpio on this machine, and mkinitramfs under
# TCG would take minutes), so the stand-in puts into the running kernel's image what mkinitramfs puts there for
# early binding: the modules /etc/initramfs-tools/modules lists, with their dependencies as modprobe resolves them,
# and /etc/modprobe.d, as a newc cpio (busybox) compressed with gzip. doctor then reads that image for real.
UPDATE_INITRAMFS = """\
#!/bin/sh
set -e
echo "update-initramfs $*" >> "$LAB_STEP/update-initramfs.calls"
[ ! -e "$LAB_STEP/fail-update-initramfs" ] || { echo "update-initramfs: lab says no" >&2; exit 1; }
ver=$(uname -r); tree=$(mktemp -d)
mkdir -p "$tree/etc/modprobe.d"
cp /etc/modprobe.d/*.conf "$tree/etc/modprobe.d/" 2>/dev/null || true
grep -v '^#' /etc/initramfs-tools/modules | while read -r m rest; do
    [ -n "$m" ] || continue
    modprobe --show-depends "$m" | while read -r cmd path rest; do
        [ "$cmd" = insmod ] || continue
        mkdir -p "$tree/usr$(dirname "$path")"; cp "$path" "$tree/usr$path"
    done
done
mkdir -p /boot
(cd "$tree" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "/boot/initrd.img-$ver.new"
mv "/boot/initrd.img-$ver.new" "/boot/initrd.img-$ver"
rm -rf "$tree"
"""


@in_guest(f"""
    cat > /etc/default/grub <<'EOF'
{DEBIAN_GRUB}EOF
    cat > /usr/local/sbin/update-grub <<'EOF'
{UPDATE_GRUB}EOF
    chmod 755 /usr/local/sbin/update-grub
    export LAB_STEP
    sha256sum /etc/default/grub > grub.orig.sha
    ls /etc/modules-load.d > modules-load.before
    passthru prepare --hugepages 2M:16 --json > plan.json
    passthru prepare --hugepages 2M:16 --apply --json > apply1.json
    cp /etc/default/grub grub.applied; cp /etc/modules-load.d/vfio.conf vfio.conf.applied
    cp /boot/grub/grub.cfg grub.cfg.applied
    rc=0; passthru doctor --json > doctor.json || rc=$?
    passthru prepare --hugepages 2M:16 --apply --json > apply2.json
    sha256sum /etc/default/grub /etc/modules-load.d/vfio.conf > applied.sha
    # load what the modules-load.d file lists, as systemd-modules-load does at boot
    grep -v '^#' /etc/modules-load.d/vfio.conf | xargs -n1 modprobe
    rc=0; passthru doctor --json > doctor.loaded.json || rc=$?
    # a failing regenerate: the files come back byte for byte
    touch fail-update-grub
    rc=0; passthru prepare --hugepages 2M:16 --gpu --apply > gpu.out 2> gpu.err || rc=$?; echo $rc > gpu.rc
    rm fail-update-grub
    sha256sum -c applied.sha > after-failure.check
    passthru prepare --rollback --json > rollback.json
    sha256sum -c grub.orig.sha > rollback.check
    ls /etc/modules-load.d > modules-load.after
    cp /boot/grub/grub.cfg grub.cfg.rolledback
""", boot="prepare", timeout=240)  # well under a minute idle; the 2-core lab machine is often shared
def test_prepare_apply_on_the_guests_own_etc(guest):
    guest.check()
    plan = guest.json("plan.json")
    assert plan["changed"] is True
    assert {c["path"] for c in plan["changes"]} == {"/etc/default/grub", "/etc/modules-load.d/vfio.conf"}
    assert [list(c) for c in plan["commands"]] == [["update-grub"]]

    first = guest.json("apply1.json")
    assert first["status"] == "changed" and first["reboot_needed"] is True
    assert first["commands_run"] == [["update-grub"]] and first["commands_skipped"] == []
    assert set(first["files"]) == {"/etc/default/grub", "/etc/modules-load.d/vfio.conf"}
    grub = guest.file("grub.applied")
    # the lab's virtual IOMMU is VT-d (ACPI DMAR), whatever this machine's CPU is
    args = "intel_iommu=on iommu=pt default_hugepagesz=2M hugepagesz=2M hugepages=16"
    assert f'GRUB_CMDLINE_LINUX="console=ttyS0,115200 {args}"' in grub
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"' in grub and "# If you change this file" in grub
    # kernel 6.1: vfio_virqfd is still a module of its own
    assert guest.file("vfio.conf.applied").split("\n")[-5:] == ["vfio", "vfio_iommu_type1", "vfio_pci",
                                                                 "vfio_virqfd", ""]
    assert f"linux /vmlinuz root=/dev/vda ro console=ttyS0,115200 {args} quiet" in \
        guest.file("grub.cfg.applied")

    checks = {c["id"]: c for c in guest.json("doctor.json")["checks"]}
    assert checks["boot.reboot"]["status"] == "warn"
    # the lab boots with intel_iommu=on iommu=pt already: only the hugepage arguments wait for a reboot
    assert checks["boot.reboot"]["evidence"].startswith(
        "/etc/default/grub has default_hugepagesz=2M hugepagesz=2M hugepages=16, the running kernel does not")
    assert checks["vfio.boot"]["status"] == "pass"

    second = guest.json("apply2.json")
    assert second["status"] == "unchanged" and second["files"] == [] and second["commands_run"] == []
    calls = guest.file("update-grub.calls").splitlines()
    assert calls[0] == "update-grub " and len(calls) >= 2  # apply1, the failing --gpu run, rollback

    loaded = {c["id"]: c for c in guest.json("doctor.loaded.json")["checks"]}
    assert loaded["vfio.loaded"]["status"] == "pass", loaded["vfio.loaded"]

    assert int(guest.file("gpu.rc")) == 1
    assert "update-grub" in guest.file("gpu.err") and "lab says no" in guest.file("gpu.err")
    assert guest.file("after-failure.check").count(": OK") == 2

    rb = guest.json("rollback.json")
    assert rb["status"] == "restored"
    assert guest.file("rollback.check").strip().endswith(": OK")
    assert guest.file("modules-load.after") == guest.file("modules-load.before")
    assert "intel_iommu" not in guest.file("grub.cfg.rolledback")
    assert len(calls) == 3


AUDIO = "0000:01:00.1"  # ich9-intel-hda 8086:293e on snd_hda_intel; its group mate 01:00.0 is the secondary VGA


@in_guest(f"""
    cat > /etc/default/grub <<'EOF'
{DEBIAN_GRUB}EOF
    cat > /usr/local/sbin/update-grub <<'EOF'
{UPDATE_GRUB}EOF
    mkdir -p /etc/initramfs-tools
    cat > /etc/initramfs-tools/modules <<'EOF'
{ITOOLS_MODULES}EOF
    cat > /usr/local/sbin/update-initramfs <<'EOF'
{UPDATE_INITRAMFS}EOF
    chmod 755 /usr/local/sbin/update-grub /usr/local/sbin/update-initramfs
    export LAB_STEP
    dev={AUDIO}
    drv() {{ basename "$(readlink /sys/bus/pci/devices/$dev/driver)"; }}
    wait_drv() {{ for i in $(seq 50); do [ -e /sys/bus/pci/devices/$dev/driver ] && break; sleep 0.1; done; drv; }}
    sha256sum /etc/default/grub /etc/initramfs-tools/modules > orig.sha
    ls /etc/modprobe.d /etc/modules-load.d > etc.before 2>&1 || true
    # the two e1000e NICs share 8086:10d3 and their subsystem IDs: ids= would take both
    rc=0; passthru prepare --early 0000:02:00.0 > shared.out 2> shared.err || rc=$?; echo $rc > shared.rc
    # a failing rebuild: every file back byte for byte
    touch fail-update-initramfs
    rc=0; passthru prepare --early $dev --apply > fail.out 2> fail.err || rc=$?; echo $rc > fail.rc
    rm fail-update-initramfs
    sha256sum -c orig.sha > after-failure.check
    ls /etc/modprobe.d /etc/modules-load.d > etc.after-failure 2>&1 || true
    passthru prepare --early $dev --apply --json > apply1.json
    cp /etc/modprobe.d/passthru-vfio.conf early.conf
    passthru prepare --early $dev --apply --json > apply2.json
    # the real kernel's proof: unbind, unload, then load the host driver again; softdep loads vfio-pci first
    # with ids= from the file, and vfio-pci claims the function before snd_hda_intel sees it
    drv > driver.before
    echo $dev > /sys/bus/pci/devices/$dev/driver/unbind
    modprobe -r snd_hda_intel
    modprobe -r vfio_pci 2>/dev/null || true
    grep -c '^vfio_pci ' /proc/modules > vfio.loaded.before || true
    modprobe snd_hda_intel
    wait_drv > driver.after
    grep -E '^(vfio_pci|snd_hda_intel) ' /proc/modules | cut -d' ' -f1 > modules.after
    dmesg | grep -F 'vfio_pci: add [' > dmesg.add || true
    rc=0; passthru doctor {AUDIO} --json > doctor.json || rc=$?
    zcat /boot/initrd.img-$(uname -r) | busybox cpio -t 2>/dev/null > initrd.list
    passthru prepare --rollback --json > rollback.json
    sha256sum -c orig.sha > rollback.check
    ls /etc/modprobe.d /etc/modules-load.d > etc.after-rollback 2>&1 || true
    # the control: without the file the same reload gives the function to snd_hda_intel
    echo $dev > /sys/bus/pci/drivers/vfio-pci/unbind
    modprobe -r snd_hda_intel
    modprobe -r vfio_pci
    modprobe snd_hda_intel
    wait_drv > driver.control
""", boot="prepare", timeout=240)
def test_prepare_early_on_the_guests_own_etc_and_the_kernel_honours_it(guest):
    guest.check()
    assert int(guest.file("shared.rc")) == 2
    err = guest.file("shared.err").strip()
    assert err.startswith("passthru: refusing --early: ids=8086:10d3 also matches 0000:03:00.0 (e1000e)")
    assert "--allow-shared-ids" in err and "\n" not in err

    assert int(guest.file("fail.rc")) == 1
    assert "`update-initramfs -u -k all` failed (exit 1): update-initramfs: lab says no" in guest.file("fail.err")
    assert "every file was restored" in guest.file("fail.err")
    assert guest.file("after-failure.check").count(": OK") == 2
    assert guest.file("etc.after-failure") == guest.file("etc.before")

    first = guest.json("apply1.json")
    assert first["status"] == "changed"
    assert first["commands_run"] == [["update-initramfs", "-u", "-k", "all"], ["update-grub"]]
    # (and /etc/modules-load.d/vfio.conf, unless the step before left it)
    assert set(first["files"]) >= {"/etc/default/grub", "/etc/modprobe.d/passthru-vfio.conf",
                                   "/etc/initramfs-tools/modules"}
    conf = guest.file("early.conf").splitlines()
    assert conf[2:] == [f"# devices: {AUDIO}", "options vfio-pci ids=8086:293e", "softdep snd_hda_intel pre: vfio-pci"]
    second = guest.json("apply2.json")
    assert second["status"] == "unchanged" and second["commands_run"] == []

    # the kernel did what the file says
    assert guest.file("driver.before").strip() == "snd_hda_intel"
    assert guest.file("vfio.loaded.before").strip() == "0"
    assert guest.file("driver.after").strip() == "vfio-pci"
    assert set(guest.file("modules.after").split()) == {"vfio_pci", "snd_hda_intel"}
    assert "vfio_pci: add [8086:293e[ffffffff:ffffffff]]" in guest.file("dmesg.add")

    checks = {c["id"]: c for c in guest.json("doctor.json")["checks"]}
    assert checks["boot.initramfs"]["status"] == "pass", checks["boot.initramfs"]
    assert "/etc/modprobe.d/passthru-vfio.conf (read by passthru)" in checks["boot.initramfs"]["evidence"]
    assert checks["vfio.early"]["status"] == "pass" and checks["vfio.early"]["device"] == AUDIO
    listing = guest.file("initrd.list").splitlines()
    assert "etc/modprobe.d/passthru-vfio.conf" in listing
    assert any("/vfio-pci.ko" in name for name in listing)

    rb = guest.json("rollback.json")
    assert rb["status"] == "restored" and ["update-initramfs", "-u", "-k", "all"] in rb["commands_run"]
    assert guest.file("rollback.check").count(": OK") == 2
    assert guest.file("etc.after-rollback") == guest.file("etc.before")
    assert guest.file("driver.control").strip() == "snd_hda_intel"
