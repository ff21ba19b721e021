"""The cluster's clock: the database's (one clock for every host and scheduler), as the store's ISO-8601 UTC text."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import Connection, text

from ..base import now as local_now

__all__ = ["db_now", "shift"]

_PG_NOW = "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
_FMT = "%Y-%m-%dT%H:%M:%S.%fZ"


def db_now(c: Connection) -> str:
    """Now, by the database server's clock (SQLite: this machine's, the only one there is)."""
    if c.dialect.name == "postgresql":
        return c.execute(text(_PG_NOW)).scalar_one()
    return local_now()


def shift(ts: str, seconds: float) -> str:
    """``ts`` moved by ``seconds`` (negative: earlier), same format."""
    t = datetime.strptime(ts, _FMT).replace(tzinfo=timezone.utc) + timedelta(seconds=seconds)
    return t.strftime(_FMT)
