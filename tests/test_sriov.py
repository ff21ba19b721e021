"""SR-IOV: naming PFs (PCI, interface, devlink handle, netdevsim), VF count through 0 with refusals and records,
VF settings over netlink (checked at pyroute2's IPRoute boundary: the exact vf dicts, encoded and decoded by
pyroute2 itself as the kernel would receive them), prior settings put back, switchdev/representors via a devlink
stand-in, Open vSwitch offload via an ovs-vsctl stand-in, doctor findings, the nic kind's assignment hooks, and one
real netlink round trip on this machine (a veth in a private network namespace)."""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import subprocess
import uuid

import pytest
from pyroute2 import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.requests.link import LinkIPRouteFilter

import sysfs_fixtures
from passthru.cli import main
from passthru.config import Paths
from passthru.errors import HostError, NotFoundError, UsageError
from passthru.host.root import HostRoot
from passthru.kinds import kind_for
from passthru.kinds.nic_vf import (Devlink, NicKind, Ovs, ToolMissing, VfConfig, VfNetlink, list_vfs,
                                   normalize_settings, offload_ovs, parse_vfinfo, reset_vf, set_vf, sriov_findings,
                                   switchdev, vf_messages, vf_of)
from passthru.host.sriov import read_pf, representors, resolve_pf, sriov_pfs
from passthru.kinds.nic_vf import SriovStore
from passthru.kinds.nic_vf.vfcount import count_vfs, vfs_in_use
from passthru.writers.sriov import SriovKernel
from sysfs_builder import SysfsBuilder, _attrs, _link

PF0, PF1 = "0000:3b:00.0", "0000:3b:00.1"
IF0 = "enp59s0f0np0"


# -- fixtures ----------------------------------------------------------------------------------------------------
@pytest.fixture
def gs(tmp_path):
    """The GPU server's builder (ConnectX-5 PFs with 8 VFs each; VFs 4-7 of PF0 on vfio-pci)."""
    return sysfs_fixtures.make_gpu_server(tmp_path / "gs")


def _paths(b) -> Paths:
    return Paths(config_dir=str(b.root / "etc/passthru"), state_dir=str(b.root / "var/lib/passthru"))


def idle_host(root) -> SysfsBuilder:
    """An E810 PF (totalvfs 8) with 2 VFs on iavf, nothing using them; and a netdevsim-style device."""
    b = SysfsBuilder(root, auto_groups=True)
    b.iommu("intel")
    b.proc(mounts=[("/dev/sda1", "/", "ext4")])
    b.bridge("0000:00:01.0")
    b.pci("0000:01:00.0", 0x8086, 0x159B, 0x020000, parent="0000:00:01.0", driver="ice", acs=True,
          bars=[("mem64pf", 32 << 20)])
    b.netdev("0000:01:00.0", "ens1f0", "40:a6:b7:00:00:01", phys_port_name="p0", phys_switch_id="40a6b7000001")
    b.sriov("0000:01:00.0", 8, 2, 0x1889, vf_driver="iavf", offset=0x10)
    b.build()
    netdevsim(b, 1)
    return b


def netdevsim(b: SysfsBuilder, n: int, numvfs: int = 0) -> str:
    """/sys/devices/netdevsim<n> on the netdevsim bus (not PCI), with sriov_numvfs and its port eth<n-1> (p0)."""
    dev = f"{b.sys}/devices/netdevsim{n}"
    os.makedirs(dev + "/net", exist_ok=True)
    os.makedirs(f"{b.sys}/bus/netdevsim/devices", exist_ok=True)
    os.makedirs(f"{b.sys}/bus/netdevsim/drivers/netdevsim", exist_ok=True)
    _attrs(dev, {"sriov_numvfs": numvfs, "new_port": "", "del_port": "", "uevent": ""})
    _link(dev + "/subsystem", f"{b.sys}/bus/netdevsim")
    _link(dev + "/driver", f"{b.sys}/bus/netdevsim/drivers/netdevsim")
    _link(f"{b.sys}/bus/netdevsim/devices/netdevsim{n}", dev)
    b._netdev(dev + "/net", f"eth{n - 1}", f"0a:00:00:00:0{n}:00", "up", "p0", "5a1b2c3d", 1, dev)
    return dev


@pytest.fixture
def idle(tmp_path):
    return idle_host(tmp_path / "idle")


class FakeSriovKernel(SriovKernel):
    """The kernel's SR-IOV core on a builder tree: sriov_numvfs N->M needs 0 between (EBUSY), at most totalvfs
    (netdevsim: 4, ENOMEM); new PCI VFs get the PF's VF driver only with sriov_drivers_autoprobe 1."""

    def __init__(self, b: SysfsBuilder, vf_driver: dict[str, str] | None = None) -> None:
        super().__init__(HostRoot(b.root), wait_seconds=0.2, poll=0.01)
        self.b = b
        self.vf_driver = vf_driver or {}
        self.writes: list[tuple[str, str]] = []
        self.faults: dict[tuple[str, str], int] = {}

    def require_live(self) -> None:
        return None

    def write(self, path: str, data: str) -> None:
        rel = path[len(self.h.sys):]
        dev, attr = os.path.dirname(path), os.path.basename(path)
        if (attr, data) in self.faults:
            raise OSError(self.faults[(attr, data)], os.strerror(self.faults[(attr, data)]))
        self.writes.append((rel, data))
        name = os.path.basename(dev)
        if attr == "sriov_drivers_autoprobe":
            _attrs(os.path.realpath(dev), {attr: int(data)})
            return
        assert attr == "sriov_numvfs", f"passthru wrote {data!r} to {rel}"
        n, cur = int(data), self.h.read_int(path)
        if cur and n and cur != n:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        if name.startswith("netdevsim"):
            if n > 4:
                raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
            _attrs(os.path.realpath(dev), {attr: n})
            return
        p = self.b.fn(name)
        if n > p.sriov["total"]:
            raise OSError(errno.ERANGE, os.strerror(errno.ERANGE))
        auto = self.h.read_int(dev + "/sriov_drivers_autoprobe")
        if n == 0:
            for vf in [a for a, f in self.b.functions.items() if f.physfn == name]:
                self.b.remove_pci(vf)
            _attrs(p.path, {attr: 0})
        elif n != cur:
            s = p.sriov
            self.b.sriov(name, s["total"], n, s["vf_device"], offset=s["offset"], stride=s["stride"],
                         vf_driver=self.vf_driver.get(name) if auto else None)
            _attrs(p.path, {"sriov_drivers_autoprobe": auto})


def _audit(b) -> list[dict]:
    path = b.root / "var/lib/passthru/audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- naming PFs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [PF0, "3b:00.0", IF0, f"pci/{PF0}", "pci/3b:00.0"])
