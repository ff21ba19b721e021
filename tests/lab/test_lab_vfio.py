"""`passthru bind/restore/reconcile` on a real kernel with a virtual VT-d: an e1000e really moves to vfio-pci and
back, a nested QEMU really opens it, the GPU's audio function is named and taken with --group, the boot VGA and an
NVMe holding a mounted ext4 are refused, and kill -9 at random points of a bind leaves a state reconcile repairs."""

from __future__ import annotations

import json

import pytest

from .guest import GuestRun, in_guest

pytestmark = pytest.mark.lab
BOOT = "vfio"  # its own boot (tests/lab/README.md): devices move to vfio-pci and a filesystem is mounted

FIND = r"""
nics=(/sys/bus/pci/drivers/e1000e/0000:*); nic=${nics[-1]##*/}
for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/class)" = 0x038000 ] && gpu=${d##*/}
    [ "$(cat $d/class)" = 0x040300 ] && audio=${d##*/}
done
group() { basename "$(readlink /sys/bus/pci/devices/$1/iommu_group)"; }
drv() { local l; l=$(readlink /sys/bus/pci/devices/$1/driver) && basename "$l" || echo none; }
"""


def _qmp(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@in_guest(FIND + r"""
echo "$nic $(group $nic)" > nic.txt
passthru bind $nic --json > bind.json
drv $nic > driver.bound; ls /dev/vfio > dev-vfio.txt
passthru status --json > status.json
# a nested QEMU opens the device through /dev/vfio/<group> and shows it on its PCI bus
printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-pci"}' '{"execute":"quit"}' |
    timeout 90 qemu-system-x86_64 -accel tcg -M q35 -m 256 -nodefaults -display none -S \
        -device vfio-pci,host=$nic,id=pt0 -qmp stdio > qmp.out 2> qmp.err
passthru restore $nic --json > restore.json
drv $nic > driver.restored
cat /sys/bus/pci/devices/$nic/driver_override > override.restored
passthru status --json > status.after.json
cp /var/lib/passthru/audit.log audit.log
""", boot=BOOT, timeout=240)
def test_bind_an_e1000e_use_it_in_a_nested_qemu_and_restore(guest: GuestRun):
    guest.check()
    nic, grp = guest.file("nic.txt").split()
    bound = guest.json("bind.json")
    assert bound["status"] == "changed"
    assert bound["devices"] == [{"address": nic, "before": "e1000e", "after": "vfio-pci", "status": "changed",
                                 "note": None, "group_mate_of": None}]
    assert guest.file("driver.bound").strip() == "vfio-pci"
    assert grp in guest.file("dev-vfio.txt").split()
    held = guest.json("status.json")["held"]
    assert [(x["address"], x["prior_driver"], x["phase"], x["consistent"]) for x in held] == [
        (nic, "e1000e", "bound", True)]
    replies = _qmp(guest.file("qmp.out"))
    devices = [d for r in replies if isinstance(r.get("return"), list) for bus in r["return"] for d in bus["devices"]]
    assert any(d.get("qdev_id") == "pt0" for d in devices), guest.file("qmp.out") + guest.file("qmp.err")
    restored = guest.json("restore.json")
    assert restored["devices"][0]["status"] == "restored" and restored["devices"][0]["after"] == "e1000e"
    assert guest.file("driver.restored").strip() == "e1000e"
    assert guest.file("override.restored").strip() == "(null)"
    assert guest.json("status.after.json")["held"] == []
    audit = [json.loads(line) for line in guest.file("audit.log").splitlines()]
    assert [(a["action"], a["before"], a["after"]) for a in audit] == [("bind", "e1000e", "vfio-pci"),
                                                                         ("restore", "vfio-pci", "e1000e")]


@in_guest(FIND + r"""
echo "$gpu $audio" > gpu.txt
drv $gpu > gpu.driver.before; drv $audio > audio.driver.before
rc=0; passthru bind $gpu 2> alone.err || rc=$?; echo $rc > alone.rc
passthru bind $gpu --group --json > group.json
drv $gpu > gpu.driver.bound; drv $audio > audio.driver.bound
passthru restore $gpu --json > restore.json
drv $gpu > gpu.driver.restored; drv $audio > audio.driver.restored
rc=0; passthru bind 0000:00:02.0 --json > vga.json 2> vga.err || rc=$?; echo $rc > vga.rc
""", boot=BOOT, timeout=180)
def test_gpu_needs_its_audio_function_and_the_boot_vga_stays(guest: GuestRun):
    guest.check()
    gpu, audio = guest.file("gpu.txt").split()
    assert int(guest.file("alone.rc")) == 2
    err = guest.file("alone.err")
    assert err.count("\n") == 1 and audio in err and "--group" in err
    group = guest.json("group.json")
    assert [(d["address"], d["after"], d["group_mate_of"]) for d in group["devices"]] == [
        (gpu, "vfio-pci", None), (audio, "vfio-pci", gpu)]
    assert guest.file("gpu.driver.bound").strip() == guest.file("audio.driver.bound").strip() == "vfio-pci"
    assert [d["status"] for d in guest.json("restore.json")["devices"]] == ["restored", "restored"]
    assert guest.file("gpu.driver.restored") == guest.file("gpu.driver.before")
    assert guest.file("audio.driver.restored") == guest.file("audio.driver.before")
    assert int(guest.file("vga.rc")) == 2
    refusal = guest.json("vga.json")["refusals"]
    assert refusal[0]["address"] == "0000:00:02.0" and "boot" in refusal[0]["reason"].lower()
    assert refusal[0]["override"] == "--allow-boot-vga"


@in_guest(r"""
dev=$(lsblk -dn -o NAME,SERIAL | awk '$2 == "lab-disk" { print $1 }')
ctrl=$(basename "$(readlink -f /sys/block/$dev/device/device)")
echo "$dev $ctrl" > disk.txt
# another step of this boot may have mounted it already; mount it here otherwise (and only then unmount)
mine=0
if ! findmnt -rn -S /dev/$dev > /dev/null; then
    mkfs.ext4 -q /dev/$dev; mkdir -p /mnt/lab; mount /dev/$dev /mnt/lab; mine=1
fi
findmnt -rn -o TARGET -S /dev/$dev | head -n1 > mountpoint.txt || true
rc=0; passthru bind $ctrl --json > bind.json 2> bind.err || rc=$?; echo $rc > bind.rc
basename "$(readlink /sys/bus/pci/devices/$ctrl/driver)" > driver.txt
[ $mine = 0 ] || umount /mnt/lab
""", boot=BOOT)
def test_an_nvme_with_a_mounted_filesystem_is_refused(guest: GuestRun):
    guest.check()
    dev, ctrl = guest.file("disk.txt").split()
    assert ctrl.startswith("0000:")
    assert int(guest.file("bind.rc")) == 2
    r = guest.json("bind.json")["refusals"][0]
    mnt = guest.file("mountpoint.txt").strip()
    assert mnt and r["address"] == ctrl and dev in r["reason"] and mnt in r["reason"] and r["override"] is None
    assert guest.file("driver.txt").strip() == "nvme"


@in_guest(FIND + r"""
# how long one bind takes here (python start-up included), so the kills spread over all of it
t0=$(date +%s%N); passthru bind $nic > /dev/null; t1=$(date +%s%N); passthru restore $nic > /dev/null
span=$(( (t1 - t0) / 1000000 )); echo $span > span.ms
phase_of() { sed -n 's/.*"phase": "\([a-z]*\)".*/\1/p' /var/lib/passthru/vfio/$nic.json 2>/dev/null || true; }
# kill -9 binds: two at moments spread over a whole run, three right after the journal record appears (plus a
# delay: inside the window where the driver writes happen, when the kill is quick enough), and one that is
# certainly mid-bind: blocked on the audit log (a FIFO) after writing its journal record; after each, reconcile must
# leave the NIC either on e1000e with no record, or on vfio-pci and recorded; then give it back for the next round.
# (Every kill point, deterministically, is test_lab_crash's matrix; these are real kills at real moments.)
round() {  # round N MODE MS
    passthru bind $nic > /dev/null 2>&1 & pid=$!
    if [ $2 = fifo ]; then  # the audit log is a FIFO: the bind blocks opening it, right after its journal record
        while [ ! -e /var/lib/passthru/vfio/$nic.json ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done
        sleep 0.5
    elif [ $2 = after-record ]; then
        while [ ! -e /var/lib/passthru/vfio/$nic.json ] && kill -0 $pid 2>/dev/null; do sleep 0.002; done
    fi
    sleep "$(( $3 / 1000 )).$(printf %03d $(( $3 % 1000 )))"
    kill -9 $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    if [ $2 = fifo ]; then rm /var/lib/passthru/audit.log; mv audit.saved /var/lib/passthru/audit.log; fi
    phase=$(phase_of); before=$(drv $nic)
    passthru reconcile --json > reconcile.$1.json
    held=$(phase_of)
    echo "$1 $2:$3 ${phase:-none} $before $(drv $nic) ${held:-none} $(cat /sys/bus/pci/devices/$nic/driver_override)" \
        >> rounds.txt
    if [ -n "$held" ]; then passthru restore $nic > /dev/null; fi
}
for i in 1 2; do round $i spread $(( span * i / 3 )); done
i=2; for ms in 0 5 20; do i=$((i + 1)); round $i after-record $ms; done
mv /var/lib/passthru/audit.log audit.saved; mkfifo /var/lib/passthru/audit.log
round 6 fifo 0
drv $nic > final.driver
""", boot="vfio-kill", timeout=600)  # its own boot: the longest step, run beside the others (PASSTHRU_LAB_JOBS)
def test_kill_9_during_bind_then_reconcile_is_consistent(guest: GuestRun):
    guest.check()
    rounds = [line.split() for line in guest.file("rounds.txt").splitlines()]
    assert len(rounds) == 6, guest.file("span.ms")
    for i, ms, phase, before, after, held, override in rounds:
        if held == "none":
            assert after == "e1000e" and override == "(null)", (i, ms, phase, before, after, held, override)
        else:
            assert held == "bound" and after == "vfio-pci", (i, ms, phase, before, after, held, override)
    # the kills landed in different places; the FIFO round certainly mid-bind, leaving a "binding" record that
    # reconcile gave back (the random ones may also catch the device driverless between unbind and probe)
    assert rounds[-1][2:] == ["binding", "e1000e", "e1000e", "none", "(null)"], rounds
    assert len({r[2] for r in rounds}) >= 2, rounds
    print("kills by phase:", [(r[1], r[2], r[3]) for r in rounds])
    assert guest.file("final.driver").strip() == "e1000e"


@in_guest(FIND + r"""
passthru bind $nic --persist --json > bind.json
ls /etc/passthru/vfio.d > persisted.txt
# what a reboot does to a binding: the kernel forgets driver_override and the NIC's own driver probes it
echo > /sys/bus/pci/devices/$nic/driver_override
echo $nic > /sys/bus/pci/drivers/vfio-pci/unbind
echo $nic > /sys/bus/pci/drivers_probe
drv $nic > driver.rebooted
passthru apply-boot --json > boot.json
drv $nic > driver.applied; ls /dev/vfio > dev-vfio.txt
passthru restore $nic --json > restore.json
drv $nic > driver.restored; ls /etc/passthru/vfio.d > persisted.after.txt
""", boot=BOOT, timeout=180)
def test_persisted_binding_comes_back_with_apply_boot(guest: GuestRun):
    guest.check()
    nic = guest.json("bind.json")["devices"][0]["address"]
    assert guest.json("bind.json")["persisted"] == [nic]
    assert guest.file("persisted.txt").split() == [f"{nic}.json"]
    assert guest.file("driver.rebooted").strip() == "e1000e"
    boot = guest.json("boot.json")
    assert boot["ok"] is True
    assert [(d["address"], d["status"]) for d in boot["devices"]] == [(nic, "dropped"), (nic, "changed")]
    assert guest.file("driver.applied").strip() == "vfio-pci"
    assert guest.file("driver.restored").strip() == "e1000e" and guest.file("persisted.after.txt").strip() == ""
