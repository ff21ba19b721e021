"""`passthru prepare --apply` on the lab guest's own /etc (a tmpfs overlay over this machine's Debian 12 root),
run as root on the live root with the real subprocess runner: it writes the expected files, runs the regenerate
command, leaves the reboot flag doctor reports, a second run is "unchanged", a failing regenerate restores the files
byte for byte, and --rollback restores the originals.

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
""", boot="prepare")
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