def test_a_pf_by_address_interface_or_devlink_handle(gs, text):
    pf = resolve_pf(HostRoot(gs.root), text)
    assert (pf.bus, pf.name, pf.netdev, pf.devlink, pf.address) == ("pci", PF0, IF0, f"pci/{PF0}", PF0)


def test_naming_what_is_not_a_pf(gs):
    h = HostRoot(gs.root)
    with pytest.raises(UsageError, match=f"0000:3b:00.2 is a VF of PF {PF0}"):
        resolve_pf(h, "0000:3b:00.2")
    with pytest.raises(UsageError, match=f"enp59s0f0v0 is a VF of PF {PF0}: name the PF"):
        resolve_pf(h, "enp59s0f0v0")
    with pytest.raises(UsageError, match=r"5e:00.0 \(pci/0000:5e:00.0\) is not an SR-IOV PF"):
        resolve_pf(h, "5e:00.0")
    with pytest.raises(UsageError, match="lo is a software interface"):
        resolve_pf(h, "lo")
    with pytest.raises(NotFoundError, match="no PF 'eth9'.*devlink handle"):
        resolve_pf(h, "eth9")
    with pytest.raises(NotFoundError, match="no device pci/0000:3b:07.0"):
        resolve_pf(h, "pci/0000:3b:07.0")


def test_read_pf_gives_vfs_in_virtfn_order_with_drivers(gs):
    h = HostRoot(gs.root)
    st = read_pf(h, resolve_pf(h, PF1))
    assert (st.driver, st.numvfs, st.totalvfs, st.autoprobe) == ("mlx5_core", 8, 8, True)
    assert [v.address for v in st.vfs][:3] == ["0000:3b:01.2", "0000:3b:01.3", "0000:3b:01.4"]
    assert [v.driver for v in st.vfs] == ["mlx5_core"] * 2 + [None] + ["vfio-pci"] * 5
    assert st.vfs[0].netdevs == ("enp59s0f1v0",)
    assert [p.name for p in sriov_pfs(h)] == [PF0, PF1, "0000:d8:00.0"]


def test_representors_by_phys_port_name_and_the_pf_keeps_its_own_interface(gs):
    for n in range(3):
        gs.netdev(PF0, f"enp59s0f0r{n}", f"6e:00:00:00:00:0{n}", phys_port_name=f"pf0vf{n}",
                  phys_switch_id="98039b0300a1b2c3")
    h = HostRoot(gs.root)
    pf = resolve_pf(h, PF0)
    assert pf.netdev == IF0  # never a representor
    assert representors(h, pf) == {0: "enp59s0f0r0", 1: "enp59s0f0r1", 2: "enp59s0f0r2"}
    assert resolve_pf(h, "enp59s0f0r1") == pf  # a representor names its PF
    assert representors(h, resolve_pf(h, PF1)) == {}


def test_netdevsim_pf_is_not_pci(idle):
    h = HostRoot(idle.root)
    for text in ("netdevsim/netdevsim1", "netdevsim1", "eth0"):
        pf = resolve_pf(h, text)
        assert (pf.bus, pf.name, pf.netdev, pf.devlink, pf.address, pf.key) == (
            "netdevsim", "netdevsim1", "eth0", "netdevsim/netdevsim1", None, "netdevsim-netdevsim1")
    _attrs(f"{idle.sys}/devices/netdevsim1", {"sriov_numvfs": 3})
    st = read_pf(h, resolve_pf(h, "eth0"))
    assert (st.numvfs, st.totalvfs, st.autoprobe, st.driver) == (3, None, None, "netdevsim")
    assert [(v.index, v.address) for v in st.vfs] == [(0, None), (1, None), (2, None)]
    assert "netdevsim1" in [p.name for p in sriov_pfs(h)]


# -- VF count ----------------------------------------------------------------------------------------------------
def test_count_refuses_more_than_totalvfs(gs):
    k = FakeSriovKernel(gs)
    with pytest.raises(UsageError, match="16 VFs asked, the device supports at most 8"):
        count_vfs(HostRoot(gs.root), _paths(gs), IF0, 16, force=True, kernel=k)
    assert k.writes == []


def test_count_refuses_destroying_vfs_in_vms_unless_forced(gs):
    h, k = HostRoot(gs.root), FakeSriovKernel(gs, {PF0: "mlx5_core"})
    with pytest.raises(UsageError) as e:
        count_vfs(h, _paths(gs), PF0, 4, kernel=k)
    assert "VF 4 (0000:3b:00.6) is bound to vfio-pci (probably in a VM) (and 3 more)" in str(e.value)
    assert "--force" in str(e.value) and e.value.exit_code == 2 and k.writes == []
    out = count_vfs(h, _paths(gs), PF0, 4, force=True, kernel=k)
    assert k.writes == [(f"/bus/pci/devices/{PF0}/sriov_numvfs", "0"), (f"/bus/pci/devices/{PF0}/sriov_numvfs", "4")]
    assert out.status == "changed" and (out.before, out.after) == (8, 4)
    assert len(out.warnings) == 4 and out.vfs == ["0000:3b:00.2", "0000:3b:00.3", "0000:3b:00.4", "0000:3b:00.5"]
    assert read_pf(h, resolve_pf(h, PF0)).numvfs == 4


def test_count_refuses_a_vf_with_host_addresses(idle):
    idle.netdev("0000:01:02.0", "ens1f0v0", "02:00:00:00:00:10", phys_port_name=None)
    idle.ip("ens1f0v0", "192.0.2.7/24")
    with pytest.raises(UsageError, match=r"VF 0 \(0000:01:02.0\) ens1f0v0 has route 192.0.2.0/24"):
        count_vfs(HostRoot(idle.root), _paths(idle), "ens1f0", 4, kernel=FakeSriovKernel(idle))


