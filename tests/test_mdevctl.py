"""mdevctl's definitions (/etc/mdevctl.d/<parent>/<uuid>, issue #13) next to passthru's: read through the host root,
listed by `vgpu list` (live or not), never contradicted by `vgpu create --persist`, left to mdevctl by
`vgpu start-persisted`, named by `vgpu remove`. The gpu_server's T4 vGPU is defined by mdevctl; the mtty-like parent
and the FakeMdevKernel come from test_vgpu.py."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

import sysfs_fixtures as fx
from passthru.capture import capture_host
from passthru.errors import UsageError
from passthru.host.mdevctl import find_definition, read_definitions
from passthru.host.root import HostRoot
from passthru.kinds.vgpu import MdevStore, list_vgpus, start_persisted
from passthru.service.vgpu import create, remove
from test_vgpu import T4, U1, U2, _host, live, run

T4_UUID = fx.T4_MDEV_UUID
U3 = "2dac4b70-5e3f-4a41-9c9d-8e7f60514c32"


@pytest.fixture
def host(tmp_path):
    def more(b):
        b.mdevctl("mtty", U2, "mtty-1", start="manual")  # defined, not live
        b.mdevctl("mtty", U3, "mtty-2")  # the one a `vgpu create --persist` would contradict
        (b.root / "etc/mdevctl.d/scripts.d/callouts").mkdir(parents=True)  # mdevctl's own, not a parent
        (b.root / "etc/mdevctl.d/mtty/README").write_text("not a definition\n")
    return _host(tmp_path, more)


def test_definitions_are_read_through_the_root(host):
    h, _, _ = host
    defs = {(d.parent, d.uuid): d for d in read_definitions(h)}
    assert set(defs) == {(T4, T4_UUID), ("mtty", U2), ("mtty", U3)}
    d = defs[("mtty", U2)]
    assert (d.mdev_type, d.start, d.path, d.problem) == ("mtty-1", "manual", f"/etc/mdevctl.d/mtty/{U2}", None)
    bad = h.path(f"/etc/mdevctl.d/mtty/{U1}")
    with open(bad, "w") as f:
        f.write("{not json")
    assert find_definition(h, U1.upper()).problem == "not an mdevctl JSON definition"
    assert read_definitions(HostRoot(h.base + "/nowhere")) == []


def test_list_shows_mdevctl_definitions_live_or_not(capsys, host):
    h, paths, _ = host
    rows = {r["id"]: r for r in list_vgpus(h, paths)}
    t4, u2 = rows[T4_UUID], rows[U2]
    assert t4["live"] and t4["mdevctl"] == {"path": f"/etc/mdevctl.d/{T4}/{T4_UUID}", "parent": T4,
                                            "mdev_type": "nvidia-224", "start": "auto", "problem": None}
    assert (u2["live"], u2["persisted"], u2["mode"], u2["parent"], u2["mdev_type"], u2["start"]) == (
        False, False, "mdev", "mtty", "mtty-1", "manual")
    assert u2["type_name"] == "Single port serial" and u2["identity"] == f"mdev:{U2}"
    rc, out, _ = run(capsys, "--root", h.base, "vgpu", "list")
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rc == 0 and "live; defined by mdevctl (at boot)" in lines[T4_UUID]
    assert "not live; defined by mdevctl (on `mdevctl start`)" in lines[U2]


def test_persist_never_contradicts_mdevctl(capsys, host):
    h, paths, k = host
    for extra in ([], ["--dry-run"]):
        rc, out, err = run(capsys, "--root", h.base, "vgpu", "create", "mtty", "mtty-1", "--uuid", U3, "--persist",
                           *extra)
        assert rc == 2 and out == "" and err.count("\n") == 1
        assert f"mdevctl defines it as mtty-2 on mtty (/etc/mdevctl.d/mtty/{U3}), not mtty-1 on mtty" in err
    with pytest.raises(UsageError, match="mdevctl defines it"):
        create(h, paths, "mtty", "mtty-1", uuid=U3, persist=True, kernel=k)
    assert k.writes == [] and not live(h, U3) and MdevStore(paths).definitions() == []
    assert MdevStore(paths).records() == []
    # the same type on the same parent: made, and persisting it stays mdevctl's job (no second definition)
    r = create(h, paths, "mtty", "mtty-2", uuid=U3, persist=True, kernel=k)
    assert (r.status, r.persisted) == ("created", False) and "mdevctl persists it" in r.note
    assert live(h, U3) and MdevStore(paths).definitions() == []
    # without --persist a different type is made (a live instance is not a definition), with a note
    r = create(h, paths, "mtty", "mtty-2", uuid=U2, kernel=k)
    assert r.status == "created" and "mdevctl defines it as mtty-1 on mtty" in r.note and "differ" in r.note


def test_start_persisted_leaves_mdevctl_uuids_to_mdevctl(host):
    h, paths, k = host
    store = MdevStore(paths)
    store.define(U2, "mdev", "mtty", "mtty-1")  # passthru's definition of a UUID mdevctl also defines
    store.define(U1, "mdev", "mtty", "mtty-2")  # and one of its own
    out = start_persisted(h, paths, kernel=k)
    by = {r.id: r for r in out.items}
    assert by[U2].status == "left to mdevctl" and f"/etc/mdevctl.d/mtty/{U2}" in by[U2].note
    assert by[U1].status == "created" and live(h, U1) and not live(h, U2) and out.error is None
    assert [w for w in k.writes if U2 in w[1]] == []


def test_remove_names_what_mdevctl_keeps(capsys, host):
    h, paths, k = host
    rc, out, err = run(capsys, "--root", h.base, "vgpu", "remove", U2)
    assert rc == 2 and f"only mdevctl defines it (/etc/mdevctl.d/mtty/{U2})" in err and "mdevctl undefine" in err
    create(h, paths, "mtty", "mtty-2", uuid=U3, kernel=k)
    r = remove(h, paths, U3, kernel=k)
    assert r.status == "removed" and not live(h, U3)
    assert f"mdevctl still defines it (/etc/mdevctl.d/mtty/{U3}, start auto)" in r.note
    assert os.path.exists(h.path(f"/etc/mdevctl.d/mtty/{U3}"))  # passthru never writes mdevctl's files


def test_a_capture_keeps_mdevctl_definitions(tmp_path, capsys):
    src = fx.gpu_server(tmp_path / "gs")
    out = tmp_path / "c.tar.gz"
    capture_host(HostRoot(src), str(out))
    with tarfile.open(out) as t:
        assert f"etc/mdevctl.d/{T4}/{T4_UUID}" in t.getnames()
        t.extractall(tmp_path / "r", filter="tar")
    rc, text, _ = run(capsys, "--root", str(tmp_path / "r"), "vgpu", "list", "--json")
    [row] = json.loads(text)["vgpus"]
    assert rc == 0 and row["id"] == T4_UUID and row["mdevctl"]["start"] == "auto"
