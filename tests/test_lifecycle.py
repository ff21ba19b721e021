"""A VM's life ties to passthru's holdings: the libvirt qemu hook (prepare / release, the domain XML on stdin) and
the Proxmox hookscript (pre-start / post-start / post-stop, the VM's .conf read through the root) on a fixture host
with the fake kernel. managed devices are recorded and guarded but never bound; unmanaged ones go to vfio-pci and
back; another VM's device or an unsafe one refuses the start with one line; names outside passthru's rule get a
UUID-derived name; the hook files install idempotently and never over another program's hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sysfs_fixtures as fx
from fake_kernel import FakeKernel
from passthru.service.session import Session
from passthru.errors import UsageError
from passthru.service.assign import open_store
from passthru.service import hooks
from passthru.service.lifecycle import libvirt_hook, libvirt_vm_name
from passthru.service.proxmox import proxmox_hook
from passthru.vm.proxmox import mdev_uuid, parse_pci_mappings, parse_vm_config

VM1 = (Path(__file__).resolve().parent.parent / "docs" / "examples" / "vm1.xml").read_text()
UUID = "6f1c5a52-3d7e-4f0a-9c61-2b8e4d1a7c30"


@pytest.fixture
def host(tmp_path):
    s = Session(str(fx.gpu_server(tmp_path / "gs")), None, None)
    return s, FakeKernel(s.host)


def hostdev(addr: str, managed: str | None = None) -> str:
    dom, rest = addr.split(":", 1)
    bus, rest = rest.split(":")
    slot, fn = rest.split(".")
    m = f" managed='{managed}'" if managed else ""
    return (f"<hostdev mode='subsystem' type='pci'{m}><source><address domain='0x{dom}' bus='0x{bus}' "
            f"slot='0x{slot}' function='0x{fn}'/></source></hostdev>")


def domain(*devs: str, name: str = "vm1", uuid: str = UUID) -> str:
    return (VM1.replace("<name>vm1</name>", f"<name>{name}</name>").replace(UUID, uuid)
            .replace("<devices>", "<devices>" + "".join(devs), 1))


def driver(s: Session, addr: str) -> str | None:
    return s.host.link_name(f"{s.host.sys}/bus/pci/devices/{addr}/driver")


def rows(s: Session, vm: str) -> list[tuple[str, str | None, str | None]]:
    return sorted((a.device, a.takeover, a.vm_uuid) for a in open_store(s).assignments(vm))


def test_prepare_binds_unmanaged_records_managed_and_release_gives_back(host):
    s, k = host
    xml = domain(hostdev("0000:86:00.0", "no"), hostdev("0000:87:00.0", "yes"),
                 "<hostdev mode='subsystem' type='usb'><source><address bus='1' device='4'/></source></hostdev>")
    res = libvirt_hook(s, ["vm1", "prepare", "begin", "-"], xml, kernel=k)
    assert (res.vm, res.action) == ("vm1", "assigned")
    assert sorted(res.bound) == ["0000:86:00.0", "0000:86:00.1"]
    assert rows(s, "vm1") == [("pci:0000:86:00.0", "vfio", UUID), ("pci:0000:86:00.1", "vfio", UUID),
                              ("pci:0000:87:00.0", "none", UUID), ("pci:0000:87:00.1", "none", UUID),
                              ("usb:1-1.3", None, UUID)]
    assert driver(s, "0000:86:00.0") == "vfio-pci" and driver(s, "0000:87:00.0") == "nouveau"
    for op in ("start", "started", "stopped", "reconnect", "migrate", "restore"):
        assert libvirt_hook(s, ["vm1", op, "begin", "-"], xml, kernel=k).action == "none"
    res = libvirt_hook(s, ["vm1", "release", "end", "destroyed"], xml, kernel=k)
    assert res.action == "released" and len(res.devices) == 5
    assert rows(s, "vm1") == []
    assert (driver(s, "0000:86:00.0"), driver(s, "0000:86:00.1")) == ("nouveau", "snd_hda_intel")
    assert driver(s, "0000:87:00.0") == "nouveau", "a managed device is libvirt's to give back"
    assert libvirt_hook(s, ["vm1", "release", "end", "-"], xml, kernel=k).devices == []  # nothing held: no-op


def test_reconcile_and_qemu_args_leave_managed_devices_to_the_vm_manager(host):
    from passthru.service.hotplug import vm_attachments
    from passthru.service.reconcile import reconcile

    s, k = host
    libvirt_hook(s, ["vm1", "prepare", "begin", "-"], domain(hostdev("0000:87:00.0", "yes")), kernel=k)
    doc = reconcile(s, kernel=k)
    assert doc["ok"] and doc["inventory"]["assignments"] == [], doc
    assert driver(s, "0000:87:00.0") == "nouveau", "not taken over: libvirt binds it when the domain starts"
    assert [a.functions for a in vm_attachments(s, "vm1")] == [("0000:87:00.0", "0000:87:00.1")]


def test_refusals_stop_the_start_and_leave_nothing(host):
    s, k = host
    libvirt_hook(s, ["a", "prepare", "begin", "-"], domain(hostdev("0000:19:00.0"), name="a"), kernel=k)
    other = domain(hostdev("0000:86:00.0"), hostdev("0000:19:00.1"), name="b", uuid=UUID.replace("6", "7"))
    with pytest.raises(UsageError, match="already assigned to VM 'a'"):
        libvirt_hook(s, ["b", "prepare", "begin", "-"], other, kernel=k)
    assert rows(s, "b") == [] and driver(s, "0000:86:00.0") == "nouveau", "all or nothing"
    # libvirt calls release after a failed start: b's release must not touch a's devices
    libvirt_hook(s, ["b", "release", "end", "failed"], other, kernel=k)
    assert [r[0] for r in rows(s, "a")] == ["pci:0000:19:00.0", "pci:0000:19:00.1"]
    with pytest.raises(UsageError, match="boot"):  # the takeover's guards hold for managed devices too
        libvirt_hook(s, ["c", "prepare", "begin", "-"], domain(hostdev("0000:02:00.0", "yes"), name="c"), kernel=k)
    with pytest.raises(UsageError, match="same management"):
        libvirt_hook(s, ["d", "prepare", "begin", "-"], domain(hostdev("0000:86:00.0", "yes"),
                                                               hostdev("0000:86:00.1", "no"), name="d"), kernel=k)
    assert rows(s, "c") == rows(s, "d") == []


def test_vm_names_outside_the_rule_are_derived_from_the_uuid(host):
    s, k = host
    assert libvirt_vm_name("web-01.prod", None) == "web-01.prod"
    assert libvirt_vm_name("win 11 gaming", UUID.upper()) == f"libvirt-{UUID}"
    res = libvirt_hook(s, ["win 11", "prepare", "begin", "-"], domain(hostdev("0000:19:00.0"), name="win 11"),
                       kernel=k)
    assert res.vm == f"libvirt-{UUID}" and rows(s, res.vm)[0][2] == UUID
    with pytest.raises(UsageError, match="no <uuid>"):
        libvirt_vm_name("vм1", None)


def test_installed_hook_run_as_libvirt_runs_it(host, tmp_path):
    """The hook file itself, run the way libvirtd runs it: arguments, XML on stdin, a clean environment."""
    s, _ = host
    assert hooks.install(s, "libvirt", command=f"{sys.executable} -m passthru")[0][1] == "changed"
    script = s.host.path(hooks.LIBVIRT_HOOK)
    env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}

    def run(*args: str, xml: str) -> subprocess.CompletedProcess:
        return subprocess.run([script, *args], input=xml, capture_output=True, text=True, env=env, timeout=60)

    ok = run("a", "prepare", "begin", "-", xml=domain(hostdev("0000:19:00.0"), name="a"))
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    t0 = time.monotonic()
    assert run("a", "started", "begin", "-", xml="").returncode == 0 and time.monotonic() - t0 < 0.5  # no Python
    no = run("b", "prepare", "begin", "-", xml=domain(hostdev("0000:19:00.1"), name="b"))
    assert no.returncode != 0 and no.stdout == ""
    assert no.stderr == "passthru: domain b not started: pci:0000:19:00.1: already assigned to VM 'a'\n"
    bad = run("a", "prepare", "begin", "-", xml="<domain")
    assert bad.returncode == 2 and "does not parse" in bad.stderr and bad.stderr.count("\n") == 1
    assert run("a", "release", "end", "-", xml=domain(name="a")).returncode == 0
    assert rows(s, "a") == []


def test_the_hook_bounds_its_own_time():
    from passthru.cli.hooks import _bounded, _TimedOut

    with pytest.raises(_TimedOut, match="gave up after 1 s"):
        _bounded(1)
        time.sleep(3)


def test_install_is_idempotent_and_keeps_a_foreign_hook(host):
    s, _ = host
    main, extra = (s.host.path(p) for p in (hooks.LIBVIRT_HOOK, hooks.LIBVIRT_HOOK_D))
    assert hooks.install(s, "libvirt") == [(main, "changed")]
    assert hooks.install(s, "libvirt") == [(main, "unchanged")]
    assert os.stat(main).st_mode & 0o777 == 0o755
    assert hooks.uninstall(s, "libvirt") == [(main, "removed")]
    Path(main).write_text("#!/bin/sh\n# someone else's\nexit 0\n")
    out = hooks.install(s, "libvirt")
    assert out[0] == (extra, "changed") and out[1][0] == main and out[1][1].startswith("kept")
    assert hooks.install(s, "libvirt")[0] == (extra, "unchanged")
    assert Path(main).read_text().endswith("someone else's\nexit 0\n")
    assert hooks.uninstall(s, "libvirt") == [(main, "kept (not passthru's)"), (extra, "removed")]
    snip = s.host.path("/var/lib/vz/snippets/passthru.sh")
    assert hooks.install(s, "proxmox") == [(snip, "changed")]
    Path(snip).write_text("#!/bin/sh\n")
    with pytest.raises(UsageError, match="not passthru's"):
        hooks.install(s, "proxmox")
    text, _ = hooks.render(s, "proxmox")
    assert "qm set VMID --hookscript local:snippets/passthru.sh" in text and "pre-start|post-start|post-stop" in text


CONF = """\
boot: order=scsi0
cores: 4
hostpci0: 0000:86:00,pcie=1,x-vga=1
hostpci1: mapping=nic-vf,pcie=1
hostpci2: 0000:af:00.0,mdev=nvidia-222
machine: q35
smbios1: uuid=4b20d080-1b54-4048-85b3-a6a62d165c01
usb0: host=0781:5581,usb3=1
usb1: host=1-1.3
usb2: spice