def test_count_through_zero_with_autoprobe_off_records_and_restores(idle):
    h, paths = HostRoot(idle.root), _paths(idle)
    k = FakeSriovKernel(idle, {"0000:01:00.0": "iavf"})
    out = count_vfs(h, paths, "ens1f0", 4, autoprobe=False, kernel=k)
    dev = "/bus/pci/devices/0000:01:00.0"
    assert k.writes == [(dev + "/sriov_drivers_autoprobe", "0"), (dev + "/sriov_numvfs", "0"),
                        (dev + "/sriov_numvfs", "4")]
    assert out.steps == ["sriov_drivers_autoprobe=0", "sriov_numvfs=0", "sriov_numvfs=4"]
    st = read_pf(h, resolve_pf(h, "ens1f0"))
    assert (st.numvfs, st.autoprobe) == (4, False)
    assert [v.driver for v in st.vfs] == [None] * 4  # no host driver grabbed them
    rec = SriovStore(paths).pf(st.pf)
    assert (rec["prior_numvfs"], rec["prior_autoprobe"], rec["numvfs"], rec["phase"]) == (2, True, 4, "done")
    assert [(a["action"], a["before"], a["after"]) for a in _audit(idle)] == [
        ("sriov_count", {"numvfs": 2, "autoprobe": True}, {"numvfs": 4, "autoprobe": False})]
    # a second count keeps the first prior
    count_vfs(h, paths, "ens1f0", 3, kernel=k)
    assert SriovStore(paths).pf(st.pf)["prior_numvfs"] == 2
    k.writes.clear()
    back = count_vfs(h, paths, "ens1f0", None, restore=True, kernel=k)
    assert (back.after, back.autoprobe_after) == (2, True)
    assert k.writes == [(dev + "/sriov_drivers_autoprobe", "1"), (dev + "/sriov_numvfs", "0"),
                        (dev + "/sriov_numvfs", "2")]
    assert SriovStore(paths).pf(st.pf) is None  # back to what passthru found
    assert [v.driver for v in read_pf(h, st.pf).vfs] == ["iavf", "iavf"]
    with pytest.raises(UsageError, match="has not changed its VF count"):
        count_vfs(h, paths, "ens1f0", None, restore=True, kernel=k)


def test_count_unchanged_and_dry_run_write_nothing(idle):
    h, k = HostRoot(idle.root), FakeSriovKernel(idle)
    assert count_vfs(h, _paths(idle), "ens1f0", 2, kernel=k).status == "unchanged"
    out = count_vfs(h, _paths(idle), "ens1f0", 5, dry_run=True)
    assert (out.status, out.steps) == ("dry-run", ["sriov_numvfs=0", "sriov_numvfs=5"]) and k.writes == []
    with pytest.raises(UsageError, match="not this machine's root"):
        count_vfs(h, _paths(idle), "ens1f0", 5)  # the real writer refuses a fixture root


def test_a_failed_count_puts_the_prior_count_back(idle):
    h, paths = HostRoot(idle.root), _paths(idle)
    k = FakeSriovKernel(idle, {"0000:01:00.0": "iavf"})
    k.faults[("sriov_numvfs", "6")] = errno.ENOSPC
    with pytest.raises(HostError) as e:
        count_vfs(h, paths, "0000:01:00.0", 6, kernel=k)
    msg = str(e.value)
    assert "writing 6 to sriov_numvfs: not enough resources" in msg and "ENOSPC" in msg
    assert msg.endswith("the PF is back to 2 VFs")
    assert read_pf(h, resolve_pf(h, "ens1f0")).numvfs == 2
    assert SriovStore(paths).pf(resolve_pf(h, "ens1f0"))["phase"] == "failed"
    assert [a["action"] for a in _audit(idle)] == ["sriov_count", "sriov_count_failed"]


def test_count_on_a_netdevsim_pf(idle):
    h, k = HostRoot(idle.root), FakeSriovKernel(idle)
    out = count_vfs(h, _paths(idle), "netdevsim/netdevsim1", 4, kernel=k)
    assert k.writes == [("/bus/netdevsim/devices/netdevsim1/sriov_numvfs", "4")] and out.vfs == []
    count_vfs(h, _paths(idle), "eth0", 2, kernel=k)
    assert [w[1] for w in k.writes] == ["4", "0", "2"]
    with pytest.raises(UsageError, match="no sriov_drivers_autoprobe on this netdevsim device"):
        count_vfs(h, _paths(idle), "eth0", 3, autoprobe=False, kernel=k)
    with pytest.raises(HostError, match="writing 5 to sriov_numvfs: more VFs than the device allows"):
        count_vfs(h, _paths(idle), "eth0", 5, kernel=k)
    assert read_pf(h, resolve_pf(h, "eth0")).numvfs == 2


# -- netlink: a stand-in for pyroute2's IPRoute ------------------------------------------------------------------
_DEFAULT = dict(mac="00:00:00:00:00:00", vlan=0, qos=0, min_tx_rate=0, max_tx_rate=0, spoofchk=1, trust=0,
                link_state=0)


class FakeIPRoute:
    """pyroute2's IPRoute at the netlink boundary. ``set`` runs pyroute2's own request filter on the vf dict (which
    consumes it, as the real IPRoute does), encodes the message, decodes it as the kernel would and applies each
    IFLA_VF_* attribute; ``get`` answers with an encoded IFLA_VFINFO_LIST. ``calls`` keeps a deep copy of every
    vf dict as passed, ``received`` the objects themselves."""

    def __init__(self, vfs: dict[str, int]) -> None:
        self.index = {name: i for i, name in enumerate(vfs, 10)}
        self.vfs = {name: [dict(_DEFAULT) for _ in range(n)] for name, n in vfs.items()}
        self.calls: list[dict] = []
        self.received: list[dict] = []
        self.faults: dict[str, int] = {}  # "IFLA_VF_TRUST" -> errno
        self.on_set = None
        self.closed = False

    def link_lookup(self, ifname: str) -> list[int]:
        return [self.index[ifname]] if ifname in self.index else []

    def close(self) -> None:
        self.closed = True

    def _name(self, index: int) -> str:
        return next(n for n, i in self.index.items() if i == index)

    def link(self, cmd: str, **kw):
        name = self._name(kw["index"])
        if cmd == "get":
            assert kw.get("ext_mask") == 1, "VFs are reported only with RTEXT_FILTER_VF"
            infos = [("IFLA_VF_INFO", {"attrs": [
                ("IFLA_VF_MAC", {"vf": i, "mac": v["mac"]}), ("IFLA_VF_VLAN", {"vf": i, "vlan": v["vlan"],
                                                                               "qos": v["qos"]}),
                ("IFLA_VF_RATE", {"vf": i, "min_tx_rate": v["min_tx_rate"], "max_tx_rate": v["max_tx_rate"]}),
                ("IFLA_VF_SPOOFCHK", {"vf": i, "spoofchk": v["spoofchk"]}),
                ("IFLA_VF_LINK_STATE", {"vf": i, "link_state": v["link_state"]}),
                ("IFLA_VF_TRUST", {"vf": i, "trust": v["trust"]})]}) for i, v in enumerate(self.vfs[name])]
            m = ifinfmsg()
            m["index"] = kw["index"]
            m["attrs"] = [("IFLA_IFNAME", name), ("IFLA_NUM_VF", len(infos)),
                          ("IFLA_VFINFO_LIST", {"attrs": infos})]
            return [_wire(m)]
        assert cmd == "set" and set(kw) == {"index", "vf"}, kw
        vf = kw["vf"]
        self.received.append(vf)
        self.calls.append(copy.deepcopy(vf))
        if self.on_set:
            self.on_set(vf)
        m = ifinfmsg()
        m["index"] = kw["index"]
        m["attrs"] = [("IFLA_VFINFO_LIST", LinkIPRouteFilter("set").set_vf({}, vf)["IFLA_VFINFO_LIST"])]
        for info in _wire(m).get_attr("IFLA_VFINFO_LIST").get_attrs("IFLA_VF_INFO"):
            for attr, val in info["attrs"]:
                if attr in self.faults:
                    raise NetlinkError(self.faults[attr], os.strerror(self.faults[attr]))
                cfg = self.vfs[name][val["vf"]]
                for key in ("mac", "vlan", "qos", "min_tx_rate", "max_tx_rate", "spoofchk", "trust", "link_state"):
                    if key in val:
                        cfg[key] = val[key]
        return [m]


