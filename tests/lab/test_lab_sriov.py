"""SR-IOV on a real kernel: netdevsim (a real SR-IOV NIC on the netdevsim bus, not PCI) gets 4 VFs from
`passthru vf count`, VF settings from `passthru vf set` reach the kernel over netlink (checked with `ip -j link show`),
`vf reset` puts them back, the nic kind's assignment hooks do the same, `vf switchdev` makes representors found by
phys_port_name (checked against `devlink`), the doctor findings see them; and the SR-IOV NVMe (serial lab-sriov) gets
its VFs through the same count machinery, with autoprobe off and a VF on vfio-pci refusing the count."""

from __future__ import annotations

import json

import pytest

from .guest import GuestRun, in_guest

pytestmark = pytest.mark.lab

NSIM = "/sys/bus/netdevsim/devices/netdevsim1"


def _vfinfo(ip_json: str, vf: int) -> dict:
    (link,) = json.loads(ip_json)
    return next(v for v in link.get("vfinfo_list", []) if v.get("vf") == vf)


def _vlan(v: dict) -> tuple[int, int]:
    if v.get("vlan_list"):
        return v["vlan_list"][0].get("vlan", 0), v["vlan_list"][0].get("qos", 0)
    return v.get("vlan", 0), v.get("qos", 0)


