"""CLI verbs of the inventory database itself: ``passthru store check|backup``."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from ..service.session import Session
from ..service.listings import emit_json
from ..errors import UsageError

store_app = typer.Typer(
    name="store", no_args_is_help=True, rich_markup_mode=None,
    help="The inventory database (<state>/passthru.db, or $PASSTHRU_DB_URL): check it, back it up.\n\n"
         "Examples:\n\n"
         "  passthru store check              # integrity, schema version, tables, indexes, the backup\n\n"
         "  passthru store backup             # a consistent copy to passthru.db.bak (or -o FILE)")


def _url(c: Session) -> str:
    from ..inventory.store import store_url

    return store_url(None, c.paths)


@store_app.command("check")
def check(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document.")] = False,
) -> None:
    """Check the inventory database: SQLite's integrity check, the schema version against the latest this
    passthru knows, the tables and indexes, the backup. Exit 0 when fine, 1 when a check failed (each with its fix).

    Example: `passthru store check`, `passthru store check --json`.
    """
    from ..inventory.health import FAIL, WARN, check as run_check

    c: Session = ctx.obj
    doc = run_check(_url(c))
    if as_json:
        emit_json(doc)
    else:
        version = "unknown" if doc["version"] is None else doc["version"] or "none"
        print(f"{doc['database']} ({doc['dialect']}): schema version {version}, this passthru knows up to "
              f"{doc['latest']}")
        for f in doc["checks"]:
            mark = {FAIL: "FAIL", WARN: "warn"}.get(f["status"], "ok  ")
            print(f"{mark} {f['check']}: {f['detail']}")
            if f["fix"] and f["status"] != "ok":
                print(f"       fix: {f['fix']}")
        failed = sum(f["status"] == FAIL for f in doc["checks"])
        print("no problems" if not failed else f"{failed} problem(s)")
    if not doc["ok"]:
        raise typer.Exit(1)


@store_app.command("backup")
def backup(
    ctx: typer.Context,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", metavar="FILE", help="Where to write the copy [default: passthru.db.bak beside it].")] = None,
) -> None:
    """Copy the SQLite inventory with SQLite's online backup API (consistent while others write), after an
    integrity check: a damaged database is refused, never copied over a good backup. The copy is 0600.

    Example: `passthru store backup`, `passthru store backup -o /root/passthru-$(date +%F).db`.
    """
    from ..inventory.engine import parse_url, sqlite_file
    from ..inventory.health import backup_sqlite

    c: Session = ctx.obj
    url = parse_url(_url(c))
    db = sqlite_file(url)
    if db is None:
        raise UsageError(f"{url.render_as_string(hide_password=True)}: not a SQLite file; back it up with "
                         "the database's own tools (pg_dump for PostgreSQL)")
    if not os.path.exists(db):
        raise UsageError(f"{db}: no inventory database yet; nothing to back up")
    dest = os.path.abspath(output) if output else db + ".bak"
    if dest == db:
        raise UsageError(f"-o {output}: that is the database itself; choose another file")
    if not os.path.isdir(os.path.dirname(dest)):
        raise UsageError(f"-o {output}: {os.path.dirname(dest)} is not a directory; choose another file")
    size = backup_sqlite(db, dest)
    print(f"wrote {dest} ({size} bytes)")