def _wire(m: ifinfmsg) -> ifinfmsg:
    m.encode()
    d = ifinfmsg(m.data)
    d.decode()
    return d


@pytest.fixture
def nl():
    fake = FakeIPRoute({IF0: 8, "enp59s0f1np1": 8})
    return fake, VfNetlink(iproute=fake)


def _cfg(fake, vf=2, name=IF0) -> dict:
    return fake.vfs[name][vf]


def test_set_sends_one_message_per_setting_as_pyroute2_vf_dicts(gs, nl):
    fake, vl = nl
    h, paths = HostRoot(gs.root), _paths(gs)
    out = set_vf(h, paths, IF0, 2, {"mac": "52:54:00:AA:BB:02", "vlan": 100, "qos": 3, "spoofchk": "off",
                                    "trust": True, "max_tx_rate": 1000, "link_state": "disable"}, netlink=vl)
    want = [{"vf": 2, "mac": "52:54:00:aa:bb:02"}, {"vf": 2, "vlan": {"vlan": 100, "qos": 3}},
            {"vf": 2, "rate": {"min_tx_rate": 0, "max_tx_rate": 1000}}, {"vf": 2, "spoofchk": 0},
            {"vf": 2, "trust": 1}, {"vf": 2, "link_state": 2}]
    assert fake.calls == want
    # pyroute2 consumed what it was given; passthru handed it copies and kept its own intact
    assert all("vf" not in r for r in fake.received)
    assert out.messages == want and all(r is not m for r, m in zip(fake.received, out.messages))
    assert _cfg(fake) == dict(mac="52:54:00:aa:bb:02", vlan=100, qos=3, min_tx_rate=0, max_tx_rate=1000,
                              spoofchk=0, trust=1, link_state=2)
    assert out.status == "changed" and out.warnings == []
    assert out.after == {"mac": "52:54:00:aa:bb:02", "vlan": 100, "qos": 3, "spoofchk": False, "trust": True,
                         "link_state": "disable", "min_tx_rate": 0, "max_tx_rate": 1000}
    assert out.prior == {"mac": "00:00:00:00:00:00", "vlan": 0, "qos": 0, "spoofchk": True, "trust": False,
                         "min_tx_rate": 0, "max_tx_rate": 0, "link_state": "auto"}
    rec = SriovStore(paths).vf(resolve_pf(h, PF0), 2)
    assert (rec["prior"], rec["phase"], rec["vf"], rec["pf"]) == (out.prior, "applied", 2, PF0)
    assert [a["action"] for a in _audit(gs)] == ["vf_set"]
    assert fake.closed is False  # an injected socket belongs to the caller


def test_vf_netlink_passes_a_deep_copy(nl):
    fake, vl = nl
    spec = {"vf": 1, "vlan": {"vlan": 7, "qos": 1}, "rate": {"min_tx_rate": 1, "max_tx_rate": 2}}
    before = copy.deepcopy(spec)
    vl.set_vf(IF0, spec, "test")
    assert spec == before and fake.calls == [before]
    assert fake.received[0] is not spec and "vf" not in fake.received[0]


def test_the_record_is_written_before_the_first_message(gs, nl):
    fake, vl = nl
    paths = _paths(gs)
    seen = []
    fake.on_set = lambda vf: seen.append(SriovStore(paths).vf(resolve_pf(HostRoot(gs.root), PF0), 2))
    set_vf(HostRoot(gs.root), paths, PF0, 2, {"mac": "52:54:00:00:00:02"}, netlink=vl)
    assert seen[0]["phase"] == "applying" and seen[0]["prior"] == {"mac": "00:00:00:00:00:00"}


def test_a_refused_setting_undoes_the_others_and_says_why(gs, nl):
    fake, vl = nl
    fake.faults["IFLA_VF_TRUST"] = errno.EOPNOTSUPP
    h, paths = HostRoot(gs.root), _paths(gs)
    with pytest.raises(HostError) as e:
        set_vf(h, paths, IF0, 2, {"mac": "52:54:00:00:00:02", "vlan": 10, "trust": "on"}, netlink=vl)
    assert str(e.value) == (f"{IF0}: setting VF 2 trust (trust on): the PF's driver does not support this VF setting "
                            "(EOPNOTSUPP: Operation not supported, netlink error 95); the settings already made "
                            "(mac, vlan) were put back")
    assert fake.calls[-2:] == [{"vf": 2, "vlan": {"vlan": 0, "qos": 0}}, {"vf": 2, "mac": "00:00:00:00:00:00"}]
    assert _cfg(fake) == _DEFAULT
    assert SriovStore(paths).vf(resolve_pf(h, PF0), 2) is None
    assert [a["action"] for a in _audit(gs)] == ["vf_set", "vf_set_failed"]


def test_reset_puts_the_first_prior_back_and_drops_the_record(gs, nl):
    fake, vl = nl
    h, paths = HostRoot(gs.root), _paths(gs)
    fake.vfs[IF0][3].update(mac="02:6b:00:00:00:03", vlan=5)
    set_vf(h, paths, IF0, 3, {"mac": "52:54:00:00:00:03", "vlan": 100}, netlink=vl)
    set_vf(h, paths, IF0, 3, {"mac": "52:54:00:00:00:33", "trust": True}, netlink=vl)  # the first prior stays
    rec = SriovStore(paths).vf(resolve_pf(h, PF0), 3)
    assert rec["prior"] == {"mac": "02:6b:00:00:00:03", "vlan": 5, "qos": 0, "trust": False}
    assert rec["applied"] == {"mac": "52:54:00:00:00:33", "vlan": 100, "trust": True}
    fake.calls.clear()
    out = reset_vf(h, paths, IF0, 3, netlink=vl)
    assert fake.calls == [{"vf": 3, "mac": "02:6b:00:00:00:03"}, {"vf": 3, "vlan": {"vlan": 5, "qos": 0}},
                          {"vf": 3, "trust": 0}]
    assert out.status == "restored" and _cfg(fake, 3) == {**_DEFAULT, "mac": "02:6b:00:00:00:03", "vlan": 5}
    assert SriovStore(paths).vf(resolve_pf(h, PF0), 3) is None
    with pytest.raises(UsageError, match="has not changed the settings of VF 3"):
        reset_vf(h, paths, IF0, 3, netlink=vl)


