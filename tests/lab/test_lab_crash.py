"""kill -9 at every step, on a real kernel: `bind --group` of the GPU and its HDMI audio and `restore`, each killed
at every failpoint it passes (every journal step and every sysfs write), and `assign`, `release --restore` and
`release` at each of their own journal steps (tests/lab/crash_matrix.py); then `passthru reconcile`. After each: the IOMMU group is whole (both functions
on vfio-pci and recorded, or both back on their own drivers with no override), the inventory agrees with the
drivers (a held device is on vfio-pci; nothing pending; no journal left), and where the group ends on vfio-pci a
nested QEMU opens both functions."""

from __future__ import annotations

import pytest

from .guest import GuestRun, in_guest

pytestmark = pytest.mark.lab


@in_guest(r"""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/class)" = 0x038000 ] && gpu=${d##*/}
    [ "$(cat $d/class)" = 0x040300 ] && audio=${d##*/}
done
python "$PASSTHRU_LAB_REPO/tests/lab/crash_matrix.py" $gpu $audio matrix.json
""", boot="crash", timeout=900)
def test_kill_9_at_every_step_then_reconcile(guest: GuestRun):
    guest.check()
    doc = guest.json("matrix.json")
    native = doc["native"]
    gpu, audio = list(native)
    assert native[gpu] and native[audio] and native[audio] != "vfio-pci"
    summary = {}
    for name in ("bind", "restore", "assign", "release-restore", "release"):
        m = doc[name]
        assert len(m["points"]) >= 3 and m["rounds"], (name, m["points"])
        own = [p for p in m["points"] if not p.startswith(("kernel.", "vfio."))]
        assert [r["point"] for r in m["rounds"]] == (m["points"] if name in ("bind", "restore") else own), name
        sides = []
        for r in m["rounds"]:
            where = (name, r["n"], r["point"])
            assert r["killed"], (where, r)
            assert r["reconcile_rc"] == 0 and r["reconcile"]["ok"], (where, r["reconcile"])
            assert r.get("second_reconcile", "unchanged") == "unchanged", (where, r["second_reconcile"])
            drivers = r["drivers"]
            if drivers[gpu] == "vfio-pci":
                side = "vfio"
                assert drivers[audio] == "vfio-pci", (where, "half-moved group", drivers)
                assert r["held"] == {gpu: "bound", audio: "bound"} and r["dev_vfio"], (where, r["held"])
            else:
                side = "host"
                assert drivers == native, (where, "half-moved group", drivers)
                assert r["overrides"] == {gpu: "(null)", audio: "(null)"} and r["held"] == {}, (where, r)
            for dev, (vm, st) in r["assigned"].items():  # the inventory agrees with the drivers
                assert st == "reserved" and drivers[dev[4:]] == "vfio-pci", (where, dev, vm, st, drivers)
            assert r["journal"] == [], (where, r["journal"])  # no operation left unsettled
            if "nested_qemu" in r:
                assert {"pt0", "pt1"} <= set(r["nested_qemu"]), (where, r["nested_qemu"])
            sides.append(side)
        assigned = [bool(r["assigned"]) for r in m["rounds"]]
        summary[name] = (len(m["rounds"]), sides.count("host"), sides.count("vfio"))
        if name == "bind":  # killed before the whole group is bound: undone; after: finished
            assert sides[0] == "host" and sides[-1] == "vfio", sides
            assert any("nested_qemu" in r for r in m["rounds"])
        elif name == "restore" or name == "release-restore":  # always finished
            assert set(sides) == {"host"}, sides
        elif name == "release":
            assert set(sides) == {"vfio"} and not any(assigned), (sides, assigned)
        elif name == "assign":  # undone unless its claims were final; then kept whole, on vfio-pci
            assert not assigned[0] and assigned[-1] and any("nested_qemu" in r for r in m["rounds"])
            assert all(s == "vfio" for s, a in zip(sides, assigned) if a), (sides, assigned)
        if name.startswith("release"):
            assert not any(assigned), assigned
    final = doc["final"]
    assert final["drivers"] == native and final["held"] == {} and final["assigned"] == {}
    assert doc["status"]["held"] == [] and doc["status"]["operations"] == []
    print(f"kill matrix (rounds, ended on host, ended on vfio-pci): {summary}; {doc['seconds']} s in the guest")
