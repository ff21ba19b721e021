"""`passthru capture` snapshots what discovery reads; `--root` replays it to the same answers, and nothing private
or dangerous is taken."""

from __future__ import annotations

import json
import tarfile

import pytest

from passthru.capture import capture_host
from passthru.cli import main as cli_main
from passthru.host.root import HostRoot


def _json(capsys, *argv: str) -> dict:
    assert cli_main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("fixture", ["gpu_server", "broken_desktop", "bare_host"])
def test_capture_replays_to_the_same_json(request, capsys, tmp_path, fixture):
    root = request.getfixturevalue(fixture)
    (root / "etc/passthru").mkdir(parents=True, exist_ok=True)
    (root / "etc/passthru/token").write_text("s3cret-token\n")
    (root / "etc/shadow").write_text("root:$6$hash:19000:0:99999:7:::\n")
    out = tmp_path / "cap.tar.gz"
    assert cli_main(["--root", str(root), "capture", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    replay = tmp_path / "replay"
    with tarfile.open(out) as t:
        names = set(t.getnames())
        t.extractall(replay, filter="tar")
    for cmd in (["devices", "--json"], ["groups", "--json"], ["usb", "--json"], ["serial", "--json"]):
        live = _json(capsys, "--root", str(root), *cmd)
        again = _json(capsys, "--root", str(replay), *cmd)
        live.pop("root", None), again.pop("root", None)
        assert again == live, cmd
    assert "passthru-capture.json" in names and "proc/cmdline" in names
    assert not any(n.endswith(("etc/passthru/token", "etc/shadow")) for n in names)
    assert not any(n.rsplit("/", 1)[-1].startswith("resource") and n[-1].isdigit() for n in names)
    assert not any(n.endswith(("/rom", "/remove", "/unbind", "/bind")) for n in names)


def test_capture_keeps_symlinks_as_links(tmp_path, gpu_server):
    out = tmp_path / "c.tar.gz"
    stats = capture_host(HostRoot(gpu_server), str(out))
    assert stats.links > 100 and stats.files > 500
    with tarfile.open(out) as t:
        m = t.getmember("sys/bus/pci/devices/0000:3b:00.2/physfn"
                        if "sys/bus/pci/devices/0000:3b:00.2/physfn" in t.getnames() else
                        next(n for n in t.getnames() if n.endswith("0000:3b:00.2/physfn")))
        assert m.issym() and m.linkname == "../0000:3b:00.0"


def test_failed_capture_leaves_no_file(tmp_path, gpu_server):
    out = tmp_path / "missing-dir" / "c.tar.gz"
    with pytest.raises(OSError):
        capture_host(HostRoot(gpu_server), str(out))
    assert not out.exists() and not (tmp_path / "missing-dir" / "c.tar.gz.part").exists()


def test_capture_to_an_unwritable_place_is_one_line_exit_2(capsys, tmp_path, gpu_server):
    rc = cli_main(["--root", str(gpu_server), "capture", "-o", str(tmp_path / "no" / "c.tar.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("passthru: cannot write") and err.count("\n") == 1


def test_capture_keeps_only_iommu_lines_of_the_kernel_log(tmp_path, capsys, gpu_server):
    (gpu_server / "dev").mkdir(exist_ok=True)
    (gpu_server / "dev/kmsg").write_text("6,1,1,-;Linux version 6.8.0\n6,2,2,-;DMAR: IOMMU enabled\n"
                                         "6,3,3,-;DMAR-IR: Enabled IRQ remapping in x2apic mode\n"
                                         "6,4,4,-;usb 1-1: secret-ish line\n")
    out = tmp_path / "c.tar.gz"
    capture_host(HostRoot(gpu_server), str(out))
    with tarfile.open(out) as t:
        kmsg = t.extractfile("dev/kmsg").read().decode()
        t.extractall(tmp_path / "r", filter="tar")
    assert kmsg == "DMAR: IOMMU enabled\nDMAR-IR: Enabled IRQ remapping in x2apic mode\n"
    assert cli_main(["--root", str(tmp_path / "r"), "doctor", "--json"]) in (0, 1)
    doc = json.loads(capsys.readouterr().out)
    irq = next(c for c in doc["checks"] if c["id"] == "iommu.irq_remapping")
    assert irq["status"] == "pass" and "DMAR-IR" in irq["evidence"]


def test_capture_keeps_what_the_takeover_guards_read(tmp_path):
    """A capture of a busy host replays to the same host uses: mounts through LVM on MD, swap on a mapper device,
    a bond under a bridge with the default route, the serial console, VFs in use."""
    import tarfile

    import sysfs_fixtures as fx
    from passthru.host.usage import host_uses
    from passthru.host.pci import scan_pci

    src = HostRoot(fx.busy_host(tmp_path / "busy"))
    out = tmp_path / "busy.tar.gz"
    capture_host(src, str(out))
    with tarfile.open(out) as t:
        t.extractall(tmp_path / "replay", filter="tar")
    replay = HostRoot(tmp_path / "replay")
    addrs = [f.address for f in scan_pci(src)]
    want = {a: [(u.what, u.detail) for u in us] for a, us in host_uses(src, addrs).items()}
    got = {a: [(u.what, u.detail) for u in us] for a, us in host_uses(replay, addrs).items()}
    assert sum(len(v) for v in want.values()) >= 8
    assert got == want
