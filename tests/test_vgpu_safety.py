"""A GPU hosting live vGPUs is never taken whole (issue #13): on the gpu_server fixture, the T4 with its live mdev and
the A100 once a VF has a vGPU type set are refused by `bind` (also as a group mate, also with --dry-run), by `assign`
by address (also --no-bind) before anything is claimed, never picked by `assign gpu`, and shown by `doctor`; every
refusal names the vGPUs and the `passthru vgpu remove` that frees the GPU."""

from __future__ import annotations

import json

import pytest

import sysfs_fixtures as fx
from fake_kernel import FakeKernel
from passthru.cli import main as cli_main
from passthru.service.session import Session
from passthru.config import Paths
from passthru.errors import UsageError
from passthru.host.mdev import MDEV, SRIOV, hosted_vgpus
from passthru.host.root import HostRoot
from passthru.host.usage import host_uses
from passthru.service.assign import assign, open_store
from passthru.vfio import RefusedError, bind, plan_bind

T4, A100, VF0, VF1, GTX, GTX_AUDIO = ("0000:af:00.0", "0000:d8:00.0", "0000:d8:00.4", "0000:d8:00.5", "0000:18:00.0",
                                      "0000:18:00.1")
U = fx.T4_MDEV_UUID
U2 = "0b8a2f5e-3c1d-4e2f-9a7b-6c5d4e3f2a10"


@pytest.fixture
def server(tmp_path):
    """gpu_server with the A100's VF1 given vGPU type 559, and a GTX 1080 Ti (with its audio in one IOMMU group)
    that NVIDIA's vGPU manager registered as an mdev parent with one live vGPU."""
    b = fx.make_gpu_server(tmp_path / "gs")
    b.nvidia_vgpu(VF1, ["558 : NVIDIA A100-4C", "559 : NVIDIA A100-5C"], current="559")
    b.mdev_types(GTX, [dict(id="nvidia-63", name="GRID P40-1Q", available_instances=4)])
    b.mdev(GTX, U2, "nvidia-63")
    b.build()
    return b.root


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_host_fact_names_each_vgpu_with_its_type(server):
    h = HostRoot(server)
    [m] = hosted_vgpus(h, T4)
    assert (m.id, m.mode, m.type_id, m.type_name, m.parent) == (U, MDEV, "nvidia-224", "GRID T4-1Q", T4)
    [v] = hosted_vgpus(h, A100)
    assert (v.id, v.mode, v.type_id, v.type_name) == (VF1, SRIOV, "559", "NVIDIA A100-5C")
    assert v.label() == f"VF {VF1} (vGPU type 559, NVIDIA A100-5C)"
    assert hosted_vgpus(h, "0000:86:00.0") == [] and hosted_vgpus(h, VF0) == [] and hosted_vgpus(h, "0000:99:00.0") == []
    uses = host_uses(h, [T4, A100])
    [t4] = uses[T4]
    assert (t4.what, t4.override) == ("vgpus", None) and U in t4.detail and f"`passthru vgpu remove {U}`" in t4.detail
    # the typed VF is named as a vGPU, not again as "a VF bound to nvidia"; the untyped VF0 still is
    assert [u.what for u in uses[A100]] == ["vgpus", "vfs_in_use"] and VF0 in uses[A100][1].detail


def test_bind_and_its_dry_run_refuse_the_same_and_change_nothing(server, capsys):
    h = HostRoot(server)
    paths = Paths.for_root(h)
    for argv in (["bind", T4], ["bind", T4, "--dry-run"], ["bind", T4, "--group", "--dry-run", "--allow-boot-vga",
                                                           "--force-netdev"]):
        rc, out, err = cli(capsys, "--root", str(server), *argv)
        assert rc == 2 and out == "" and err.count("\n") == 1, (argv, err)
        assert f"refusing to take over {T4}: hosts live vGPUs" in err and f"mdev {U} (nvidia-224, GRID T4-1Q)" in err
        assert f"`passthru vgpu remove {U}`" in err
    k = FakeKernel(h)
    with pytest.raises(RefusedError):
        bind(h, paths, [T4], group=True, kernel=k)
    assert k.writes == [] and not (server / "var/lib/passthru").exists()
    rc, out, _ = cli(capsys, "--root", str(server), "bind", A100, "--dry-run", "--json")
    doc = json.loads(out)
    assert rc == 2 and doc["refusals"][0]["override"] is None
    assert f"VF {VF1} (vGPU type 559, NVIDIA A100-5C)" in doc["refusals"][0]["reason"]
    assert f"`passthru vgpu remove {VF1}`" in doc["refusals"][0]["reason"]


def test_a_group_mate_hosting_vgpus_refuses_the_group(server, capsys):
    h = HostRoot(server)
    with pytest.raises(RefusedError) as e:
        plan_bind(h, [GTX_AUDIO], group=True)
    [r] = [r for r in e.value.refusals if r.address == GTX]
    assert r.via == GTX_AUDIO and U2 in r.reason
    rc, _, err = cli(capsys, "--root", str(server), "bind", GTX_AUDIO, "--group", "--dry-run")
    assert rc == 2 and f"{GTX} (IOMMU group mate of {GTX_AUDIO}): hosts live vGPUs" in err and U2 in err


def test_assign_by_address_is_refused_before_any_claim(server, capsys):
    for extra in ([], ["--no-bind"], ["--dry-run"]):
        rc, out, err = cli(capsys, "--root", str(server), "assign", "vm1", T4, *extra)
        assert rc == 2 and out == "" and err.count("\n") == 1 and U in err and "passthru vgpu remove" in err, extra
    rc, _, err = cli(capsys, "--root", str(server), "assign", "vm1", GTX_AUDIO, "--no-bind")  # the GPU comes along
    assert rc == 2 and U2 in err
    s = Session(str(server))
    assert open_store(s).assignments() == []


def test_assign_by_kind_never_picks_a_vgpu_host_and_says_why_when_nothing_is_left(server):
    s = Session(str(server))
    got = [assign(s, f"vm{i}", ["gpu"], bind=False).assignments[0].device for i in range(3)]
    assert got == ["pci:0000:19:00.0", "pci:0000:86:00.0", "pci:0000:87:00.0"]  # not 18:00.0, not the T4
    with pytest.raises(UsageError) as e:
        assign(s, "vm9", ["gpu"], bind=False)
    msg = str(e.value)
    assert msg.startswith("no free device of kind 'gpu'") and "skipped because the host uses them" in msg
    assert f"{T4} (hosts live vGPUs" in msg and U in msg and f"{A100} (hosts live vGPUs" in msg
    assert f"{GTX} (hosts live vGPUs" in msg and "0000:02:00.0 (" in msg  # and the boot VGA, each with its reason


def test_doctor_shows_the_vgpus_and_the_fix(server, capsys):
    rc, out, _ = cli(capsys, "--root", str(server), "doctor", T4, "--json")
    checks = {c["id"]: c for c in json.loads(out)["checks"] if c["device"] == T4}
    use = checks["device.host_use"]
    assert rc == 1 and use["status"] == "fail" and U in use["evidence"] and "passthru vgpu remove" in use["fix"]
    assert checks["device.driver"]["fix"].endswith("once the host no longer uses it (device.host_use)")
    rc, out, _ = cli(capsys, "--root", str(server), "doctor", "0000:86:00.0", "--json")
    checks = {c["id"]: c for c in json.loads(out)["checks"] if c["device"] == "0000:86:00.0"}
    assert checks["device.host_use"]["status"] == "pass" and "vGPUs" in checks["device.host_use"]["evidence"]
