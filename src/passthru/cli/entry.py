"""The ``passthru`` command line: parses input, calls the library, prints tables (Rich) or JSON (``--json``).

This module builds the Typer app: the global options, then every command and command group, registered here one by
one from the module that holds it. No host logic lives in the CLI. Errors are one line on stderr,
``passthru: <problem>; <fix>``, with exit code 2 for bad input and 1 for host failures. :func:`main` also catches
what should never escape a command, an OSError or a database error that no check turned into its own message, and
prints it as one line (exit 1) instead of a traceback.

The commands import the library they call inside their bodies, not at module top: importing every command's library
(SQLAlchemy, pydantic, the vGPU, SR-IOV and VM modules...) made ``import passthru.cli`` 4 to 13 times slower here
(0.15-1.05 s against 2.0-6.6 s on a loaded 2-core machine), for a process that runs one command.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .. import __version__
from ..service.session import Session
from ..errors import PassthruError, UsageError
from . import cluster, completion, devices, hooks, host, models, serve, store, takeover, vf, vgpu, vms

__all__ = ["app", "command", "main"]

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


def _version(value: bool) -> None:
    if value:
        print(f"passthru {__version__}")
        raise typer.Exit()


def _completion_hint(value: bool) -> None:
    if value:
        raise UsageError("passthru prints its completion script instead: `passthru completion bash > "
                         "/etc/bash_completion.d/passthru` (or zsh, fish; see `passthru completion --help`)")


@app.callback()
def global_options(
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
    ctx.obj = Session(root, config_dir, state_dir)



# commands, in the order `passthru --help` lists them (then the groups)
app.command()(devices.devices)
app.command()(devices.groups)
app.command()(devices.usb)
app.command()(devices.serial)
app.command()(devices.show)
app.command()(host.doctor)
app.command()(host.prepare)
app.command()(host.capture)
app.command()(takeover.bind)
app.command()(takeover.restore)
app.command()(takeover.status)
app.command()(takeover.reconcile)
app.command("apply-boot")(takeover.apply_boot)
app.command()(takeover.units)
app.command()(vms.assign)
app.command()(vms.release)
app.command()(vms.assignments)
app.command("qemu-args")(vms.qemu_args)
app.command("libvirt-xml")(vms.libvirt_xml)
app.command()(vms.attach)
app.command()(vms.detach)
app.command()(serve.serve)
app.command()(completion.completion)
# command groups, each with its subcommands
app.add_typer(models.model_app)
app.add_typer(vf.vf_app)
app.add_typer(vgpu.vgpu_app)
app.add_typer(store.store_app)
app.add_typer(hooks.hooks_app)
app.add_typer(cluster.cluster_app)


_COMMAND = None


def command():
    """The click command behind ``app``, built once per process (building it costs more than most commands: a
    process that runs several, like the agent's tests or the lab's crash driver, pays once)."""
    global _COMMAND
    if _COMMAND is None:
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
