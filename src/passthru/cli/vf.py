"""CLI verbs of SR-IOV: ``passthru vf count|list|set|reset|switchdev|offload``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..service.session import Session
from ..service.listings import emit_json
from ..errors import UsageError
from .output import console, table, text

_JSON = typer.Option("--json", help="Print the JSON document.")
_PF = typer.Argument(metavar="PF", help="PCI address, interface (enp59s0f0np0) or devlink handle "
                                        "(pci/0000:3b:00.0, netdevsim/netdevsim1).")
_DRY = typer.Option("--dry-run", help="Show what would be written; change nothing (works on any --root).")

vf_app = typer.Typer(
    name="vf",
    help="SR-IOV VFs: count, list, per-VF MAC/VLAN/trust/rates (netlink), switchdev and Open vSwitch offload.\n\n"
         "Examples: `passthru vf list`, `passthru vf count enp59s0f0np0 8 --autoprobe off`, "
         "`passthru vf set enp59s0f0np0 2 --mac 52:54:00:12:34:56 --vlan 100`, `passthru vf reset enp59s0f0np0 2`.",
    no_args_is_help=True, rich_markup_mode=None)


def _onoff(value: Optional[str], name: str) -> Optional[bool]:
    if value is None:
        return None
    if value.lower() in ("on", "off"):
        return value.lower() == "on"
    raise UsageError(f"{name} {value}: use on or off")


def _lines(doc: dict) -> None:
    for w in doc.get("warnings", []):
        print(f"warning: {w}")
    for n in doc.get("notes", []):
        print(f"note: {n}")


@vf_app.command("count")
def vf_count(
    ctx: typer.Context,
    pf: Annotated[str, _PF],
    n: Annotated[Optional[int], typer.Argument(metavar="[N]", help="VFs wanted (0 removes them).")] = None,
    autoprobe: Annotated[Optional[str], typer.Option(
        "--autoprobe", metavar="on|off",
        help="sriov_drivers_autoprobe: off keeps host drivers off new VFs (VFs meant for VMs).")] = None,
    restore: Annotated[bool, typer.Option("--restore", help="Back to the count and autoprobe passthru found.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Destroy VFs even though they are in use.")] = False,
    dry_run: Annotated[bool, _DRY] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Set a PF's number of VFs: 0 first, then N (the kernel allows no other way), each step waited for.

    Refuses (exit 2) more than sriov_totalvfs, and destroying VFs in use (vfio-pci, host addresses, passthru
    records) without --force. Examples: `passthru vf count 0000:3b:00.0 8 --autoprobe off`,
    `passthru vf count enp59s0f0np0 0 --force`, `passthru vf count enp59s0f0np0 --restore`.
    """
    from ..kinds.nic_vf.vfcount import count_vfs

    c: Session = ctx.obj
    out = count_vfs(c.host, c.paths, pf, n, force=force, autoprobe=_onoff(autoprobe, "--autoprobe"),
                    restore=restore, dry_run=dry_run)
    if as_json:
        emit_json(out.to_json())
        return
    what = {"changed": "now", "unchanged": "unchanged,", "dry-run": "would go"}[out.status]
    steps = f" ({', '.join(out.steps)})" if out.steps else ""
    ap = "" if out.autoprobe_after is None else f", autoprobe {'on' if out.autoprobe_after else 'off'}"
    print(f"{out.pf}: {what} {out.before} -> {out.after} VFs{ap}{steps}" if out.status != "unchanged"
          else f"{out.pf}: {what} {out.after} VFs{ap}")
    _lines({"warnings": out.warnings})


