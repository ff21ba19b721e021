"""The passthru hook run by a real libvirtd (tests/libvirtd.py: a private daemon in its own mount namespace). This
machine has no IOMMU and no USB bus, so the hook's devices are from a fixture host (its --root) and libvirt itself
cannot open them: a domain with a managed='yes' hostdev is recorded by the hook at prepare, libvirt then fails to
detach the device and runs the release hook, which releases it (both hooks ran: the released row carries the
domain's UUID); a domain naming a device another VM holds does not start, and libvirt shows passthru's line; a
domain without host devices starts and stops with the hook installed. The lab (tests/lab/test_lab_libvirt.py)
starts a domain with a real PCI device on vfio-pci."""

from __future__ import annotations

import os
import shlex
import sys

import pytest

import libvirtd
import passthru
import sysfs_fixtures as fx
from passthru.service.session import Session
from passthru.service.assign import assign, open_store
from passthru.service import hooks

pytestmark = pytest.mark.skipif(not libvirtd.available(), reason=libvirtd.why_not() or "")

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {dev}
  </devices>
</domain>
"""
MANAGED = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x87' "
           "slot='0x00' function='0x0'/></source></hostdev>")
PCI = ("<hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x19' slot='0x00' "
       "function='0x0'/></source></hostdev>")


def held(s: Session) -> list[tuple[str, str, str | None]]:
    return sorted((a.vm, a.device, a.vm_uuid) for a in open_store(s).assignments())


def test_libvirtd_runs_the_hook_on_start_and_stop(tmp_path):
    s = Session(str(fx.gpu_server(tmp_path / "gs")), None, None)
    # libvirtd runs the hook with a clean environment: name the passthru under test, not the interpreter's default
    src = os.path.dirname(os.path.dirname(passthru.__file__))
    text, _ = hooks.render(s, "libvirt", command=f"env PYTHONPATH={shlex.quote(src)} {sys.executable} -m passthru")
    for name, dev in (("plain", ""), ("a", MANAGED), ("c", PCI)):
        (tmp_path / f"{name}.xml").write_text(DOMAIN.format(name=name, dev=dev))
    assign(s, "other", ["0000:19:00.0"])  # already on vfio-pci in the fixture: nothing to bind
    with libvirtd.Libvirtd(tmp_path, hook=text) as d:
        for name in ("plain", "a", "c"):
            assert d.virsh("define", str(tmp_path / f"{name}.xml")).returncode == 0
        r = d.virsh("start", "plain")
        assert r.returncode == 0, r.stderr + d.output()
        assert d.virsh("destroy", "plain").returncode == 0
        uuid = d.virsh("domuuid", "a").stdout.strip()
        r = d.virsh("start", "a")
        assert r.returncode != 0 and "passthrough of host PCI devices" in r.stderr, r.stderr  # no IOMMU here
        rows = open_store(s).assignments("a", active=False)
        assert sorted((a.device, a.state, a.vm_uuid) for a in rows) == [
            ("pci:0000:87:00.0", "released", uuid), ("pci:0000:87:00.1", "released", uuid)]
        r = d.virsh("start", "c")
        assert r.returncode != 0
        assert "passthru: domain c not started: pci:0000:19:00.0: already assigned to VM 'other'" in r.stderr, \
            r.stderr
        assert d.virsh("domstate", "c").stdout.strip() == "shut off"
    assert held(s) == [("other", "pci:0000:19:00.0", None), ("other", "pci:0000:19:00.1", None)]
