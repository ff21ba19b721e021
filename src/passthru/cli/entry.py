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
from typing import Annotated, Callable, Optional

import typer

from .. import __version__
from ..service.session import Session
from ..errors import PassthruError, UsageError
from . import cluster, completion, devices, hooks, host, models, serve, store, takeover, topology, vf, vgpu, vms

__all__ = ["app", "command", "main"]

_APP_SETTINGS: dict = dict(
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
COMMANDS: list[tuple[str, Callable[..., object]]] = [
    ("devices", devices.devices), ("groups", devices.groups), ("usb", devices.usb), ("serial", devices.serial),
    ("show", devices.show), ("topology", topology.topology),
    ("doctor", host.doctor), ("prepare", host.prepare), ("capture", host.capture),
    ("bind", takeover.bind), ("restore", takeover.restore), ("status", takeover.status),
    ("reconcile", takeover.reconcile), ("apply-boot", takeover.apply_boot), ("units", takeover.units),
    ("assign", vms.assign), ("release", vms.release), ("assignments", vms.assignments),
    ("qemu-args", vms.qemu_args), ("libvirt-xml", vms.libvirt_xml), ("attach", vms.attach), ("detach", vms.detach),
    ("serve", serve.serve), ("completion", completion.completion),
]
# command groups, each with its subcommands
GROUPS: list[typer.Typer] = [models.model_app, vf.vf_app, vgpu.vgpu_app, store.store_app, hooks.hooks_app,
                             cluster.cluster_app]
# commands that need the whole tree even when named: completion prints a script of every command
_WHOLE_TREE = {"completion"}
_GLOBAL_WITH_VALUE = ("--root", "--config-dir", "--state-dir")


def build_app(only: str | None = None) -> typer.Typer:
    """The Typer app with every command, or with only the command (or group) ``only`` and the global options."""
    built = typer.Typer(**_APP_SETTINGS)
    built.callback()(global_options)
    for name, fn in COMMANDS:
        if only is None or only == name:
            built.command(name)(fn)
    for group in GROUPS:
        if only is None or only == group.info.name:
            built.add_typer(group)
    return built


app = build_app()


def _named_command(argv: list[str]) -> str | None:
    """The command ``argv`` runs when it is one this CLI has (global options skipped), else None: help, version,
    unknown words and anything unusual get the whole tree, so their output and errors stay the same."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _GLOBAL_WITH_VALUE:
            i += 2
        elif word.startswith(tuple(o + "=" for o in _GLOBAL_WITH_VALUE)):
            i += 1
        elif word.startswith("-"):
            return None
        else:
            known = {n for n, _ in COMMANDS} | {str(g.info.name) for g in GROUPS}
            return word if word in known and word not in _WHOLE_TREE else None
    return None


_COMMANDS: dict[str | None, object] = {}


def command(only: str | None = None):
    """The click command behind ``app`` (or behind the one-command app for ``only``), built once per process.

    Building the click tree costs more than most commands (Typer inspects every parameter of every command: 2 of
    the ~10 s a `passthru restore` took in the TCG lab guest, 0.075 s natively), so :func:`main` builds only the
    command it runs; a process that runs several (the agent's tests, the lab's crash driver) pays once for each."""
    if only not in _COMMANDS:
        _COMMANDS[only] = typer.main.get_command(app if only is None else build_app(only))
    return _COMMANDS[only]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        rc = command(_named_command(args))(args=args, standalone_mode=False)
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