@vf_app.command("list")
def vf_list(
    ctx: typer.Context,
    pf: Annotated[Optional[str], typer.Argument(metavar="[PF]", help="One PF (default: every SR-IOV PF).")] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """VFs with address, driver, MAC/VLAN/QoS/spoof check/trust/link state/rates (netlink, on the live host) and
    representor. Examples: `passthru vf list`, `passthru vf list enp59s0f0np0 --json`."""
    from ..kinds.nic_vf import list_vfs

    c: Session = ctx.obj
    doc = list_vfs(c.host, c.paths, pf)
    if as_json:
        emit_json(doc)
        return
    con = console()
    if not doc["pfs"]:
        con.print("no SR-IOV PFs on this host", markup=False)
    for p in doc["pfs"]:
        total = p["totalvfs"] if p["totalvfs"] is not None else "?"
        ap = "" if p["autoprobe"] is None else f", autoprobe {'on' if p['autoprobe'] else 'off'}"
        con.print(f"{p['pf']} ({p['netdev'] or 'no interface'}, {p['driver'] or 'no driver'}): "
                  f"{p['numvfs']}/{total} VFs{ap}; settings from {p['source']}", markup=False)
        if p["note"]:
            con.print(f"  note: {p['note']}", markup=False)
        if not p["vfs"]:
            continue
        t = table(None, ["VF", "ADDRESS", "DRIVER", "MAC", "VLAN", "QOS", "SPOOFCHK", "TRUST", "LINK", "RATE",
                          "REPRESENTOR", "NOTES"], drop=("REPRESENTOR", "RATE", "QOS", "LINK", "TRUST", "SPOOFCHK"))
        for v in p["vfs"]:
            onoff = {True: "on", False: "off", None: "-"}
            rate = "-" if v["max_tx_rate"] is None else f"{v['min_tx_rate'] or 0}-{v['max_tx_rate'] or 'max'}"
            notes = [f"iface {', '.join(v['netdevs'])}" if v["netdevs"] else "", "set by passthru" if v["recorded"]
                     else "", v["in_use"] or ""]
            t.add_row(str(v["index"]), text(v["address"]), text(v["driver"]), text(v["mac"]), text(v["vlan"]),
                      text(v["qos"]), onoff[v["spoofchk"]], onoff[v["trust"]], text(v["link_state"]), rate,
                      text(v["representor"]), "; ".join(x for x in notes if x) or "-")
        con.print(t)


def _print_vf(out, as_json: bool) -> None:
    if as_json:
        emit_json(out.to_json())
        return
    if out.status == "dry-run":
        from ..kinds.nic_vf import ip_words

        for m in out.messages:  # one netlink message each; the same as these ip commands
            print(f"would set: ip link set {out.pf.netdev or out.pf.name} vf {m['vf']} {ip_words(m)}")
    elif out.status == "unchanged":
        print(f"{out.pf}: VF {out.vf} already as asked")
    else:
        word = "restored" if out.status == "restored" else "set"
        shown = {k: v for k, v in (out.after or {}).items() if v is not None}
        print(f"{out.pf}: VF {out.vf} {word}: " + ", ".join(f"{k} {text(v)}" for k, v in shown.items()))
        if out.status == "changed":
            print(f"  prior recorded ({', '.join(sorted(out.prior))}): `passthru vf reset {out.pf.name} {out.vf}`"
                  " puts it back")
    _lines({"warnings": out.warnings})


@vf_app.command("set")
def vf_set(
    ctx: typer.Context,
    pf: Annotated[str, _PF],
    vf: Annotated[int, typer.Argument(metavar="VF", help="VF index (0, 1, ...).")],
    mac: Annotated[Optional[str], typer.Option("--mac", help="VF MAC address.")] = None,
    vlan: Annotated[Optional[int], typer.Option("--vlan", help="Port VLAN, 0-4095 (0: none).")] = None,
    qos: Annotated[Optional[int], typer.Option("--qos", help="802.1p priority 0-7 with the VLAN.")] = None,
    spoofchk: Annotated[Optional[str], typer.Option("--spoofchk", metavar="on|off")] = None,
    trust: Annotated[Optional[str], typer.Option("--trust", metavar="on|off")] = None,
    rate_min: Annotated[Optional[int], typer.Option("--rate-min", help="Minimum TX rate, Mbit/s.")] = None,
    rate_max: Annotated[Optional[int], typer.Option("--rate-max", help="Maximum TX rate, Mbit/s (0: none).")] = None,
    link_state: Annotated[Optional[str], typer.Option("--link-state", metavar="auto|enable|disable")] = None,
    dry_run: Annotated[bool, _DRY] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Set a VF's MAC, VLAN (+QoS), spoof check, trust, TX rates or link state through the PF (netlink).

    The prior values are recorded first; `passthru vf reset PF VF` puts them back. Examples:
    `passthru vf set enp59s0f0np0 2 --mac 52:54:00:12:34:56 --vlan 100 --qos 3 --spoofchk on --trust off`,
    `passthru vf set 0000:3b:00.0 2 --rate-max 1000 --link-state enable`.
    """
    from ..kinds.nic_vf import set_vf

    c: Session = ctx.obj
    options = {"mac": mac, "vlan": vlan, "qos": qos, "spoofchk": _onoff(spoofchk, "--spoofchk"),
               "trust": _onoff(trust, "--trust"), "min_tx_rate": rate_min, "max_tx_rate": rate_max,
               "link_state": link_state}
    _print_vf(set_vf(c.host, c.paths, pf, vf, options, dry_run=dry_run), as_json)


@vf_app.command("reset")
def vf_reset(
    ctx: typer.Context,
    pf: Annotated[str, _PF],
    vf: Annotated[int, typer.Argument(metavar="VF", help="VF index.")],
    dry_run: Annotated[bool, _DRY] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Put back the VF settings passthru recorded before `passthru vf set`. Example: `passthru vf reset
    enp59s0f0np0 2`."""
    from ..kinds.nic_vf import reset_vf

    c: Session = ctx.obj
    _print_vf(reset_vf(c.host, c.paths, pf, vf, dry_run=dry_run), as_json)


@vf_app.command("switchdev")
def vf_switchdev(
    ctx: typer.Context,
    pf: Annotated[str, _PF],
    mode: Annotated[str, typer.Option("--mode", metavar="switchdev|legacy")] = "switchdev",
    force: Annotated[bool, typer.Option("--force", help="Even though VFs are in use.")] = False,
    dry_run: Annotated[bool, _DRY] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Set the PF's eswitch mode with devlink; in switchdev mode each VF gets a representor interface (found by
    phys_port_name pfNvfM). Examples: `passthru vf switchdev 0000:3b:00.0`, `passthru vf switchdev enp59s0f0np0
    --mode legacy`."""
    from ..kinds.nic_vf import switchdev

    c: Session = ctx.obj
    doc = switchdev(c.host, c.paths, pf, mode, force=force, dry_run=dry_run)
    if as_json:
        emit_json(doc)
        return
    if doc["status"] == "dry-run":
        print("would run: " + " ".join(doc["command"]))
    else:
        print(f"{doc['pf']}: eswitch {doc['before']} -> {doc['after']}" if doc["status"] == "changed"
              else f"{doc['pf']}: eswitch already {doc['after']}")
        for vf, rep in doc["representors"].items():
            print(f"  VF {vf}: representor {rep}")
    _lines(doc)


@vf_app.command("offload")
def vf_offload(
    ctx: typer.Context,
    ovs: Annotated[bool, typer.Option("--ovs", help="Open vSwitch: other_config:hw-offload=true.")] = False,
    off: Annotated[bool, typer.Option("--off", help="Turn it off instead.")] = False,
    dry_run: Annotated[bool, _DRY] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Hardware offload of the virtual switch onto switchdev NICs. Example: `passthru vf offload --ovs`."""
    from ..kinds.nic_vf import offload_ovs

    if not ovs:
        raise UsageError("name the switch to offload: --ovs (Open vSwitch)")
    c: Session = ctx.obj
    doc = offload_ovs(c.host, c.paths, on=not off, dry_run=dry_run)
    if as_json:
        emit_json(doc)
        return
    value = "true" if doc["after"] else "false"
    if doc["status"] == "dry-run":
        print("would run: " + " ".join(doc["command"]))
    elif doc["status"] == "unchanged":
        print(f"Open vSwitch other_config:hw-offload is already {value}")
    else:
        print(f"Open vSwitch other_config:hw-offload: {str(doc['before']).lower()} -> {value}")
    _lines(doc)
