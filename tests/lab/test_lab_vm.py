"""Devices reaching VMs on a real kernel: a nested QEMU started from `passthru qemu-args` shows the vfio device in
`query-pci`, and `passthru attach` / `detach` hot-plug a vfio device into a running QEMU over a real QMP socket."""

from __future__ import annotations

import json

import pytest

from .guest import GuestRun, in_guest

pytestmark = pytest.mark.lab
BOOT = "vm"  # its own boot: NICs move to vfio-pci and into nested QEMUs

NICS = r"""
nics=(/sys/bus/pci/drivers/e1000e/0000:*)
drv() { local l; l=$(readlink /sys/bus/pci/devices/$1/driver) && basename "$l" || echo none; }
"""


def _replies(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _pci_devices(replies: list[dict]) -> list[dict]:
    out = []

    def walk(devs: list[dict]) -> None:
        for d in devs:
            out.append(d)
            walk((d.get("pci_bridge") or {}).get("devices", []))

    for r in replies:
        if isinstance(r.get("return"), list) and r["return"] and "devices" in r["return"][0]:
            for bus in r["return"]:
                walk(bus["devices"])
    return out


@in_guest(NICS + r"""
nic=${nics[0]##*/}; echo $nic > nic.txt
passthru assign vm1 $nic --json > assign.json
drv $nic > driver.assigned
passthru qemu-args vm1 > args.txt
passthru libvirt-xml vm1 > vm1.xml
# the VM: firmware numbers the root port's bus, then query-pci lists the device behind it (asked every 2 s until
# it does: how long the firmware takes under TCG in TCG depends on the machine's load)
qemu-system-x86_64 -accel tcg -M q35 -m 256 -nodefaults -display none $(cat args.txt) \
    -qmp unix:/tmp/vm1.qmp,server=on,wait=off > qemu.out 2> qmp.err & qpid=$!
timeout 150 python3 - /tmp/vm1.qmp "pt-${nic//[:.]/-}" > qmp.out <<'PY' || true
import json, socket, sys, time
for _ in range(300):
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); break
    except OSError:
        time.sleep(0.2)
f = s.makefile("rw")
def ask(cmd):
    f.write(json.dumps({"execute": cmd}) + "\n"); f.flush()
    while True:
        line = f.readline(); print(line.strip(), flush=True)
        if '"return"' in line or '"error"' in line:
            return line
print(f.readline().strip())
ask("qmp_capabilities")
while '"qdev_id": "%s"' % sys.argv[2] not in ask("query-pci"):
    time.sleep(2)
ask("quit")
PY
kill $qpid 2>/dev/null || true; wait $qpid 2>/dev/null || true
passthru assignments vm1 --json > assignments.json
passthru release vm1 --restore --json > release.json
drv $nic > driver.released
""", boot=BOOT, timeout=300)
def test_a_vm_started_from_qemu_args_sees_the_device(guest: GuestRun):
    guest.check()
    nic = guest.file("nic.txt").strip()
    assert [a["device"] for a in guest.json("assign.json")["assignments"]] == [f"pci:{nic}"]
    assert guest.json("assign.json")["bound"] == [nic] and guest.file("driver.assigned").strip() == "vfio-pci"
    args = guest.file("args.txt")
    assert f"host={nic}" in args and "pcie-root-port" in args
    devices = _pci_devices(_replies(guest.file("qmp.out")))
    mine = [d for d in devices if d.get("qdev_id") == "pt-" + nic.replace(":", "-").replace(".", "-")]
    assert mine, guest.file("qmp.out")[-2000:] + guest.file("qmp.err")
    assert (mine[0]["id"]["vendor"], mine[0]["id"]["device"]) == (0x8086, 0x10D3)  # the e1000e, seen by the VM
    assert "<hostdev" in guest.file("vm1.xml") and "managed=\"no\"" in guest.file("vm1.xml")
    assert [a["state"] for a in guest.json("assignments.json")["assignments"]] == ["reserved"]
    assert guest.json("release.json")["released"] == [f"pci:{nic}"]
    assert guest.file("driver.released").strip() == "e1000e"


@in_guest(NICS + r"""
nic=${nics[0]##*/}; echo $nic > nic.txt
sock=/tmp/vm2.qmp
qemu-system-x86_64 -accel tcg -M q35 -m 256 -nodefaults -display none -S \
    -global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off \
    -device pcie-root-port,id=rp1,chassis=1 -device pcie-root-port,id=rp2,chassis=2 \
    -qmp unix:$sock,server=on,wait=off > qemu.out 2>&1 & qpid=$!
for i in $(seq 100); do [ -S $sock ] && break; sleep 0.1; done
passthru attach vm2 $nic --qmp $sock --json > attach.json
passthru assignments vm2 --json > attached.json
drv $nic > driver.attached
passthru detach vm2 $nic --qmp $sock --json > detach.json
passthru assignments vm2 --all --json > detached.json
rc=0; passthru detach vm2 $nic --qmp $sock > again.out 2> again.err || rc=$?; echo $rc > again.rc
kill $qpid; wait $qpid 2>/dev/null || true
passthru restore $nic > /dev/null
drv $nic > driver.end
""", boot=BOOT, timeout=240)
def test_attach_and_detach_over_qmp(guest: GuestRun):
    guest.check()
    nic = guest.file("nic.txt").strip()
    qid = "pt-" + nic.replace(":", "-").replace(".", "-")
    att = guest.json("attach.json")["attached"]
    assert att[0]["ids"] == [qid] and att[0]["port"] in ("rp1", "rp2")
    assert [(a["device"], a["state"]) for a in guest.json("attached.json")["assignments"]] == [
        (f"pci:{nic}", "attached")]
    assert guest.file("driver.attached").strip() == "vfio-pci"
    assert guest.json("detach.json")["detached"][0]["ids"] == [qid]
    rows = guest.json("detached.json")["assignments"]
    assert [(a["device"], a["state"]) for a in rows] == [(f"pci:{nic}", "released")]
    assert int(guest.file("again.rc")) == 2  # nothing held any more: a clear error, not a hang
    assert guest.file("driver.end").strip() == "e1000e"


@in_guest(NICS + r"""
nic=${nics[1]##*/}; echo $nic > nic.txt
db=sqlite:////tmp/cluster.db
count() {  # allocations of VM cvm in STATE in the cluster database (sqlite3: no SQLAlchemy start-up per poll)
    python3 -c "import sqlite3,sys; c=sqlite3.connect('/tmp/cluster.db'); print(c.execute(\"select count(*) from cluster_allocations where vm='cvm' and state=?\", (sys.argv[1],)).fetchone()[0])" "$1" 2>/dev/null || echo 0
}
hosts() { python3 -c "import sqlite3; c=sqlite3.connect('/tmp/cluster.db'); print(c.execute(\"select count(*) from hosts where state='up'\").fetchone()[0])" 2>/dev/null || echo 0; }
local_held() { python3 -c "import sqlite3; c=sqlite3.connect('/var/lib/passthru/passthru.db'); print(c.execute(\"select count(*) from assignments where vm='cvm' and state in ('pending','reserved','attached')\").fetchone()[0])" 2>/dev/null || echo 0; }
# the agent joins the cluster (a SQLite cluster database on this machine: one machine's trial) and waits for work
passthru serve --listen unix:/tmp/pt.sock --no-hotplug --cluster $db --cluster-name lab --heartbeat 1 \
    > serve.log 2>&1 & spid=$!
for i in $(seq 300); do [ "$(hosts)" = 1 ] && break; sleep 1; done
drv $nic > driver.before
passthru cluster place cvm $nic --host lab --db $db --json > place.json
for i in $(seq 300); do [ "$(count confirmed)" = 1 ] && break; sleep 1; done
count confirmed > confirmed.count
drv $nic > driver.taken
passthru assignments cvm --json > local.json
passthru cluster release cvm --db $db --json > release.json
for i in $(seq 300); do [ "$(local_held)" = 0 ] && break; sleep 1; done
local_held > local.after
kill $spid; wait $spid; echo $? > serve.rc
passthru restore $nic > /dev/null
drv $nic > driver.end
""", boot=BOOT, timeout=600)
def test_the_agent_in_a_cluster_takes_a_placement_over_on_the_real_kernel(guest: GuestRun):
    """`passthru serve --cluster` on the real kernel: a placement on this host is taken over by the agent (the NIC
    really moves to vfio-pci, the claim is recorded here) and confirmed; a release in the cluster is mirrored."""
    guest.check()
    nic = guest.file("nic.txt").strip()
    assert guest.file("driver.before").strip() == "e1000e"
    assert guest.json("place.json")["host"] == "lab"
    assert guest.file("confirmed.count").strip() == "1", guest.file("serve.log")[-3000:]
    assert guest.file("driver.taken").strip() == "vfio-pci"
    assert [a["device"] for a in guest.json("local.json")["assignments"]] == [f"pci:{nic}"]
    assert [r["device"] for r in guest.json("release.json")["released"]] == [f"pci:{nic}"]
    assert guest.file("local.after").strip() == "0", guest.file("serve.log")[-3000:]
    assert guest.file("serve.rc").strip() == "0"
    assert guest.file("driver.end").strip() == "e1000e"


@in_guest(NICS + r"""
passthru model add lab-e1000e --vendor 8086 --device 10d3 --kind nic > /dev/null
rc=0; passthru assign tv lab-e1000e --count 2 --same-switch > split.out 2> split.err || rc=$?; echo $rc > split.rc
passthru assignments tv --json > none.json
passthru assign tv lab-e1000e --count 2 --same-switch --allow-split --json > together.json
for n in "${nics[@]}"; do echo "${n##*/} $(drv ${n##*/})"; done > drivers.taken
passthru release tv --restore --json > release.json
for n in /sys/bus/pci/devices/*; do [ "$(cat $n/vendor):$(cat $n/device)" = 0x8086:0x10d3 ] && echo "${n##*/} $(drv ${n##*/})"; done > drivers.end
passthru model remove lab-e1000e > /dev/null
""", boot=BOOT, timeout=300)
def test_devices_chosen_together_on_the_real_kernel(guest: GuestRun):
    """`assign --count 2 --same-switch`: the two e1000e sit on two root ports, so the refusal names the split and
    claims nothing; `--allow-split` takes both and really moves them to vfio-pci; release gives them back."""
    guest.check()
    assert guest.file("split.rc").strip() == "2"
    err = guest.file("split.err")
    assert "best split" in err and "--allow-split" in err and len(err.strip().splitlines()) == 1
    assert guest.json("none.json")["assignments"] == []
    got = sorted(a["device"] for a in guest.json("together.json")["assignments"])
    assert len(got) == 2 and sorted(guest.json("together.json")["bound"]) == [g[4:] for g in got]
    taken = dict(line.split() for line in guest.file("drivers.taken").splitlines())
    assert all(taken[g[4:]] == "vfio-pci" for g in got), taken
    assert sorted(guest.json("release.json")["released"]) == got
    assert all(line.split()[1] == "e1000e" for line in guest.file("drivers.end").splitlines())