def test_settings_already_in_place_send_nothing(gs, nl):
    fake, vl = nl
    out = set_vf(HostRoot(gs.root), _paths(gs), IF0, 1, {"spoofchk": True, "vlan": 0, "link_state": "auto"},
                 netlink=vl)
    assert out.status == "unchanged" and fake.calls == [] and _audit(gs) == []
    assert SriovStore(_paths(gs)).vf(resolve_pf(HostRoot(gs.root), PF0), 1) is None


def test_qos_alone_keeps_the_vlan_and_one_rate_keeps_the_other(gs, nl):
    fake, vl = nl
    h, paths = HostRoot(gs.root), _paths(gs)
    fake.vfs[IF0][0].update(vlan=42, min_tx_rate=100, max_tx_rate=900)
    set_vf(h, paths, IF0, 0, {"qos": 5, "max_tx_rate": 2000}, netlink=vl)
    assert fake.calls == [{"vf": 0, "vlan": {"vlan": 42, "qos": 5}},
                          {"vf": 0, "rate": {"min_tx_rate": 100, "max_tx_rate": 2000}}]
    with pytest.raises(UsageError, match="QoS priority goes with a VLAN"):
        set_vf(h, paths, IF0, 1, {"qos": 5}, netlink=vl)


def test_vf_settings_refusals(gs, nl):
    _, vl = nl
    h, paths = HostRoot(gs.root), _paths(gs)
    with pytest.raises(UsageError, match="no VF 8; it has VFs 0-7"):
        set_vf(h, paths, IF0, 8, {"trust": True}, netlink=vl)
    with pytest.raises(UsageError, match="nothing to set"):
        set_vf(h, paths, IF0, 1, {"mac": None}, netlink=vl)
    with pytest.raises(UsageError, match="not this machine's root"):
        set_vf(h, paths, IF0, 1, {"trust": True})
    with pytest.raises(UsageError, match="the PF has no network interface"):
        set_vf(h, paths, "0000:d8:00.0", 0, {"trust": True}, netlink=vl)


@pytest.mark.parametrize("opts,err", [
    ({"mac": "52:54:00:12:34"}, "not a MAC address"), ({"mac": "01:00:5e:00:00:01"}, "multicast"),
    ({"vlan": 4096}, r"out of range \(0-4095\)"), ({"qos": 8}, r"out of range \(0-7\)"),
    ({"spoofchk": "maybe"}, "expected on or off"), ({"link_state": "up"}, "auto, enable or disable"),
    ({"min_tx_rate": 500, "max_tx_rate": 100}, "above max_tx_rate"), ({"vlan": True}, "out of range"),
    ({"mtu": 9000}, "unknown VF setting mtu"), ({"max_tx_rate": -1}, "out of range")])
def test_settings_are_validated(opts, err):
    with pytest.raises(UsageError, match=err):
        normalize_settings(opts)


def test_settings_are_normalized():
    assert normalize_settings({"mac": "52-54-00-AB-CD-EF", "vlan": "100", "spoofchk": "on", "trust": 0,
                               "link_state": 1, "qos": None}) == {
        "mac": "52:54:00:ab:cd:ef", "vlan": 100, "spoofchk": True, "trust": False, "link_state": "enable"}
    assert vf_messages(0, {"link_state": "enable", "mac": "02:00:00:00:00:01"}, None) == [
        ("mac", {"vf": 0, "mac": "02:00:00:00:00:01"}, {"mac": None}),
        ("link_state", {"vf": 0, "link_state": 1}, {"link_state": None})]


def test_unreported_settings_read_as_unknown_and_are_not_restored(gs, nl):
    fake, vl = nl
    fake.vfs[IF0][5]["spoofchk"] = 0xFFFFFFFF  # the kernel's -1: the driver does not report it
    assert vl.vf(IF0, 5) == VfConfig(5, "00:00:00:00:00:00", 0, 0, None, False, "auto", 0, 0)
    h, paths = HostRoot(gs.root), _paths(gs)
    set_vf(h, paths, IF0, 5, {"spoofchk": True, "mac": "02:00:00:00:00:05"}, netlink=vl)
    fake.calls.clear()
    out = reset_vf(h, paths, IF0, 5, netlink=vl)
    assert fake.calls == [{"vf": 5, "mac": "00:00:00:00:00:00"}]
    assert out.warnings == ["spoofchk: not restored, the driver did not report it before"]


def test_parse_vfinfo_without_vfs():
    m = ifinfmsg()
    m["attrs"] = [("IFLA_IFNAME", "veth0")]
    assert parse_vfinfo(_wire(m)) == []


def test_list_from_netlink_with_representors_and_records(gs, nl):
    fake, vl = nl
    gs.netdev(PF0, "enp59s0f0r2", "6e:00:00:00:00:02", phys_port_name="pf0vf2")
    h, paths = HostRoot(gs.root), _paths(gs)
    set_vf(h, paths, IF0, 2, {"mac": "52:54:00:00:00:02", "vlan": 7}, netlink=vl)
    doc = list_vfs(h, paths, IF0, netlink=vl)
    (p,) = doc["pfs"]
    assert (p["pf"], p["source"], p["numvfs"], p["totalvfs"], p["autoprobe"]) == (PF0, "netlink", 8, 8, True)
    v2, v4 = p["vfs"][2], p["vfs"][4]
    assert (v2["address"], v2["mac"], v2["vlan"], v2["representor"], v2["recorded"]) == (
        "0000:3b:00.4", "52:54:00:00:00:02", 7, "enp59s0f0r2", True)
    assert v2["in_use"].startswith("has settings from passthru vf set")
    assert (v4["driver"], v4["in_use"], v4["spoofchk"]) == ("vfio-pci", "bound to vfio-pci (probably in a VM)", True)
    sysfs = list_vfs(h, paths)  # a fixture root, nothing injected: sysfs only
    assert [x["pf"] for x in sysfs["pfs"]] == [PF0, PF1, "0000:d8:00.0"]
    assert sysfs["pfs"][0]["source"] == "sysfs" and sysfs["pfs"][0]["vfs"][2]["mac"] is None


