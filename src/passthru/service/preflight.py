"""What a long-running process (the agent) checks before it starts, so that a broken state is one line and exit 2
before anything listens, instead of a failure inside the server."""

from __future__ import annotations

from ..config import Paths, load_models
from ..inventory.store import Store

__all__ = ["preflight"]


def preflight(paths: Paths) -> None:
    """The config and state directories, the models file and the inventory (opened and migrated). Raises the
    PassthruError a command would."""
    load_models(paths.models_file)
    paths.state()
    store = Store(paths=paths)
    try:
        store.migrate()
    finally:
        store.close()
