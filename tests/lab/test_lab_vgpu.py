"""vGPUs on a real kernel: the mtty sample driver is a real mdev parent (a virtual device, not PCI). passthru lists
its types, creates an instance that a nested QEMU takes with `vfio-pci,sysfsdev=`, re-creates a persisted one the
kernel forgot, and removes them, with available_instances moving as the kernel counts; `vgpu list` shows an mdevctl
definition written for a live instance. (mtty's parent is not PCI, so the refusal to bind a GPU hosting vGPUs is
tested on fixtures: tests/test_vgpu_safety.py.)"""

from __future__ import annotations

import json

import pytest

from .guest import GuestRun, in_guest

pytestmark = pytest.mark.lab

MTTY = r"""
modprobe vfio; modprobe vfio_iommu_type1; modprobe mdev; modprobe mtty
types=/sys/class/mdev_bus/mtty/mdev_supported_types
first() { python -c 'import json,sys; print(json.load(open(sys.argv[1]))["vgpus"][0]["id"])' "$1"; }
"""


def _replies(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@in_guest(MTTY + r"""
cat $types/mtty-1/available_instances $types/mtty-2/available_instances > avail.before
passthru vgpu types --json > types.json
passthru vgpu types > types.txt
passthru vgpu create mtty mtty-2 --persist --json > create.json
uuid=$(first create.json); echo $uuid > uuid.txt
ls /sys/bus/mdev/devices > devices.created
readlink -f /sys/bus/mdev/devices/$uuid > device.path
basename $(readlink /sys/bus/mdev/devices/$uuid/mdev_type) > device.type
ls /dev/vfio/$(basename $(readlink /sys/bus/mdev/devices/$uuid/iommu_group)) > vfio.node
cat $types/mtty-1/available_instances $types/mtty-2/available_instances > avail.created
cp /etc/passthru/mdev.d/mtty/$uuid.json definition.json
# mdevctl's definition of the live instance, as `mdevctl define --uuid $uuid` writes it: vgpu list reads it
mkdir -p /etc/mdevctl.d/mtty
printf '{"mdev_type": "mtty-2", "start": "manual", "attrs": []}\n' > /etc/mdevctl.d/mtty/$uuid
passthru vgpu list --json > list.json
# a VM takes the mdev by its sysfs path; in prelaunch (-S) QOM lists the device
{ echo '{"execute":"qmp_capabilities"}'; sleep 1
  echo '{"execute":"qom-list","arguments":{"path":"/machine/peripheral"}}'; sleep 1
  echo '{"execute":"quit"}'; } |
    timeout 120 qemu-system-x86_64 -accel tcg -M q35 -m 256 -nodefaults -display none -S \
        -device vfio-pci,sysfsdev=/sys/bus/mdev/devices/$uuid,id=v0 -qmp stdio > qmp.out 2> qmp.err
passthru vgpu remove $uuid --json > remove.json
ls /sys/bus/mdev/devices > devices.removed
cat $types/mtty-1/available_instances $types/mtty-2/available_instances > avail.removed
ls /etc/passthru/mdev.d > defs.removed
grep '"vgpu-' /var/lib/passthru/audit.log > audit.vgpu
""", boot="vgpu", timeout=300)
def test_mtty_types_create_vm_and_remove(guest: GuestRun):
    guest.check()
    before = [int(x) for x in guest.file("avail.before").split()]
    doc = guest.json("types.json")
    [mtty] = [p for p in doc["parents"] if p["parent"] == "mtty"]
    assert (mtty["mode"], mtty["bus"]) == ("mdev", "virtual")
    assert [(t["id"], t["name"], t["available_instances"], t["device_api"]) for t in mtty["types"]] == [
        ("mtty-1", "Single port serial", before[0], "vfio-pci"), ("mtty-2", "Dual port serial", before[1], "vfio-pci")]
    assert before == [24, 12]
    row = next(line for line in guest.file("types.txt").splitlines() if "mtty-2" in line)
    assert row.split()[:3] == ["mtty", "virtual", "mtty-2"] and "Dual port serial" in row
    uuid = guest.file("uuid.txt").strip()
    [v] = guest.json("create.json")["vgpus"]
    assert (v["status"], v["parent"], v["mdev_type"], v["persisted"]) == ("created", "mtty", "mtty-2", True)
    assert uuid in guest.file("devices.created").split()
    assert guest.file("device.path").strip() == f"/sys/devices/virtual/mtty/mtty/{uuid}"
    assert guest.file("device.type").strip() == "mtty-2" and guest.file("vfio.node").strip()
    created = [int(x) for x in guest.file("avail.created").split()]
    assert created[1] == before[1] - 1 and created[0] < before[0]  # mtty's ports are shared by both types
    assert guest.json("definition.json") == {"schema": 1, "id": uuid, "mode": "mdev", "parent": "mtty",
                                             "mdev_type": "mtty-2", "start": "auto", "attrs": []}
    [row] = [x for x in guest.json("list.json")["vgpus"] if x["id"] == uuid]
    assert row["live"] and row["persisted"] and row["passthru"]["phase"] == "created" and row["driver"]
    assert row["mdevctl"] == {"path": f"/etc/mdevctl.d/mtty/{uuid}", "parent": "mtty", "mdev_type": "mtty-2",
                              "start": "manual", "problem": None}
    replies = _replies(guest.file("qmp.out"))
    peripherals = next(r["return"] for r in replies if isinstance(r.get("return"), list))
    assert "v0" in [p["name"] for p in peripherals], guest.file("qmp.out") + guest.file("qmp.err")
    [v] = guest.json("remove.json")["vgpus"]
    assert v["status"] == "removed" and v["note"].startswith("definition removed; mdevctl still defines it")
    assert uuid not in guest.file("devices.removed").split()
    assert [int(x) for x in guest.file("avail.removed").split()] == before
    assert guest.file("defs.removed").strip() == ""
    audit = [json.loads(line) for line in guest.file("audit.vgpu").splitlines()]
    assert [(a["action"], a["device"]) for a in audit] == [
        (a, f"mdev:{uuid}") for a in ("vgpu-create", "vgpu-persist", "vgpu-remove", "vgpu-unpersist")]
    assert audit[0]["caller"]["uid"] == 0


@in_guest(MTTY + r"""
uuid=0b8a2f5e-3c1d-4e2f-9a7b-6c5d4e3f2a10
passthru vgpu create mtty mtty-1 --uuid $uuid --persist > create.out
passthru vgpu create mtty mtty-1 --uuid $uuid --persist --json > again.json
# refusals: exit 2, one line, nothing written
for args in "mtty mtty-9" "nosuch mtty-1" "mtty mtty-2 --uuid $uuid" "mtty mtty-1 --uuid not-a-uuid"; do
    rc=0; passthru vgpu create $args > /dev/null 2>> refusals.err || rc=$?; echo $rc >> refusals.rc
done
ls /sys/bus/mdev/devices > devices.refused
# a reboot forgets mdevs: remove it behind passthru's back, then what boot runs
echo 1 > /sys/bus/mdev/devices/$uuid/remove
ls /sys/bus/mdev/devices > devices.forgotten
passthru vgpu start-persisted --json > start.json
ls /sys/bus/mdev/devices > devices.started
basename $(readlink /sys/bus/mdev/devices/$uuid/mdev_type) > started.type
passthru vgpu start-persisted --json > start-again.json
# placement without a parent
passthru vgpu create mtty-2 --placement spread --json > placed.json
placed=$(first placed.json)
passthru vgpu remove $placed > /dev/null
passthru vgpu remove $uuid --keep-definition --json > keep.json
passthru vgpu list --json > list.json
passthru vgpu remove $uuid --json > undefine.json
cat $types/mtty-1/available_instances $types/mtty-2/available_instances > avail.end
""", boot="vgpu", timeout=300)
def test_mtty_persisted_refusals_and_placement(guest: GuestRun):
    guest.check()
    uuid = "0b8a2f5e-3c1d-4e2f-9a7b-6c5d4e3f2a10"
    assert "created mtty-1 (Single port serial) on mtty" in guest.file("create.out")
    assert guest.json("again.json")["vgpus"][0]["status"] == "unchanged"
    assert guest.file("refusals.rc").split() == ["2", "2", "2", "2"]
    errs = guest.file("refusals.err").splitlines()
    assert len(errs) == 4 and "unknown vGPU type 'mtty-9' on mtty" in errs[0] and "'nosuch'" in errs[1]
    assert f"{uuid} already exists as mtty-1 on mtty" in errs[2] and "is not a UUID" in errs[3]
    assert guest.file("devices.refused").split() == [uuid]
    assert uuid not in guest.file("devices.forgotten").split()
    start = guest.json("start.json")
    assert start["ok"] and [(v["id"], v["status"]) for v in start["vgpus"]] == [(uuid, "created")]
    assert uuid in guest.file("devices.started").split() and guest.file("started.type").strip() == "mtty-1"
    assert [v["status"] for v in guest.json("start-again.json")["vgpus"]] == ["unchanged"]
    [p] = guest.json("placed.json")["vgpus"]
    assert (p["parent"], p["mdev_type"], p["status"]) == ("mtty", "mtty-2", "created")
    keep = guest.json("keep.json")["vgpus"][0]
    assert keep["status"] == "removed" and "kept" in keep["note"]
    [row] = [x for x in guest.json("list.json")["vgpus"] if x["id"] == uuid]
    assert (row["live"], row["persisted"]) == (False, True)
    assert guest.json("undefine.json")["vgpus"][0]["status"] == "undefined"
    assert [int(x) for x in guest.file("avail.end").split()] == [24, 12]