def test_vf_settings_make_a_vf_in_use_and_a_count_drops_their_records(gs, nl):
    fake, vl = nl
    h, paths = HostRoot(gs.root), _paths(gs)
    set_vf(h, paths, PF1, 2, {"trust": True}, netlink=vl)
    st = read_pf(h, resolve_pf(h, PF1))
    assert "VF 2 (0000:3b:01.4) has settings from passthru vf set" in vfs_in_use(h, paths, st)[0]
    count_vfs(h, paths, PF1, 8, kernel=FakeSriovKernel(gs))  # unchanged: no refusal
    count_vfs(h, paths, PF1, 2, force=True, kernel=FakeSriovKernel(gs))
    assert SriovStore(paths).vfs(st.pf) == {}
    assert "vf_record_dropped" in [a["action"] for a in _audit(gs)]


# -- the nic kind ------------------------------------------------------------------------------------------------
def test_the_nic_kind_sets_a_vf_for_a_vm_and_puts_it_back(gs, nl):
    fake, vl = nl
    h, paths = HostRoot(gs.root), _paths(gs)
    assert isinstance(kind_for("nic"), NicKind)
    kind = NicKind(netlink=vl)
    prior = kind.before_assign(h, paths, "vm1", "pci:0000:3b:00.4", {"mac": "52:54:00:00:01:02", "vlan": 100,
                                                                      "qos": 2, "trust": "on"})
    assert prior == {"pf": f"pci/{PF0}", "vf": 2, "applied": {"mac": "52:54:00:00:01:02", "vlan": 100, "qos": 2,
                                                               "trust": True},
                     "prior": {"mac": "00:00:00:00:00:00", "vlan": 0, "qos": 0, "trust": False}}
    assert SriovStore(paths).vf(resolve_pf(h, PF0), 2)["owner"] == "VM vm1"
    json.dumps(prior)  # recorded with the assignment
    assert _cfg(fake)["vlan"] == 100
    kind.after_release(h, paths, "vm1", "pci:0000:3b:00.4", prior)
    assert _cfg(fake) == _DEFAULT and SriovStore(paths).vf(resolve_pf(h, PF0), 2) is None
    assert kind.before_assign(h, paths, "vm1", "pci:0000:3b:00.4", {}) is None
    kind.after_release(h, paths, "vm1", "pci:0000:3b:00.4", None)
    with pytest.raises(UsageError, match="not an SR-IOV VF"):
        kind.before_assign(h, paths, "vm1", f"pci:{PF0}", {"vlan": 3})
    with pytest.raises(UsageError, match="unknown VF setting"):
        kind.before_assign(h, paths, "vm1", "pci:0000:3b:00.4", {"vlna": 3})


def test_vf_identities(gs, idle):
    h = HostRoot(gs.root)
    assert vf_of(h, "pci:0000:3b:01.2") == (resolve_pf(h, PF1), 0)
    assert vf_of(h, "0000:3b:00.7") == (resolve_pf(h, PF0), 5)
    assert vf_of(h, f"vf:{IF0}:3") == (resolve_pf(h, PF0), 3)
    hi = HostRoot(idle.root)
    assert vf_of(hi, "vf:netdevsim/netdevsim1:1") == (resolve_pf(hi, "eth0"), 1)
    with pytest.raises(UsageError, match="expected vf:PF:INDEX"):
        vf_of(h, "vf:eth0")


# -- devlink: switchdev ------------------------------------------------------------------------------------------
class FakeDevlink(Devlink):
    """`devlink` answering like iproute2 6.1; switchdev makes representors on the builder tree like mlx5."""

    def __init__(self, b: SysfsBuilder | None, mode: str = "legacy", json_out: bool = True) -> None:
        super().__init__()
        self.b, self.mode, self.json_out = b, mode, json_out
        self.argv: list[list[str]] = []
        self.fail_set: str | None = None

    def run(self, args):
        self.argv.append(args)
        if "show" in args:
            handle = args[-1]
            if not handle.startswith("pci/0000:3b:00."):
                return 1, "", "kernel answers: Operation not supported\n"
            if "-j" in args and self.json_out:
                return 0, json.dumps({"dev": {handle: {"mode": self.mode, "inline-mode": "none",
                                                       "encap-mode": "basic"}}}), ""
            return 0, f"{handle}: mode {self.mode} inline-mode none encap-mode basic\n", ""
        if self.fail_set:
            return 1, "", f"Error: mlx5_core: {self.fail_set}.\nkernel answers: Invalid argument\n"
        self.mode = args[-1]
        pf = args[3].split("/", 1)[1]
        if self.b is not None:
            if self.mode == "switchdev":
                for n in range(8):
                    self.b.netdev(pf, f"enp59s0f0r{n}", f"6e:00:00:00:00:0{n}", phys_port_name=f"pf0vf{n}")
            else:
                for n in range(8):
                    os.unlink(f"{self.b.sys}/class/net/enp59s0f0r{n}")
                    shutil.rmtree(f"{self.b.fn(pf).path}/net/enp59s0f0r{n}")
        return 0, "", ""


def test_switchdev_records_the_prior_mode_and_finds_representors(gs):
    h, paths = HostRoot(gs.root), _paths(gs)
    dl = FakeDevlink(gs)
    with pytest.raises(UsageError, match="refusing to change the eswitch mode.*--force"):
        switchdev(h, paths, IF0, devlink=dl)
    assert dl.argv == []
    doc = switchdev(h, paths, IF0, force=True, devlink=dl, wait_seconds=1)
    assert dl.argv == [["-j", "dev", "eswitch", "show", f"pci/{PF0}"],
                       ["dev", "eswitch", "set", f"pci/{PF0}", "mode", "switchdev"],
                       ["-j", "dev", "eswitch", "show", f"pci/{PF0}"]]
    assert (doc["before"], doc["after"], doc["status"], doc["missing"]) == ("legacy", "switchdev", "changed", [])
    assert doc["representors"] == {str(n): f"enp59s0f0r{n}" for n in range(8)}
    pf = resolve_pf(h, PF0)
    assert SriovStore(paths).pf(pf)["prior_eswitch"] == "legacy"
    assert [(a["action"], a["before"], a["after"]) for a in _audit(gs)] == [("eswitch_mode", "legacy", "switchdev")]
    assert switchdev(h, paths, PF0, force=True, devlink=dl)["status"] == "unchanged"
    back = switchdev(h, paths, PF0, "legacy", force=True, devlink=dl, wait_seconds=1)
    assert (back["status"], back["representors"], back["warnings"]) == ("changed", {}, [])
    assert SriovStore(paths).pf(pf) is None