@in_guest(rf"""
modprobe psample
modprobe netdevsim
mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
echo "1 1" > /sys/bus/netdevsim/new_device
for i in $(seq 100); do [ -n "$(ls {NSIM}/net 2>/dev/null)" ] && break; sleep 0.1; done
pf=$(ls {NSIM}/net | head -n1); echo "$pf" > pf.txt
passthru vf count "$pf" 4 --json > count.json
cat {NSIM}/sriov_numvfs > numvfs.txt
rc=0; passthru vf count "$pf" 5 2> count5.err || rc=$?; echo $rc > count5.rc
passthru vf set "$pf" 0 --mac 52:54:00:12:34:56 --vlan 100 --qos 3 --spoofchk on --trust on --rate-max 1000 \
    --link-state disable --json > set.json
ip -j link show "$pf" > ip-set.json
passthru vf list "$pf" --json > list-set.json
cp /var/lib/passthru/sriov/netdevsim-netdevsim1.vf0.json record.json
passthru vf reset "$pf" 0 --json > reset.json
ip -j link show "$pf" > ip-reset.json
ls /var/lib/passthru/sriov > records-after-reset.txt
python - > kind.json <<'EOF'
import json, subprocess
from passthru.config import Paths
from passthru.host.root import HostRoot
from passthru.kinds.nic_vf import NicKind
h = HostRoot("/"); paths = Paths.for_root(h); k = NicKind(); pf = open("pf.txt").read().strip()
prior = k.before_assign(h, paths, "vm1", "vf:netdevsim/netdevsim1:2", {{"mac": "52:54:00:00:00:22", "vlan": 22}})
during = subprocess.run(["ip", "-j", "link", "show", pf], capture_output=True, text=True).stdout
k.after_release(h, paths, "vm1", "vf:netdevsim/netdevsim1:2", prior)
after = subprocess.run(["ip", "-j", "link", "show", pf], capture_output=True, text=True).stdout
print(json.dumps({{"prior": prior, "during": during, "after": after}}))
EOF
passthru vf switchdev "$pf" --json > switchdev.json
for n in {NSIM}/net/*; do echo "${{n##*/}} $(cat $n/phys_port_name 2>/dev/null || echo -)"; done > ports.txt
devlink -j dev eswitch show netdevsim/netdevsim1 > eswitch.json
passthru vf list "$pf" --json > list-switchdev.json
python -c 'import json, dataclasses; from passthru.host.root import HostRoot; from passthru.kinds.nic_vf import sriov_findings; print(json.dumps([dataclasses.asdict(f) for f in sriov_findings(HostRoot("/"))]))' > findings.json
rc=0; passthru vf set "$pf" 1 --mac 52:54:00:00:00:11 --rate-max 500 2> rate.err || rc=$?; echo $rc > rate.rc
ip -j link show "$pf" > ip-rate.json
passthru vf switchdev "$pf" --mode legacy --json > legacy.json
ls {NSIM}/net > ports-legacy.txt
passthru vf count "$pf" 0 --json > count0.json
cat {NSIM}/sriov_numvfs > numvfs0.txt
cp /var/lib/passthru/audit.log audit.log
""", boot="sriov", timeout=420)
def test_netdevsim_vfs_settings_reset_and_switchdev(guest: GuestRun):
    guest.check()
    pf = guest.file("pf.txt").strip()
    count = guest.json("count.json")
    assert (count["pf"], count["bus"], count["netdev"], count["status"], count["before"], count["after"]) == (
        "netdevsim1", "netdevsim", pf, "changed", 0, 4)
    assert guest.file("numvfs.txt").strip() == "4"
    assert guest.file("count5.rc").strip() == "2"
    assert "5 VFs asked, the device supports at most 4" in guest.file("count5.err")

    # VF settings reach the kernel: `ip` sees them
    s = guest.json("set.json")
    assert s["status"] == "changed" and s["warnings"] == []
    assert s["prior"] == {"mac": "00:00:00:00:00:00", "vlan": 0, "qos": 0, "min_tx_rate": 0, "max_tx_rate": 0,
                          "spoofchk": False, "trust": False, "link_state": "auto"}
    v = _vfinfo(guest.file("ip-set.json"), 0)
    assert v["address"] == "52:54:00:12:34:56" and _vlan(v) == (100, 3)
    assert (v["spoofchk"], v["trust"], v["link_state"]) == (True, True, "disable")
    assert v["rate"]["max_tx"] == 1000
    listed = guest.json("list-set.json")["pfs"][0]
    assert listed["source"] == "netlink" and listed["totalvfs"] == 4
    row = listed["vfs"][0]
    assert (row["address"], row["mac"], row["vlan"], row["qos"], row["spoofchk"], row["trust"], row["recorded"]) == (
        None, "52:54:00:12:34:56", 100, 3, True, True, True)
    assert guest.json("record.json")["prior"]["mac"] == "00:00:00:00:00:00"

    # reset puts the prior back and drops the record
    assert guest.json("reset.json")["status"] == "restored"
    v = _vfinfo(guest.file("ip-reset.json"), 0)
    assert v["address"] == "00:00:00:00:00:00" and _vlan(v) == (0, 0)
    assert (v["spoofchk"], v["trust"], v["link_state"], v.get("rate", {}).get("max_tx", 0)) == (
        False, False, "auto", 0)
    assert "vf0" not in guest.file("records-after-reset.txt")

    # the nic kind: before_assign sets, after_release restores
    k = guest.json("kind.json")
    assert k["prior"]["vf"] == 2 and k["prior"]["prior"] == {"mac": "00:00:00:00:00:00", "vlan": 0, "qos": 0}
    during, after = _vfinfo(k["during"], 2), _vfinfo(k["after"], 2)
    assert during["address"] == "52:54:00:00:00:22" and _vlan(during)[0] == 22
    assert after["address"] == "00:00:00:00:00:00" and _vlan(after)[0] == 0

    # switchdev: one representor per VF, by phys_port_name, as devlink says
    sd = guest.json("switchdev.json")
    assert (sd["before"], sd["after"], sd["status"], sd["missing"]) == ("legacy", "switchdev", "changed", [])
    ports = dict(line.split() for line in guest.file("ports.txt").splitlines())
    reps = {name: port for name, port in ports.items() if port.startswith("pf")}
    assert sorted(reps.values()) == ["pf0vf0", "pf0vf1", "pf0vf2", "pf0vf3"]
    assert sd["representors"] == {port[5:]: name for name, port in reps.items()}
    assert guest.json("eswitch.json")["dev"]["netdevsim/netdevsim1"]["mode"] == "switchdev"
    rows = guest.json("list-switchdev.json")["pfs"][0]["vfs"]
    assert [r["representor"] for r in rows] == [sd["representors"][str(i)] for i in range(4)]
    findings = {(f["id"], f["device"]): f for f in guest.json("findings.json")}
    assert findings[("sriov.eswitch", "netdevsim1")]["status"] == "pass"
    assert findings[("sriov.representors", "netdevsim1")]["status"] == "pass"
    ovs = findings[("sriov.ovs_offload", None)]
    assert ovs["status"] == "warn" and "openvswitch-switch" in ovs["fix"]  # no ovs-vsctl in the lab: never silent

    # netdevsim refuses TX rates in switchdev mode: one clear message, the MAC already set is undone
    assert guest.file("rate.rc").strip() == "1"
    err = guest.file("rate.err")
    assert "setting VF 1 rate" in err and "EOPNOTSUPP" in err and "(mac) were put back" in err
    assert _vfinfo(guest.file("ip-rate.json"), 1)["address"] == "00:00:00:00:00:00"

    legacy = guest.json("legacy.json")
    assert (legacy["after"], legacy["representors"], legacy["warnings"]) == ("legacy", {}, [])
    assert guest.file("ports-legacy.txt").split() == [pf]
    assert guest.json("count0.json")["after"] == 0 and guest.file("numvfs0.txt").strip() == "0"
    actions = [json.loads(line)["action"] for line in guest.file("audit.log").splitlines()]
    assert actions[:4] == ["sriov_count", "vf_set", "vf_reset", "vf_set"]
    assert "eswitch_mode" in actions and "vf_set_failed" in actions


