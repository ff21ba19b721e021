"""passthru's exceptions.

    PassthruError                 base; str(e) is one line naming the problem and the fix
    ├── UsageError                bad input from the operator (exit 2)
    │   └── ConfigError           a config or state file/directory that cannot be used (exit 2)
    │       └── InventoryError    the inventory database cannot be used: corrupt, truncated, not passthru's,
    │                             tables missing, made by a newer passthru, not openable (exit 2)
    ├── NotFoundError             a named device/object is not on this host (exit 2)
    └── HostError                 the host refused or failed an operation (exit 1)

The CLI prints ``passthru: <message>`` and exits with ``exit_code``.
"""

from __future__ import annotations

__all__ = ["PassthruError", "UsageError", "ConfigError", "InventoryError", "NotFoundError", "HostError"]


class PassthruError(Exception):
    exit_code = 1


class UsageError(PassthruError):
    exit_code = 2


class ConfigError(UsageError):
    pass


class InventoryError(ConfigError):
    pass


class NotFoundError(PassthruError):
    exit_code = 2


class HostError(PassthruError):
    exit_code = 1
