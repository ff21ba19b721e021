"""The ``passthru`` command line: parses input, calls the library, prints tables (Rich) or JSON (``--json``).

No host logic lives here. Errors are one line on stderr, ``passthru: <problem>; <fix>``, with exit code 2 for bad
input and 1 for host failures. :func:`main` also catches what should never escape a command, an OSError or a
database error that no check turned into its own message, and prints it as one line (exit 1) instead of a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer

from .service.session import Session
from .service.listings import devices_doc, emit_json, groups_data, groups_doc, select_devices, serial_doc, usb_doc
from .errors import NotFoundError, PassthruError, UsageError

app = typer.Typer(
    name="passthru",
    help=(
        "VM device passthrough for KVM/QEMU hosts: discover devices, check the host, take devices over for "
        "vfio-pci and hand them to VMs.\n\n"
        "Examples:\n\n"
        "  passthru devices                 # every device, its kind, driver and IOMMU group\n\n"
        "  passthru devices --kind gpu --json\n\n"
        "  passthru groups                  # IOMMU groups and whether each can be passed through\n\n"
        "  passthru show 0000:42:00.0       # everything about one device and its group mates\n\n"
        "  passthru doctor                  # is this host ready? every problem with its fix\n\n"
        "  passthru prepare --apply         # IOMMU kernel arguments and vfio modules, then reboot\n\n"
        "  passthru bind 0000:42:00.0 --group   # take a GPU and its audio over for vfio-pci\n\n"
        "  passthru assign vm1 gpu --numa 1 && passthru qemu-args vm1\n\n"
        "  passthru --root ./capture devices  # replay a captured host"
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


_Ctx = Session


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"passthru {__version__}")
        raise typer.Exit()


def _completion_hint(value: bool) -> None:
    if value:
        raise UsageError("passthru prints its completion script instead: `passthru completion bash > "
                         "/etc/bash_completion.d/passthru` (or zsh, fish; see `passthru completion --help`)")


@app.callback()
def _main(
    ctx: typer.Context,
    root: Annotated[Optional[str], typer.Option(
        "--root", envvar="PASSTHRU_ROOT", metavar="DIR",
        help="Read the host from DIR instead of / (a fixture or an extracted `passthru capture`).")] = None,
    config_dir: Annotated[Optional[str], typer.Option(
        "--config-dir", envvar="PASSTHRU_CONFIG_DIR", metavar="DIR",
        help="Configuration directory [default: ROOT/etc/passthru].")] = None,
    state_dir: Annotated[Optional[str], typer.Option(
        "--state-dir", envvar="PASSTHRU_STATE_DIR", metavar="DIR",
        help="State directory [default: ROOT/var/lib/passthru].")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    _install: Annotated[bool, typer.Option("--install-completion", "--show-completion", callback=_completion_hint,
                                           is_eager=True, hidden=True)] = False,
) -> None:
    ctx.obj = _Ctx(root, config_dir, state_dir)


_emit_json = emit_json


def _console():
    from rich.console import Console

    import os

    # piped output keeps whole lines (grep/less friendly); a terminal gets its real width
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or 250
    return Console(highlight=False, soft_wrap=False, width=width)


def _table(title: str | None, columns: list[str], drop: tuple[str, ...] = ()):
    """A table that fits the output width (tables.py): names wrap, IDs stay whole, ``drop`` goes first if need be."""
    from .tables import Table

    return Table(title, columns, drop=drop)


def _s(v: Any) -> str:
    """A value in text output: "-" for none, booleans as the CLI's own option values (on/off), never Python's."""
    if isinstance(v, bool):
        return "on" if v else "off"
    return "-" if v is None or v == "" else str(v)


KIND_HELP = "Only this kind: gpu, nic, nvme, usb, serial, bridge, other, or a custom model's kind."


@app.command()
def devices(
    ctx: typer.Context,
    kind: Annotated[Optional[str], typer.Option("--kind", "-k", help=KIND_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include bridges in the table.")] = False,
) -> None:
    """List passthrough-relevant devices: PCI functions, USB devices and serial ports.

    Examples: `passthru devices`, `passthru devices --kind nic --json`, `passthru devices -k gpu`.
    """
    c: _Ctx = ctx.obj
    if as_json:
        _emit_json(devices_doc(c, kind))
        return
    inv, selected = select_devices(c, kind)
    names = c.namer()
    con = _console()
    if not inv.iommu.enabled:
        con.print(f"[yellow]! {inv.iommu.message}[/yellow]")
    t = _table(None, ["ADDRESS/ID", "KIND", "ROLE", "IDS", "NAME", "DRIVER", "GROUP", "NUMA", "NOTES"],
               drop=("NOTES", "ROLE", "NUMA", "IDS"))
    shown = 0
    for d in selected:
        if d.kind == "bridge" and not (all_ or kind == "bridge"):
            continue
        shown += 1
        if d.bus == "pci":
            fn = d.fact
            notes = []
            if fn.boot_vga:
                notes.append("boot VGA")
            if d.companions:
                notes.append("with " + ",".join(a.split(":", 1)[1] for a in d.companions))
            if d.companion_of:
                notes.append("of " + d.companion_of.split(":", 1)[1])
            if fn.sriov_totalvfs:
                notes.append(f"VFs {fn.sriov_numvfs or 0}/{fn.sriov_totalvfs}")
            if fn.physfn:
                notes.append(f"VF {fn.vf_index} of {fn.physfn.split(':', 1)[1]}")
            if fn.mdev_types:
                notes.append(f"mdev types {len(fn.mdev_types)}")
            if fn.netdevs:
                notes.append(" ".join(fn.netdevs))
            if d.model:
                notes.append(f"model {d.model}")
            name = names.pci.device(fn.vendor_id, fn.device_id) or names.pci.pci_class(fn.class_code) or "-"
            t.add_row(d.id, d.kind, _s(d.role), fn.ids, name, _s(fn.driver), _s(fn.iommu_group),
                      "-" if fn.numa_node < 0 else str(fn.numa_node), ", ".join(notes))
        elif d.bus == "usb":
            u = d.fact
            name = u.product or names.usb.device(u.vendor_id, u.product_id) or "-"
            notes = [f"bus {u.busnum} dev {u.devnum}"] + (["serial " + u.serial] if u.serial else [])
            t.add_row(d.id, d.kind, _s(d.role), u.ids, name, _s(u.driver), "-", "-", ", ".join(notes))
        else:
            p = d.fact
            notes = (["console"] if p.console else []) + ([f"{p.backing_bus} {p.backing_id}"] if p.backing_bus else [])
            t.add_row(d.id, d.kind, _s(d.role), "-", p.name, _s(p.driver), "-", "-", ", ".join(notes))
    con.print(t)
    con.print(f"{shown} devices" + ("" if all_ or kind else " (bridges hidden; --all shows them)"))


@app.command()
def groups(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
) -> None:
    """List IOMMU groups with their members and whether each group is viable for vfio.

    A group is viable when every endpoint in it is unbound or on vfio-pci/pci-stub; bridges may stay.
    """
    c: _Ctx = ctx.obj
    if as_json:
        _emit_json(groups_doc(c))
        return
    inv, gs = groups_data(c)
    names = c.namer()
    con = _console()
    if not inv.iommu.enabled:
        con.print(f"[yellow]! {inv.iommu.message}[/yellow]")
        return
    t = _table(None, ["GROUP", "VIABLE", "ADDRESS", "KIND", "IDS", "NAME", "DRIVER"], drop=("KIND", "IDS", "NAME"))
    for g in gs:
        first = True
        for addr in g.devices or ("-",):
            fn = inv.pci_function(addr)
            dev = inv.by_id(addr)
            t.add_row(str(g.number) if first else "", ("yes" if g.viable else "no") if first else "", addr,
                      dev.kind if dev else "-", fn.ids if fn else "-",
                      (names.pci.device(fn.vendor_id, fn.device_id) or "-") if fn else "-",
                      _s(fn.driver if fn else None))
            first = False
        for other in g.other_members:
            t.add_row("", "", other, "mdev/other", "-", "-", "-")
    con.print(t)
    con.print(f"{len(gs)} groups, {sum(g.viable for g in gs)} viable")


@app.command()
def usb(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
) -> None:
    """List USB devices with their stable port paths (BUS-PORT[.PORT]); root hubs and hubs are flagged."""
    from .host.usb import scan_usb
    from .render import usb_json

    c: _Ctx = ctx.obj
    if as_json:
        _emit_json(usb_doc(c))
        return
    devs = scan_usb(c.host)
    names = c.namer()
    con = _console()
    if not devs:
        con.print("no USB devices (no USB bus on this host)")
        return
    t = _table(None, ["PORT PATH", "BUS", "DEV", "IDS", "NAME", "SERIAL", "SPEED", "DRIVER", "NOTES"],
               drop=("DEV", "BUS", "SPEED", "SERIAL"))
    for u in devs:
        d = usb_json(u, names)
        notes = "root hub" if u.is_root_hub else ("hub" if u.is_hub else "")
        t.add_row(u.port_path, str(u.busnum), _s(u.devnum), u.ids, _s(d["name"]), _s(u.serial),
                  _s(u.speed_mbps) + (" Mb/s" if u.speed_mbps else ""), _s(u.driver), notes)
    con.print(t)


@app.command()
def serial(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
) -> None:
    """List serial ports: real UARTs, USB serial adapters, ghosts (no UART behind them) and the console."""
    from .host.serial import scan_serial

    c: _Ctx = ctx.obj
    if as_json:
        _emit_json(serial_doc(c))
        return
    ports = scan_serial(c.host)
    con = _console()
    t = _table(None, ["PORT", "DEVICE", "TYPE", "BACKING", "DRIVER", "NOTES"], drop=("TYPE",))
    for p in ports:
        notes = ", ".join(n for n, on in (("console", p.console), ("ghost: no UART", p.ghost)) if on)
        t.add_row(p.name, p.device, p.kind, f"{p.backing_bus} {p.backing_id}" if p.backing_bus else "-",
                  _s(p.driver), notes)
    con.print(t)


@app.command()
def show(
    ctx: typer.Context,
    ident: Annotated[str, typer.Argument(metavar="DEVICE",
                                         help="PCI address (0000:42:00.0 or 42:00.0), USB port path (1-1.2), "
                                              "or serial port (ttyS1, /dev/ttyS1).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
) -> None:
    """Everything known about one device, including its IOMMU group mates.

    Examples: `passthru show 42:00.0`, `passthru show 1-1.2 --json`, `passthru show ttyS1`.
    """
    from .host.iommu import group_verdict
    from .lookup import resolve_device
    from .render import SCHEMA, device_json, iommu_json, pci_json

    c: _Ctx = ctx.obj
    inv = c.inventory()
    dev = resolve_device(inv, ident)
    names = c.namer()
    doc: dict[str, Any] = {"schema": SCHEMA, "iommu": iommu_json(inv.iommu), "device": device_json(dev, names),
                           "group": None}
    if dev.bus == "pci" and dev.fact.iommu_group is not None:
        mates = inv.group_mates(dev.id)
        viable, blockers, reason = group_verdict([dev.fact, *mates])
        doc["group"] = {"number": dev.fact.iommu_group, "viable": viable, "blockers": list(blockers),
                        "reason": reason, "mates": [pci_json(m, names) | {"kind": inv.by_id(m.address).kind}
                                                    for m in mates]}
    if as_json:
        _emit_json(doc)
        return
    con = _console()
    d = doc["device"]
    t = _table(f"{dev.id} ({dev.kind})", ["FIELD", "VALUE"])
    for k, v in d.items():
        if isinstance(v, (list, dict)):
            if not v:
                continue
            v = json.dumps(v)
        t.add_row(k, _s(v))
    con.print(t)
    g = doc["group"]
    if g is not None:
        con.print(f"IOMMU group {g['number']}: {g['reason']}")
        for m in g["mates"]:
            con.print(f"  {m['address']}  {m['kind']}  {m['vendor']}:{m['device']}  {_s(m['name'])}  "
                      f"driver {_s(m['driver'])}")
    elif dev.bus == "pci":
        con.print(f"no IOMMU group: {inv.iommu.message}")


@app.command()
def doctor(
    ctx: typer.Context,
    idents: Annotated[Optional[list[str]], typer.Argument(
        metavar="[DEVICE]...", help="Also check these devices: PCI address, USB port path or serial port.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document (docs/json.md).")] = False,
) -> None:
    """Check the host (and devices) for passthrough; every problem comes with its fix. Exit 1 if a check fails.

    Examples: `passthru doctor`, `passthru doctor 0000:42:00.0 --json`.
    """
    from .doctor import FAIL, PASS, SKIP, WARN, run_doctor
    from .lookup import resolve_device

    c: _Ctx = ctx.obj
    inv = c.inventory()
    selected = [resolve_device(inv, i) for i in idents or []]
    report = run_doctor(c.host, selected, inv, c.paths)
    if as_json:
        _emit_json(report.to_json())
    else:
        con = _console()
        style = {PASS: "green", WARN: "yellow", FAIL: "red", SKIP: "dim"}
        for f in report.findings:
            mark = {PASS: "ok  ", WARN: "warn", FAIL: "FAIL", SKIP: "skip"}[f.status]
            con.print(f"[{style[f.status]}]{mark}[/{style[f.status]}] {f.title}: {f.evidence}", markup=True)
            if f.fix and f.status != PASS:
                con.print(f"       fix: {f.fix}", markup=False)
        s = report.summary()
        con.print(f"{s[PASS]} passed, {s[WARN]} warnings, {s[FAIL]} failed, {s[SKIP]} skipped")
    if report.failed:
        raise typer.Exit(1)


@app.command()
def prepare(
    ctx: typer.Context,
    addresses: Annotated[Optional[list[str]], typer.Argument(
        metavar="[ADDRESS]...", help="With --early: the PCI functions vfio-pci claims at boot.")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="Keep nouveau off at boot (rdblacklist=nouveau nouveau.modeset=0).")] = False,
    hugepages: Annotated[Optional[str], typer.Option("--hugepages", metavar="SIZE:COUNT",
                                                     help="Reserve hugepages at boot, e.g. 1G:16 or 2M:1024.")] = None,
    unsafe_interrupts: Annotated[bool, typer.Option("--unsafe-interrupts",
                                                    help="Add vfio_iommu_type1.allow_unsafe_interrupts=1.")] = False,
    early: Annotated[bool, typer.Option("--early", help="vfio-pci claims the ADDRESS devices at boot (modprobe.d "
                                                        "ids= and softdep, vfio in the initramfs).")] = False,
    allow_shared_ids: Annotated[bool, typer.Option(
        "--allow-shared-ids", help="--early even when devices on host drivers have the same IDs (vfio-pci takes "
                                   "them too).")] = False,
    force_netdev: Annotated[bool, typer.Option("--force-netdev", help="--early a NIC the host has an address "
                                               "on.")] = False,
    allow_boot_vga: Annotated[bool, typer.Option("--allow-boot-vga", help="--early the boot display.")] = False,
    apply: Annotated[bool, typer.Option("--apply", help="Write the changes (with backups) and regenerate.")] = False,
    do_rollback: Annotated[bool, typer.Option("--rollback", help="Restore the last applied backup set.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document.")] = False,
) -> None:
    """Prepare the host: IOMMU kernel arguments for this CPU vendor, boot loader config, vfio modules at boot.

    Dry run by default (shows diffs and commands). Examples: `passthru prepare`, `passthru prepare --gpu
    --hugepages 1G:16`, `passthru prepare --early 0000:01:00.0 0000:01:00.1`, `passthru prepare --apply`,
    `passthru prepare --rollback`.
    """
    from .prepare import (ALLOW_SHARED_IDS, PrepareOptions, apply_plan, format_plan, format_result, make_plan,
                          parse_hugepages, read_host_facts, rollback)

    c: _Ctx = ctx.obj
    if apply and do_rollback:
        raise UsageError("--apply and --rollback exclude each other; pick one")
    overrides = {flag for flag, on in ((ALLOW_SHARED_IDS, allow_shared_ids), ("--force-netdev", force_netdev),
                                       ("--allow-boot-vga", allow_boot_vga)) if on}
    if addresses and not early:
        raise UsageError(f"{addresses[0]}: device addresses go with --early (passthru prepare --early ADDRESS...)")
    if early and not addresses:
        raise UsageError("--early needs the PCI addresses of the devices vfio-pci should claim at boot, e.g. "
                         "passthru prepare --early 0000:01:00.0 0000:01:00.1")
    if overrides and not early:
        raise UsageError(f"{sorted(overrides)[0]} goes with --early ADDRESS...")
    if do_rollback:
        res = rollback(c.host, c.paths)
        _emit_json(res.to_json()) if as_json else print(format_result(res))
        return
    opts = PrepareOptions(gpu=gpu, hugepages=parse_hugepages(hugepages) if hugepages else None,
                          unsafe_interrupts=unsafe_interrupts, early=tuple(addresses or ()),
                          overrides=frozenset(overrides))
    plan = make_plan(c.host, read_host_facts(c.host), opts)
    if apply:
        res = apply_plan(c.host, plan, c.paths)
        _emit_json(res.to_json()) if as_json else print(format_result(res))
    else:
        _emit_json(plan.to_json()) if as_json else print(format_plan(plan))


@app.command()
def capture(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("--output", "-o", metavar="FILE.tar.gz",
                                        help="Where to write the snapshot.")],
) -> None:
    """Snapshot what discovery reads (sysfs/procfs attributes, symlinks kept; no secrets) into a tarball.

    Replay it with `passthru --root DIR devices` after `tar xzf FILE.tar.gz -C DIR`. Attach it to bug reports.
    Example: `passthru capture -o host.tar.gz`.
    """
    from .capture import capture_host

    c: _Ctx = ctx.obj
    try:
        stats = capture_host(c.host, output)
    except OSError as e:
        raise UsageError(f"cannot write {output}: {e.strerror}; choose a writable path with -o") from None
    print(f"wrote {output}: {stats.files} files, {stats.links} links, {stats.dirs} directories")


from . import cli_vfio  # noqa: E402,F401  (registers bind, restore, status, reconcile, apply-boot, units)
from . import cli_vm  # noqa: E402,F401  (registers model, assign, release, assignments, qemu-args, libvirt-xml, attach, detach)
from . import cli_agent  # noqa: E402,F401  (registers serve)
from . import cli_vf  # noqa: E402,F401  (registers vf: count, list, set, reset, switchdev, offload)
from . import cli_vgpu  # noqa: E402,F401  (registers vgpu types, list, create, remove, start-persisted)
from . import cli_store  # noqa: E402,F401  (registers store check, backup)
from . import cli_hooks  # noqa: E402,F401  (registers hooks show, install, uninstall, libvirt, proxmox)
from . import cli_shell  # noqa: E402,F401  (registers completion)


_COMMAND = None


def command():
    """The click command behind ``app``, built once per process (building it costs more than most commands: a
    process that runs several, like the agent's tests or the lab's crash driver, pays once)."""
    global _COMMAND
    if _COMMAND is None:
        import typer.main

        _COMMAND = typer.main.get_command(app)
    return _COMMAND


def main(argv: list[str] | None = None) -> int:
    try:
        rc = command()(args=argv, standalone_mode=False)
    except PassthruError as e:
        print(f"passthru: {e}", file=sys.stderr)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("passthru: aborted", file=sys.stderr)
        return 1
    except _click_exception() as e:  # usage errors from the parser
        e.show()
        return e.exit_code
    except BrokenPipeError:
        return 0
    except OSError as e:  # the safety net: a file problem no check above turned into its own message
        where = f"{e.filename}: " if e.filename else ""
        print(f"passthru: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except Exception as e:
        if not _is_sqlalchemy(e):
            raise
        orig = getattr(e, "orig", None) or e
        first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        print(f"passthru: inventory database error: {first}; `passthru store check` says more", file=sys.stderr)
        return 1
    return rc if isinstance(rc, int) else 0  # typer.Exit(n) comes back as the return value


def _is_sqlalchemy(e: Exception) -> bool:
    """Without importing SQLAlchemy (a command that never loaded it cannot have raised its errors)."""
    exc = sys.modules.get("sqlalchemy.exc")
    return exc is not None and isinstance(e, exc.SQLAlchemyError)


def _click_exception() -> type[Exception]:
    try:
        from typer._click.exceptions import ClickException  # typer >= 0.25 vendors click
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException
    return ClickException


__all__ = ["app", "main", "NotFoundError"]