@in_guest(r"""
pf=$(dirname "$(ls /sys/bus/pci/devices/*/sriov_totalvfs | head -n1)"); pf=${pf##*/}; echo "$pf" > pf.txt
cat /sys/bus/pci/devices/$pf/nvme/nvme*/serial > serial.txt
passthru vf count "$pf" 2 --autoprobe off --json > count.json
cat /sys/bus/pci/devices/$pf/sriov_drivers_autoprobe > autoprobe.txt
for v in /sys/bus/pci/devices/$pf/virtfn*; do
    vf=$(readlink -f "$v"); d=$(readlink "$vf/driver" || echo none); echo "${v##*/} ${vf##*/} ${d##*/}"
done > vfs.txt
passthru vf list "$pf" --json > list.json
rc=0; passthru vf count "$pf" 3 2> over.err || rc=$?; echo $rc > over.rc
vf1=$(basename "$(readlink -f /sys/bus/pci/devices/$pf/virtfn0)")
modprobe vfio-pci
passthru bind "$vf1" --json > bind.json
# the VF really goes to a VM: a nested QEMU opens it through /dev/vfio/<group>
printf '%s\n' '{"execute":"qmp_capabilities"}' \
    '{"execute":"qom-list","arguments":{"path":"/machine/peripheral"}}' '{"execute":"quit"}' |
    timeout 120 qemu-system-x86_64 -accel tcg -M q35 -m 256 -nodefaults -display none -S \
        -device vfio-pci,host=$vf1,id=nvf0 -qmp stdio > qmp.out 2> qmp.err
rc=0; passthru vf count "$pf" 0 2> busy.err || rc=$?; echo $rc > busy.rc
passthru restore "$vf1" --json > restore.json
passthru vf count "$pf" --restore --json > restore-count.json
cat /sys/bus/pci/devices/$pf/sriov_numvfs > numvfs.after
cat /sys/bus/pci/devices/$pf/sriov_drivers_autoprobe > autoprobe.after
ls /var/lib/passthru/sriov > records.after || true
""", boot="sriov", timeout=300)
def test_nvme_vfs_through_the_same_count(guest: GuestRun):
    guest.check()
    pf = guest.file("pf.txt").strip()
    assert guest.file("serial.txt").strip() == "lab-sriov"
    count = guest.json("count.json")
    slot = pf.rsplit(".", 1)[0]
    assert (count["status"], count["before"], count["after"], count["autoprobe_after"]) == ("changed", 0, 2, False)
    assert count["vfs"] == [f"{slot}.1", f"{slot}.2"]
    assert count["steps"] == ["sriov_drivers_autoprobe=0", "sriov_numvfs=2"]
    assert guest.file("autoprobe.txt").strip() == "0"
    assert [line.split() for line in guest.file("vfs.txt").splitlines()] == [
        ["virtfn0", f"{slot}.1", "none"], ["virtfn1", f"{slot}.2", "none"]]  # no host driver grabbed them
    listed = guest.json("list.json")["pfs"][0]
    assert (listed["numvfs"], listed["totalvfs"], listed["netdev"], listed["source"]) == (2, 2, None, "sysfs")
    assert guest.file("over.rc").strip() == "2" and "at most 2 (sriov_totalvfs)" in guest.file("over.err")
    assert guest.json("bind.json")["devices"][0]["after"] == "vfio-pci"
    peripherals = [json.loads(line) for line in guest.file("qmp.out").splitlines() if line.startswith("{")]
    names = [p["name"] for r in peripherals if isinstance(r.get("return"), list) for p in r["return"]]
    assert "nvf0" in names, guest.file("qmp.out") + guest.file("qmp.err")
    assert guest.file("busy.rc").strip() == "2"
    assert f"VF 0 ({slot}.1) is bound to vfio-pci" in guest.file("busy.err")
    assert guest.json("restore.json")["devices"][0]["status"] == "restored"
    back = guest.json("restore-count.json")
    assert (back["after"], back["autoprobe_after"]) == (0, True)
    assert guest.file("numvfs.after").strip() == "0" and guest.file("autoprobe.after").strip() == "1"
    assert guest.file("records.after").split() == []