[snap1]
hostpci3: 0000:87:00.0
"""
MAPPING = """\
nic-vf
\tmap id=15b3:1018,node=pve1,path=0000:3b:00.6;0000:3b:00.7
\tmap id=15b3:1018,node=pve2,path=0000:3b:01.0
gpu
\tmap id=10de:1b06,iommugroup=11,node=pve1,path=0000:19:00
"""


def test_proxmox_config_forms():
    vm = parse_vm_config("100", CONF)
    assert vm.uuid == "4b20d080-1b54-4048-85b3-a6a62d165c01"
    got = [(d.key, d.kind, d.ids, d.mapping, d.mdev) for d in vm.devices]
    assert got == [("hostpci0", "pci", ("0000:86:00",), None, None), ("hostpci1", "pci", (), "nic-vf", None),
                   ("hostpci2", "pci", ("0000:af:00.0",), None, "nvidia-222"),
                   ("usb0", "usb", ("usb:0781:5581",), None, None), ("usb1", "usb", ("usb:1-1.3",), None, None)]
    assert vm.devices[0].options == {"pcie": "1", "x-vga": "1"} and vm.notes == ["usb2: skipped (a SPICE redirection "
                                                                                 "holds no host device)"]
    assert parse_vm_config("101", "hostpci0: 01:00.0;02:00.0,rombar=0\n").devices[0].ids == ("0000:01:00.0",
                                                                                           "0000:02:00.0")
    assert parse_pci_mappings(MAPPING, "pve1") == {"nic-vf": ["0000:3b:00.6", "0000:3b:00.7"], "gpu": ["0000:19:00"]}
    assert mdev_uuid("100", 2) == "00000002-0000-0000-0000-000000000100"
    for bad in ("hostpci0: 0000:zz:00.0", "hostpci0: pcie=1", "usb0: host=mouse"):
        with pytest.raises(UsageError):
            parse_vm_config("100", bad)


def test_proxmox_pre_start_and_post_stop(host):
    s, k = host
    etc = Path(s.host.path("/etc"))
    (etc / "pve" / "qemu-server").mkdir(parents=True)
    (etc / "pve" / "mapping").mkdir()
    (etc / "hostname").write_text("pve1\n")
    (etc / "pve" / "mapping" / "pci.cfg").write_text(MAPPING)
    (etc / "pve" / "qemu-server" / "100.conf").write_text(CONF)
    (etc / "pve" / "qemu-server" / "101.conf").write_text("hostpci0: mapping=nic-vf\nhostpci1: 0000:86:00.1\n")
    res = proxmox_hook(s, "100", "pre-start", kernel=k)
    assert res.vm == "pve-100" and res.bound == [], "Proxmox binds its hostpci devices itself"
    assert rows(s, "pve-100") == [
        ("pci:0000:3b:00.6", "none", "4b20d080-1b54-4048-85b3-a6a62d165c01"),
        ("pci:0000:86:00.0", "none", "4b20d080-1b54-4048-85b3-a6a62d165c01"),
        ("pci:0000:86:00.1", "none", "4b20d080-1b54-4048-85b3-a6a62d165c01"),
        ("usb:1-1.3", None, "4b20d080-1b54-4048-85b3-a6a62d165c01"),
        ("usb:1-2", None, "4b20d080-1b54-4048-85b3-a6a62d165c01")]
    assert any("mdev=nvidia-222" in n for n in res.notes)
    assert driver(s, "0000:86:00.0") == "nouveau"
    with pytest.raises(UsageError, match="already assigned to VM 'pve-100'"):  # 86:00.1 is pve-100's
        proxmox_hook(s, "101", "pre-start", kernel=k)
    (etc / "pve" / "qemu-server" / "101.conf").write_text("hostpci0: mapping=nic-vf\n")
    assert [r[0] for r in rows(s, "pve-101")] == []
    proxmox_hook(s, "101", "pre-start", kernel=k)  # the mapping's first path is pve-100's: the second one
    assert [r[0] for r in rows(s, "pve-101")] == ["pci:0000:3b:00.7"]
    assert proxmox_hook(s, "100", "pre-stop", kernel=k).action == "none"
    assert proxmox_hook(s, "100", "post-stop", kernel=k).action == "released"
    assert rows(s, "pve-100") == [] and driver(s, "0000:86:00.0") == "nouveau"
    assert proxmox_hook(s, "200", "pre-start", kernel=k).notes[0].startswith("no /etc/pve/qemu-server/200.conf")
    with pytest.raises(UsageError, match="phase"):
        proxmox_hook(s, "100", "migrate", kernel=k)
    with pytest.raises(UsageError, match="a number"):
        proxmox_hook(s, "../1", "pre-start", kernel=k)


def test_proxmox_cli_prints_for_the_task_log(host, tmp_path):
    s, _ = host
    conf = Path(s.host.path("/etc/pve/qemu-server"))
    conf.mkdir(parents=True)
    (conf / "100.conf").write_text("hostpci0: 0000:19:00\n")
    env = dict(os.environ, PASSTHRU_ROOT=s.host.base)
    p = subprocess.run([sys.executable, "-m", "passthru", "hooks", "proxmox", "100", "pre-start", "--json"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["devices"] == ["pci:0000:19:00.0", "pci:0000:19:00.1"]
    p = subprocess.run([sys.executable, "-m", "passthru", "hooks", "proxmox", "100", "post-stop"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.stdout == "passthru: pve-100: released pci:0000:19:00.0, pci:0000:19:00.1\n"


def test_hook_entry_points_refuse_bad_calls_in_one_line(host, capsys):
    from passthru.cli import main

    s, _ = host
    for argv in (["hooks", "libvirt", "vm1"], ["hooks", "libvirt", "vm1", "prepare", "begin", "-"],
                 ["hooks", "proxmox", "100", "resume"], ["hooks", "install"],
                 ["hooks", "install", "--proxmox", "--snippets", "snippets"]):
        assert main(["--root", s.host.base, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("passthru: ") and err.count("\n") == 1, (argv, err)