def test_switchdev_errors_and_text_output(gs):
    h, paths = HostRoot(gs.root), _paths(gs)
    dl = FakeDevlink(None, json_out=False)
    assert dl.eswitch_mode(f"pci/{PF1}") == "legacy"
    dl.fail_set = "Can't change mode while VFs are bound"
    with pytest.raises(HostError, match="devlink dev eswitch set pci/0000:3b:00.1 mode switchdev: Error: mlx5_core: "
                                        "Can't change mode while VFs are bound.; kernel answers: Invalid argument"):
        switchdev(h, paths, PF1, force=True, devlink=dl)
    with pytest.raises(HostError, match="devlink dev eswitch show pci/0000:d8:00.0: kernel answers: Operation not "
                                        "supported"):
        switchdev(h, paths, "0000:d8:00.0", devlink=dl)
    with pytest.raises(UsageError, match="--mode bridge: use switchdev or legacy"):
        switchdev(h, paths, PF1, "bridge")
    assert switchdev(h, paths, PF1, force=True, dry_run=True)["command"] == [
        "devlink", "dev", "eswitch", "set", "pci/0000:3b:00.1", "mode", "switchdev"]


class MissingTool(Devlink):
    def run(self, args):
        from passthru.writers.tools import run_tool

        return run_tool([f"devlink-missing-{uuid.uuid4().hex[:6]}", *args], 5, self.INSTALL)


def test_a_missing_devlink_says_what_to_install():
    with pytest.raises(ToolMissing, match="not found: install iproute2"):
        MissingTool().eswitch_mode("pci/0000:3b:00.0")


