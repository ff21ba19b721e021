"""Why a group is as big as it is, on a real kernel: `passthru groups --json` in the lab guest against `lspci -vvv`
and the kernel's own groups in the same guest.

The guest has a PCIe-to-PCI bridge (1b36:000e) on its own root port with two conventional PCI test devices behind
it (one group: they share the bridge's requester ID), and a TI X3130 switch whose downstream ports have no ACS
capability (each device shares a group with its downstream port, but the switch's devices stay apart because the
root port above has ACS). QEMU's root ports carry ACS (tests/lab/vm.py device_args).
"""

from __future__ import annotations

import re

import pytest

from .guest import in_guest

pytestmark = pytest.mark.lab

STEP = """
    passthru groups --json > groups.json
    lspci -vvv -D > lspci.txt
    lspci -D -n > lspci-n.txt
"""


def _acs_lines(text: str) -> dict[str, dict[str, dict[str, bool]]]:
    """lspci -vvv -D -> {address: {"ACSCap": {bit: on}, "ACSCtl": {...}}} for functions that show them."""
    out: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"^([0-9a-f]{4,}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) ", line)
        if m:
            cur = m.group(1)
            continue
        m = re.match(r"^\s+(ACSCap|ACSCtl):\s+(.*)$", line)
        if m and cur:
            out.setdefault(cur, {})[m.group(1)] = {w[:-1]: w[-1] == "+" for w in m.group(2).split()}
    return out


def _by_device(doc: dict) -> dict[str, dict]:
    return {d["address"]: g for g in doc["groups"] for d in g["devices"]}


def _ids(text: str, ids: str) -> list[str]:
    return sorted(line.split()[0] for line in text.splitlines() if ids in line)


@in_guest(STEP)
def test_pcie_to_pci_bridge_group_is_explained(guest):
    guest.check()
    doc, ids = guest.json("groups.json"), guest.file("lspci-n.txt")
    bridge = _ids(ids, "1b36:000e")
    assert len(bridge) == 1, ids
    testdevs = _ids(ids, "1b36:0005")
    groups = _by_device(doc)
    behind = [a for a in testdevs if groups[a]["number"] == groups[bridge[0]]["number"]]
    assert len(behind) == 2, "both conventional devices share the PCIe-to-PCI bridge's group"
    g = groups[bridge[0]]
    e = g["explanation"]
    assert e["isolated"] is False
    causes = {c["address"]: c for c in e["causes"]}
    assert causes[bridge[0]]["reason"] == "pcie_to_pci" and causes[bridge[0]]["kind"] == "pcie_to_pci"
    assert set(causes[bridge[0]]["members"]) >= set(behind)
    assert "PCIe-to-PCI bridge" in e["text"]
    iso = g["isolation"]
    assert iso is not None and iso["slots"], "isolated root ports offered"
    assert all(s["root_port"] != bridge[0] for s in iso["slots"])
    assert iso["acs_override"]["last_resort"] is True and "unchecked" in iso["acs_override"]["warning"]


@in_guest(STEP)
def test_switch_without_acs_downstream_ports(guest):
    guest.check()
    doc, ids = guest.json("groups.json"), guest.file("lspci-n.txt")
    downstream = _ids(ids, "104c:8233")  # TI XIO3130 downstream ports
    assert len(downstream) == 2, ids
    groups = _by_device(doc)
    for port in downstream:
        g = groups[port]
        e = g["explanation"]
        assert e["isolated"] is True, "one test device and its port: nothing else to pass through with it"
        causes = {c["address"]: c for c in e["causes"]}
        assert causes[port]["reason"] == "no_acs" and causes[port]["kind"] == "downstream", e
        assert g["isolation"] is None
    assert groups[downstream[0]]["number"] != groups[downstream[1]]["number"]


@in_guest(STEP)
def test_acs_bits_equal_lspci(guest):
    guest.check()
    doc = guest.json("groups.json")
    lspci = _acs_lines(guest.file("lspci.txt"))
    assert len(lspci) >= 9, "QEMU's root ports show ACS"
    ports: dict[str, dict] = {}
    for g in doc["groups"]:
        for p in (g["explanation"] or {}).get("ports", []):
            ports[p["address"]] = p
    missing = sorted(set(lspci) - set(ports))
    assert not missing, f"ports with ACS that passthru did not report: {missing}"
    for addr, regs in lspci.items():
        acs = ports[addr]["acs"]
        assert acs is not None, addr
        assert acs["cap_bits"] == regs["ACSCap"], addr
        assert acs["ctrl_bits"] == regs["ACSCtl"], addr
    for addr, p in ports.items():
        if addr not in lspci:
            assert p["acs"] is None, f"{addr}: passthru reports ACS that lspci does not show"
