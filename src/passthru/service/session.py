"""One invocation's view of the host: :class:`Session` (the host root, config/state paths, lazily the models and
the names). Every operation the faces call takes one.

The imports inside the methods are deliberate: ``passthru devices --json`` (``service/fastpath.py``) builds a
Session on every call, and the config, discovery and naming modules cost start-up time it only pays when used.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs start-up time on every CLI call
    from typing import Any

__all__ = ["Session"]


class Session:
    """One invocation's view: the host root, config/state paths, and lazily the models and names."""

    def __init__(self, root: str | None = None, config_dir: str | None = None, state_dir: str | None = None) -> None:
        from ..config import Paths
        from ..host.root import HostRoot

        self.host = HostRoot.from_env(root)
        problem = None if self.host.is_live else self.host.unusable()
        if problem and "Permission" not in problem:
            self.host.check_tree()  # a root that is not even a directory: one line, exit 2, whatever the verb
        self.paths = Paths.for_root(self.host, config_dir, state_dir)
        self._models: list | None = None
        self._namer = None

    def models(self) -> list:
        if self._models is None:
            from ..config import load_models

            self._models = load_models(self.paths.models_file)
        return self._models

    def inventory(self, **kw: Any):
        from ..discovery import discover

        return discover(self.host, self.models(), **kw)

    def has_inventory(self) -> bool:
        """Whether an inventory database may hold something (:meth:`Paths.has_inventory`)."""
        return self.paths.has_inventory()

    def namer(self):
        if self._namer is None:
            from ..render import Namer

            self._namer = Namer(self.host)
        return self._namer
