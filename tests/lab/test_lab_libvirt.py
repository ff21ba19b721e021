"""libvirt drives passthru through its qemu hook on a real kernel: libvirtd runs in the guest (started by the step;
the guest has no systemd) with passthru's hook installed by `passthru hooks install --libvirt` before it starts. A
TCG domain with a managed='no' <hostdev> of one of the guest's e1000e NICs starts: the hook moves the NIC to
vfio-pci and records it for that domain, and the nested QEMU opens it; a second domain with the same NIC is refused
with the hook's line; `virsh destroy` releases it and the NIC is back on e1000e. Own boot ("libvirt"): it binds a
NIC and leaves libvirtd's files in the guest's /etc and /run."""

from __future__ import annotations

import pytest

from .guest import GuestRun, in_guest

pytestmark = pytest.mark.lab


@in_guest(r"""
nics=(/sys/bus/pci/drivers/e1000e/0000:*); nic=${nics[-1]##*/}; echo $nic > nic.txt
drv() { local l; l=$(readlink /sys/bus/pci/devices/$1/driver) && basename "$l" || echo none; }
passthru hooks install --libvirt > install.txt
cp /etc/libvirt/hooks/qemu hook.sh
# the guest's libvirt: QEMU as root, no security driver, no virtlogd, no private /dev (the guest has no udev); only
# the drivers a hostdev-only domain needs (LIBVIRT_DRIVER_DIR), so that the daemon starts quickly under TCG
printf 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\nstdio_handler = "file"\nnamespaces = []\n' \
    > /etc/libvirt/qemu.conf
mkdir -p /run/libvirt /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt/qemu drivers
for m in qemu nodedev secret; do ln -s /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_$m.so drivers/; done
LIBVIRT_DRIVER_DIR=$PWD/drivers /usr/sbin/libvirtd -d
for i in $(seq 300); do virsh -q uri > /dev/null 2>&1 && break; sleep 0.2; done
bus=${nic#0000:}; bus=${bus%%:*}
for name in a b; do cat > $name.xml <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source><address domain='0x0000' bus='0x$bus' slot='0x00' function='0x0'/></source>
    </hostdev>
  </devices>
</domain>
XML
virsh -q define $name.xml
done
virsh domuuid a > uuid.txt
# paused: QEMU has opened the device, and the nested guest burns no CPU
virsh -q start --paused a 2> start-a.err
virsh -q domstate a > state-a.txt
drv $nic > driver.running
passthru assignments --json > running.json
rc=0; virsh -q start b 2> start-b.err || rc=$?; echo $rc > start-b.rc
virsh -q domstate b > state-b.txt
virsh -q destroy a > /dev/null
drv $nic > driver.after
passthru assignments --all --json > after.json
kill "$(cat /run/libvirtd.pid)" 2> /dev/null || true
""", boot="libvirt", timeout=480)
def test_libvirt_hook_takes_the_nic_over_for_a_domain_and_gives_it_back(guest: GuestRun):
    guest.check()
    nic = guest.file("nic.txt").strip()
    uuid = guest.file("uuid.txt").strip()
    assert guest.file("install.txt").strip() == "/etc/libvirt/hooks/qemu: changed"
    assert "hooks libvirt" in guest.file("hook.sh")
    assert guest.file("state-a.txt").strip() == "paused", guest.file("start-a.err")
    assert guest.file("driver.running").strip() == "vfio-pci"
    rows = guest.json("running.json")["assignments"]
    assert [(r["vm"], r["device"], r["state"], r["vm_uuid"]) for r in rows] == [("a", f"pci:{nic}", "reserved", uuid)]
    assert int(guest.file("start-b.rc")) != 0 and guest.file("state-b.txt").strip() == "shut off"
    err = guest.file("start-b.err")
    assert f"passthru: domain b not started: pci:{nic}: already assigned to VM 'a'" in err, err
    assert guest.file("driver.after").strip() == "e1000e"
    done = guest.json("after.json")["assignments"]
    assert [(r["vm"], r["state"]) for r in done] == [("a", "released")], "b never held it; a's holding ended"
