"""A kill -9 at every step of a group bind or restore, then reconcile: the IOMMU group ends whole (every function on
vfio-pci and recorded, or every function back on its own driver with no override and no record), never split.

The steps are the failpoints the operation passes (passthru/failpoints.py: each journal step and each kernel write);
a handler raising :class:`Crash` stands in for SIGKILL (no except-clause in passthru sees it). The same matrix runs
on a real kernel in tests/lab/test_lab_crash.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sysfs_fixtures as fx
import crash_points as cp
from fake_kernel import FakeKernel
from passthru.config import Paths
from passthru.host.root import HostRoot
from passthru.journal import Journal
from passthru.vfio import BOUND, Holdings, bind, reconcile, restore

GPU, AUDIO = "0000:86:00.0", "0000:86:00.1"  # gpu_server: nouveau + snd_hda_intel, IOMMU group 38
GROUP = [GPU, AUDIO]


def _host(tmp_path: Path) -> tuple[HostRoot, Paths, FakeKernel]:
    h = HostRoot(Path(fx.gpu_server(tmp_path / "gs")))
    return h, Paths.for_root(h), FakeKernel(h)


def _side(h: HostRoot, paths: Paths, k: FakeKernel) -> str:
    """'vfio' or 'host' when the whole group is on one side; AssertionError naming the split otherwise."""
    held = {r.address: r for r in Holdings(paths).holdings()}
    sides = {}
    for a in GROUP:
        drv = k.driver_of(a)
        if drv == "vfio-pci":
            assert a in held and held[a].phase == BOUND, (a, drv, held.get(a))
            sides[a] = "vfio"
        else:
            assert drv == k.native[a] and k.override_of(a) is None and a not in held, (a, drv, k.override_of(a))
            sides[a] = "host"
    assert len(set(sides.values())) == 1, f"split group: {sides}"
    assert Journal(str(Path(paths.state_dir, "journal"))).entries() == []
    return next(iter(sides.values()))


def test_every_point_of_a_group_bind(tmp_path):
    h, paths, k = _host(tmp_path / "trace")
    pts = cp.points(lambda: bind(h, paths, [GPU], group=True, kernel=k))
    assert pts[0] == "vfio.bind.intent" and pts.count("kernel.driver_override") == 2, pts
    sides = []
    for n in range(1, len(pts) + 1):
        h, paths, k = _host(tmp_path / f"kill{n}")
        where = cp.crash_at(n, lambda: bind(h, paths, [GPU], group=True, kernel=k))
        out = reconcile(h, paths, kernel=k)
        assert out.error is None, (n, where, out.to_json())
        side = _side(h, paths, k)
        sides.append(side)
        if n > 1:  # something was written before the kill: reconcile says what it repaired
            assert out.changed, (n, where, out.to_json())
        again = reconcile(h, paths, kernel=k)
        assert not again.changed and again.error is None
        bind(h, paths, [GPU], group=True, kernel=k)  # and the host is usable from there
        assert _side(h, paths, k) == "vfio"
    # a kill before the last member is bound undoes the whole group; after it, reconcile finishes the bind
    assert sides[0] == "host" and sides[-1] == "vfio" and sides == sorted(sides, key=["host", "vfio"].index)


def test_every_point_of_a_group_restore(tmp_path):
    def bound(d: Path):
        h, paths, k = _host(d)
        bind(h, paths, [GPU], group=True, kernel=k)
        return h, paths, k

    h, paths, k = bound(tmp_path / "trace")
    pts = cp.points(lambda: restore(h, paths, [GPU], kernel=k))
    assert pts[0] == "vfio.restore.intent" and "vfio.restore.dropped" in pts, pts
    for n in range(1, len(pts) + 1):
        h, paths, k = bound(tmp_path / f"kill{n}")
        where = cp.crash_at(n, lambda: restore(h, paths, [GPU], kernel=k))
        out = reconcile(h, paths, kernel=k)
        assert out.error is None, (n, where, out.to_json())
        assert _side(h, paths, k) == "host", (n, where)  # an interrupted restore is always finished


def test_a_split_group_from_outside_is_reported_and_fails(tmp_path):
    """Someone rebinds the audio function to its driver by hand: reconcile cannot guess the intent, says how to
    make the group whole either way, and fails."""
    h, paths, k = _host(tmp_path)
    bind(h, paths, [GPU], group=True, kernel=k)
    k.set_override(AUDIO, None)
    k.unbind(AUDIO)
    k.probe(AUDIO)
    assert k.driver_of(AUDIO) == "snd_hda_intel"
    out = reconcile(h, paths, kernel=k)
    assert out.error and f"IOMMU group 38 is split: {GPU} on vfio-pci, {AUDIO} on snd_hda_intel" in out.error
    assert f"passthru restore {GPU}" in out.error and f"passthru bind {GPU} --group" in out.error
    assert [d.status for d in out.devices if d.address == AUDIO] == ["dropped", "split"]
    restore(h, paths, [GPU], kernel=k)
    assert reconcile(h, paths, kernel=k).error is None


def test_a_running_operation_is_left_alone(tmp_path):
    """An intent whose process still runs (its lock held) is not touched by reconcile; once the process is gone
    it is settled."""
    h, paths, k = _host(tmp_path)
    j = Holdings(paths).journal
    op = j.begin("vfio.bind", members=[{"address": GPU, "vendor_id": "10de", "device_id": "1b06",
                                         "iommu_group": 38, "prior_driver": "nouveau", "prior_override": None}])
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from passthru.journal import Journal; "
             "print(len(Journal(sys.argv[2]).orphans()), len(Journal(sys.argv[2]).live()))")
    src = str(Path(__file__).parent.parent / "src")
    r = subprocess.run([sys.executable, "-c", probe, src, j.dir], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["0", "1"], r.stderr
    op.release()  # the "process" dies
    r = subprocess.run([sys.executable, "-c", probe, src, j.dir], capture_output=True, text=True, timeout=60)
    assert r.stdout.split()[0] == "1", r.stderr
    out = reconcile(h, paths, kernel=k)
    assert out.error is None and j.entries() == [] and k.driver_of(GPU) == "nouveau"