def test_devlink_runs_by_argument_list_with_a_timeout(monkeypatch):
    seen = {}

    def fake_run(argv, **kw):
        seen.update(argv=argv, **kw)
        return subprocess.CompletedProcess(argv, 0, '{"dev":{"pci/0000:3b:00.0":{"mode":"switchdev"}}}', "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert Devlink(timeout=7).eswitch_mode("pci/0000:3b:00.0") == "switchdev"
    assert seen["argv"] == ["devlink", "-j", "dev", "eswitch", "show", "pci/0000:3b:00.0"]
    assert seen["timeout"] == 7 and "shell" not in seen


# -- Open vSwitch ------------------------------------------------------------------------------------------------
class FakeOvs(Ovs):
    def __init__(self, value: str | None = None, down: bool = False) -> None:
        super().__init__()
        self.value, self.down = value, down
        self.argv: list[list[str]] = []

    def run(self, args):
        self.argv.append(args)
        if self.down:
            return 1, "", "ovs-vsctl: unix:/var/run/openvswitch/db.sock: database connection failed (No such file)\n"
        if args[0] == "--if-exists":
            return 0, f'"{self.value}"\n' if self.value is not None else "\n", ""
        self.value = args[-1].split("=", 1)[1]
        return 0, "", ""


class NoOvs(Ovs):
    def run(self, args):
        from passthru.writers.tools import run_tool

        return run_tool([f"ovs-vsctl-missing-{uuid.uuid4().hex[:6]}", *args], 5, self.INSTALL)


def test_ovs_offload_sets_hw_offload_once(gs):
    h, paths = HostRoot(gs.root), _paths(gs)
    o = FakeOvs()
    doc = offload_ovs(h, paths, ovs=o)
    assert o.argv == [["--if-exists", "get", "Open_vSwitch", ".", "other_config:hw-offload"],
                      ["set", "Open_vSwitch", ".", "other_config:hw-offload=true"],
                      ["--if-exists", "get", "Open_vSwitch", ".", "other_config:hw-offload"]]
    assert (doc["before"], doc["after"], doc["status"]) == (False, True, "changed")
    assert "restart Open vSwitch" in doc["notes"][0] and "passthru vf switchdev PF" in doc["notes"][1]
    assert [(a["action"], a["before"], a["after"]) for a in _audit(gs)] == [("ovs_hw_offload", False, True)]
    assert offload_ovs(h, paths, ovs=o)["status"] == "unchanged"


def test_ovs_missing_or_down_is_never_silent(gs):
    h, paths = HostRoot(gs.root), _paths(gs)
    with pytest.raises(ToolMissing, match="install Open vSwitch .*apt-get install openvswitch-switch"):
        offload_ovs(h, paths, ovs=NoOvs())
    with pytest.raises(HostError, match="database connection failed.*systemctl start openvswitch-switch"):
        offload_ovs(h, paths, ovs=FakeOvs(down=True))
    with pytest.raises(UsageError, match="not this machine's root"):
        offload_ovs(h, paths)


def test_ovs_runs_with_a_timeout(monkeypatch):
    seen = {}

    def fake_run(argv, **kw):
        seen.update(argv=argv, **kw)
        return subprocess.CompletedProcess(argv, 0, '"true"\n', "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert Ovs(timeout=9).hw_offload() is True
    assert seen["argv"] == ["ovs-vsctl", "--timeout=9", "--if-exists", "get", "Open_vSwitch", ".",
                            "other_config:hw-offload"] and seen["timeout"] == 14


# -- doctor ------------------------------------------------------------------------------------------------------
def _ids(findings) -> list[tuple[str, str, str | None]]:
    return [(f.id, f.status, f.device) for f in findings]


def test_doctor_findings_legacy_switchdev_representors_and_ovs(gs):
    h = HostRoot(gs.root)
    dl = FakeDevlink(None)
    f = sriov_findings(h, devlink=dl, ovs=FakeOvs())
    assert _ids(f) == [("sriov.eswitch", "pass", PF0), ("sriov.eswitch", "pass", PF1),
                       ("sriov.eswitch", "skip", "0000:d8:00.0"), ("sriov.ovs_offload", "skip", None)]
    assert "legacy" in f[0].evidence and "no eswitch on this device" in f[2].evidence
    # offload on but eswitch legacy
    assert sriov_findings(h, PF0, devlink=dl, ovs=FakeOvs("true"))[0].status == "warn"
    # switchdev with representors for VFs 0-5 only
    dl.mode = "switchdev"
    for n in range(6):
        gs.netdev(PF0, f"enp59s0f0r{n}", f"6e:00:00:00:00:0{n}", phys_port_name=f"pf0vf{n}")
    f = sriov_findings(h, PF0, devlink=dl, ovs=FakeOvs())
    assert _ids(f) == [("sriov.eswitch", "pass", PF0), ("sriov.representors", "fail", PF0),
                       ("sriov.ovs_offload", "warn", None)]
    assert "VF 6, 7" in f[1].evidence and f[2].fix.startswith("`passthru vf offload --ovs`")
    for n in (6, 7):
        gs.netdev(PF0, f"enp59s0f0r{n}", f"6e:00:00:00:00:0{n}", phys_port_name=f"pf0vf{n}")
    f = sriov_findings(h, PF0, devlink=dl, ovs=FakeOvs("true"))
    assert [x.status for x in f] == ["pass", "pass", "pass"]
    assert "8 representors (VF 0 enp59s0f0r0" in f[1].evidence
    f = sriov_findings(h, PF0, devlink=dl, ovs=NoOvs())
    assert f[2].status == "warn" and "apt-get install openvswitch-switch" in f[2].fix
    assert sriov_findings(h, PF0, devlink=MissingTool(), ovs=NoOvs())[0].status == "skip"


def test_doctor_findings_on_a_fixture_root_and_without_vfs(gs, tmp_path):
    h = HostRoot(gs.root)
    assert {f.status for f in sriov_findings(h)} == {"skip"}  # no devlink/ovs-vsctl against a fixture
    bare = sysfs_fixtures.bare_host(tmp_path / "bare")
    (f,) = sriov_findings(HostRoot(bare))
    assert (f.id, f.status, f.evidence) == ("sriov.eswitch", "skip", "no SR-IOV PF has VFs")
    gs.netdev(PF0, "enp59s0f0r0", "6e:00:00:00:00:00", phys_port_name="pf0vf0")
    f = NicKind().checks(h, type("D", (), {"id": PF0, "fact": read_pf_fact(h, PF0)})())
    assert _ids(f) == [("sriov.eswitch", "pass", PF0), ("sriov.representors", "fail", PF0)]


def read_pf_fact(h, addr):
    from passthru.host.pci import read_function

    return read_function(h, addr)


# -- CLI ---------------------------------------------------------------------------------------------------------
def _cli(root, *args, capsys):
    rc = main(["--root", str(root), *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_verbs_on_a_fixture(gs, capsys):
    rc, out, err = _cli(gs.root, "vf", "count", PF0, "4", capsys=capsys)
    assert rc == 2 and "bound to vfio-pci" in err
    rc, out, _ = _cli(gs.root, "vf", "count", IF0, "0", "--force", "--dry-run", "--json", capsys=capsys)
    doc = json.loads(out)
    assert rc == 0 and (doc["status"], doc["steps"], doc["pf"]) == ("dry-run", ["sriov_numvfs=0"], PF0)
    rc, out, _ = _cli(gs.root, "vf", "list", PF1, "--json", capsys=capsys)
    assert rc == 0 and len(json.loads(out)["pfs"][0]["vfs"]) == 8
    rc, out, _ = _cli(gs.root, "vf", "list", capsys=capsys)
    assert rc == 0 and "0000:3b:00.0 (enp59s0f0np0, mlx5_core): 8/8 VFs, autoprobe on" in out
    rc, out, _ = _cli(gs.root, "vf", "set", IF0, "1", "--mac", "52:54:00:00:00:01", "--vlan", "5", "--trust", "on",
                      "--dry-run", capsys=capsys)
    assert rc == 0 and out.splitlines() == [f"would set: ip link set {IF0} vf 1 mac 52:54:00:00:00:01",
                                            f"would set: ip link set {IF0} vf 1 vlan 5 qos 0",
                                            f"would set: ip link set {IF0} vf 1 trust on"]
    rc, _, err = _cli(gs.root, "vf", "set", IF0, "1", "--trust", "maybe", capsys=capsys)
    assert rc == 2 and "--trust maybe: use on or off" in err
    rc, _, err = _cli(gs.root, "vf", "set", IF0, "1", "--trust", "on", capsys=capsys)
    assert rc == 2 and "not this machine's root" in err
    rc, _, err = _cli(gs.root, "vf", "reset", IF0, "1", capsys=capsys)
    assert rc == 2 and "nothing to reset" in err
    rc, out, _ = _cli(gs.root, "vf", "switchdev", PF1, "--force", "--dry-run", capsys=capsys)
    assert rc == 0 and out.strip() == "would run: devlink dev eswitch set pci/0000:3b:00.1 mode switchdev"
    rc, out, _ = _cli(gs.root, "vf", "offload", "--ovs", "--dry-run", "--json", capsys=capsys)
    assert rc == 0 and json.loads(out)["command"][-1] == "other_config:hw-offload=true"
    rc, _, err = _cli(gs.root, "vf", "offload", capsys=capsys)
    assert rc == 2 and "--ovs" in err


# -- a real kernel: netlink in a private network namespace -------------------------------------------------------
@pytest.fixture
def veth_ns():
    from pyroute2 import IPRoute, netns

    name = f"passthru-test-{uuid.uuid4().hex[:8]}"
    try:
        netns.create(name)
    except (OSError, NetlinkError) as e:
        pytest.skip(f"cannot create a network namespace here ({e}); needs root")
    try:
        with IPRoute(netns=name) as ip:
            ip.link("add", ifname=IF0, kind="veth", peer="vethpeer")
        yield name
    finally:
        netns.remove(name)


def test_real_netlink_reaches_the_kernel_and_its_refusal_is_one_clear_message(veth_ns, gs):
    with VfNetlink(netns=veth_ns) as vl:
        assert vl.vfs(IF0) == []  # a veth has no VFs: no IFLA_VFINFO_LIST
        with pytest.raises(HostError, match=f"^{IF0}: the kernel reports no VF 0 on this interface"):
            vl.vf(IF0, 0)
        spec = {"vf": 0, "mac": "52:54:00:12:34:56", "vlan": {"vlan": 100, "qos": 3},
                "rate": {"min_tx_rate": 0, "max_tx_rate": 1000}, "spoofchk": 0, "trust": 1, "link_state": 2}
        kept = copy.deepcopy(spec)
        # the kernel parsed every attribute (a malformed one is EINVAL) and then found no VF operation: EOPNOTSUPP
        with pytest.raises(HostError) as e:
            vl.set_vf(IF0, spec, "setting VF 0")
        assert str(e.value) == (f"{IF0}: setting VF 0: the PF's driver does not support this VF setting "
                                "(EOPNOTSUPP: Operation not supported, netlink error 95)")
        assert spec == kept
        with pytest.raises(HostError, match="vethX: no such interface in this network namespace"):
            vl.set_vf("vethX", spec, "setting VF 0")
        # the whole path: the fixture names the PF, the real kernel answers
        with pytest.raises(HostError, match=f"{IF0}: the kernel reports no VF 2"):
            set_vf(HostRoot(gs.root), _paths(gs), IF0, 2, {"trust": True}, netlink=vl)
    assert SriovStore(_paths(gs)).vf(resolve_pf(HostRoot(gs.root), PF0), 2) is None
