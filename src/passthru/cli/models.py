"""CLI verbs of custom device models (models.toml): ``passthru model add|list|remove``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..service.session import Session
from ..service.listings import emit_json, models_doc

_JSON = typer.Option("--json", help="Print the JSON document.")
model_app = typer.Typer(name="model", help="Custom PCI device types (models.toml): add, list, remove.",
                        no_args_is_help=True, rich_markup_mode=None)


@model_app.command("add")
def model_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Lowercase name, e.g. intel-qat.")],
    vendor: Annotated[str, typer.Option("--vendor", metavar="VVVV", help="PCI vendor ID, hex.")],
    device: Annotated[str, typer.Option("--device", metavar="DDDD", help="PCI device ID, hex.")],
    kind: Annotated[str, typer.Option("--kind", help="Kind name shown in listings.")] = "custom",
    description: Annotated[Optional[str], typer.Option("--description")] = None,
) -> None:
    """Name a PCI device type passthru does not classify. Example: `passthru model add intel-qat --vendor 8086
    --device 37c8 --kind accelerator`."""
    from ..config import add_model

    c: Session = ctx.obj
    print(f"{name}: {add_model(c.paths.models_file, name, vendor, device, kind, description)}")


@model_app.command("list")
def model_list(ctx: typer.Context, as_json: Annotated[bool, _JSON] = False) -> None:
    """The custom models. Example: `passthru model list --json`."""
    c: Session = ctx.obj
    doc = models_doc(c.models())
    if as_json:
        emit_json(doc)
        return
    models = doc["models"]
    for m in models:
        print(f"{m['name']}  {m['vendor_id']}:{m['device_id']}  {m['kind']}  {m['description'] or ''}".rstrip())
    if not models:
        print("no custom models (add one with `passthru model add NAME --vendor VVVV --device DDDD`)")


@model_app.command("remove")
def model_remove(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Forget a custom model. Example: `passthru model remove intel-qat`."""
    from ..config import remove_model

    c: Session = ctx.obj
    remove_model(c.paths.models_file, name)
    print(f"{name}: removed")
