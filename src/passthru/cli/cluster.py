"""CLI verbs of the cluster (many hosts, one PostgreSQL): ``passthru cluster join|sync|place|confirm|release|hosts|
devices|allocations|fence``. The services (and SQLAlchemy) are imported inside the commands: other verbs never load
them."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..service.listings import emit_json
from ..service.session import Session
from .output import console, table, text

_JSON = typer.Option("--json", help="Print the JSON document.")
_DB = typer.Option("--db", metavar="URL", help="The cluster database, postgresql+psycopg://USER@HOST/DB [default: "
                                               "$PASSTHRU_DB_URL, else url in <config>/cluster.toml].")
_NAME = typer.Option("--name", metavar="HOST", help="This host's name in the cluster [default: its hostname].")

cluster_app = typer.Typer(
    name="cluster", no_args_is_help=True, rich_markup_mode=None,
    help="Many hosts, one device inventory and an atomic scheduler on PostgreSQL.\n\n"
         "Examples:\n\n"
         "  passthru cluster join --db postgresql+psycopg://passthru@db/passthru\n\n"
         "  passthru cluster place vm1 a100 --count 2 --same-numa    # a host and 2 GPUs, reserved\n\n"
         "  passthru cluster devices --free\n\n"
         "  passthru cluster release vm1")


def _open(ctx: typer.Context, db: str | None):  # type: ignore[no-untyped-def]
    from ..service.cluster import open_cluster

    c: Session = ctx.obj
    return open_cluster(c, db)


@cluster_app.command("join")
def join(
    ctx: typer.Context,
    db: Annotated[Optional[str], _DB] = None,
    name: Annotated[Optional[str], _NAME] = None,
    address: Annotated[Optional[str], typer.Option("--address", metavar="HOST:PORT",
                                                   help="Where this host's agent listens.")] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Register this host (a new epoch each time: the agent restarted) and publish its PCI devices. Example:
    `passthru cluster join --name gpu-07 --address 10.0.0.7:8470`."""
    from ..service.cluster import join as run

    out = run(ctx.obj, _open(ctx, db), name, address)
    if as_json:
        emit_json({"schema": 1, **out})
        return
    print(f"{out['host']}: joined at epoch {out['epoch']}, {out['devices']} device(s) published")


@cluster_app.command("sync")
def sync(
    ctx: typer.Context,
    epoch: Annotated[int, typer.Option("--epoch", help="The epoch `cluster join` gave (an old one is refused).")],
    db: Annotated[Optional[str], _DB] = None,
    name: Annotated[Optional[str], _NAME] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Publish this host's devices again (new ones added, missing ones marked lost). Example:
    `passthru cluster sync --epoch 3`."""
    from ..service.cluster import sync as run

    out = run(ctx.obj, _open(ctx, db), name, epoch)
    if as_json:
        emit_json({"schema": 1, **out})
        return
    print(f"{out['host']}: {len(out['added'])} added, {len(out['updated'])} updated, {len(out['lost'])} lost")


@cluster_app.command("place")
def place(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM's name.")],
    specs: Annotated[list[str], typer.Argument(metavar="SPEC...",
                                               help="Kind or model (gpu, a100), vendor:device (10de:20b5).")],
    count: Annotated[int, typer.Option("--count", help="How many devices of each SPEC.")] = 1,
    same_numa: Annotated[bool, typer.Option("--same-numa", help="All on one NUMA node.")] = False,
    same_switch: Annotated[bool, typer.Option("--same-switch", help="All behind one PCIe switch.")] = False,
    host: Annotated[Optional[str], typer.Option("--host", metavar="HOST", help="Only on this host.")] = None,
    db: Annotated[Optional[str], _DB] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Pick a host and its devices for VM and reserve them, in one transaction. The reservation expires (60 s)
    unless the host's agent confirms it. Example: `passthru cluster place vm1 a100 --count 2 --same-numa`."""
    from ..service.cluster import place as run

    if count < 1:  # before the database is opened: nothing to reserve
        from ..errors import UsageError

        raise UsageError(f"--count must be 1 or more, got {count}")
    out = run(_open(ctx, db), vm, specs, count=count, same_numa=same_numa, same_switch=same_switch, host=host)
    if as_json:
        emit_json({"schema": 1, **out})
        return
    print(f"{vm}: reserved on host {out['host']}")
    print(f"  epoch {out['epoch']}, expires {out['expires'][:19]}Z unless the host confirms")
    t = table(None, ["DEVICE", "KIND", "MODEL", "NUMA", "SWITCH"])
    for d in out["devices"]:
        t.add_row(d["identity"], d["kind"], text(d["model"]), text(d["numa_node"]), text(d["switch"]))
    console().print(t)


@cluster_app.command("confirm")
def confirm(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM's name.")],
    epoch: Annotated[int, typer.Option("--epoch", help="This host's current epoch (an old one is refused).")],
    db: Annotated[Optional[str], _DB] = None,
    name: Annotated[Optional[str], _NAME] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """This host took VM's reserved devices over: the reservations become confirmed. Example:
    `passthru cluster confirm vm1 --epoch 3`."""
    from ..service.cluster import confirm as run

    out = run(_open(ctx, db), name, epoch, vm)
    if as_json:
        emit_json({"schema": 1, "vm": vm, "confirmed": out})
        return
    print(f"{vm}: {len(out)} device(s) confirmed")


@cluster_app.command("release")
def release(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM's name.")],
    db: Annotated[Optional[str], _DB] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Give back every device VM holds in the cluster. Example: `passthru cluster release vm1`."""
    from ..service.cluster import release as run

    out = run(_open(ctx, db), vm)
    if as_json:
        emit_json({"schema": 1, "vm": vm, "released": out})
        return
    print(f"{vm}: released " + ", ".join(f"{r['host']}/{r['device']}" for r in out))


@cluster_app.command("hosts")
def hosts(
    ctx: typer.Context,
    db: Annotated[Optional[str], _DB] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """The hosts, their state (up, suspect, down), epoch, last heartbeat and free devices. Example:
    `passthru cluster hosts --json`."""
    from ..service.cluster import hosts as run

    out = run(_open(ctx, db))
    if as_json:
        emit_json({"schema": 1, "hosts": out})
        return
    t = table(None, ["HOST", "STATE", "EPOCH", "DEVICES", "FREE", "HEARTBEAT", "ADDRESS"], drop=("ADDRESS",))
    for h in out:
        t.add_row(h["name"], h["state"], h["epoch"], h["devices"], h["free"], h["heartbeat"][:19],
                  text(h["address"]))
    console().print(t)
    if not out:
        print("no hosts (run `passthru cluster join` on each)")


@cluster_app.command("devices")
def devices(
    ctx: typer.Context,
    free: Annotated[bool, typer.Option("--free", help="Only devices a placement could take now.")] = False,
    host: Annotated[Optional[str], typer.Option("--host", metavar="HOST", help="Only this host's.")] = None,
    db: Annotated[Optional[str], _DB] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Every host's devices and who holds them. Example: `passthru cluster devices --free`."""
    from ..service.cluster import devices as run

    out = run(_open(ctx, db), free=free, host=host)
    if as_json:
        emit_json({"schema": 1, "devices": out})
        return
    t = table(None, ["HOST", "DEVICE", "KIND", "NUMA", "SWITCH", "VM", "STATE"], drop=("SWITCH",))
    for d in out:
        state = d["allocation"] or ("lost" if d["state"] == "lost" else "free")
        t.add_row(d["host"], d["identity"], d["model"] or d["kind"], text(d["numa_node"]), text(d["switch"]),
                  text(d["vm"]), state)
    console().print(t)


@cluster_app.command("allocations")
def allocations(
    ctx: typer.Context,
    every: Annotated[bool, typer.Option("--all", help="Released ones too (the history).")] = False,
    db: Annotated[Optional[str], _DB] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Which VM holds which device on which host: reserved (expiring) or confirmed. Example:
    `passthru cluster allocations --json`."""
    from ..service.cluster import allocations as run

    out = run(_open(ctx, db), every=every)
    if as_json:
        emit_json({"schema": 1, "allocations": out})
        return
    t = table(None, ["ID", "VM", "HOST", "DEVICE", "STATE", "UNTIL"], drop=("UNTIL",))
    for a in out:
        t.add_row(a["id"], a["vm"], a["host"], a["device"], a["reason"] or a["state"], text((a["expires"] or "")[:19]))
    console().print(t)


@cluster_app.command("fence")
def fence(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(help="The host that is gone.")],
    db: Annotated[Optional[str], _DB] = None,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """The operator's word that HOST is gone: down, a new epoch (its agent's old confirmations are refused), and
    every allocation on it released. Example: `passthru cluster fence gpu-07`."""
    from ..service.cluster import fence as run

    out = run(_open(ctx, db), host)
    if as_json:
        emit_json({"schema": 1, **out})
        return
    print(f"{out['host']}: fenced (down, epoch {out['epoch']}), {out['released']} allocation(s) released")
