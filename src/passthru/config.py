"""Where passthru keeps its configuration and state, and the operator's custom device models.

Config lives in ``/etc/passthru`` and state in ``/var/lib/passthru``, both inside the host root (so a fixture or a
captured host carries its own), each overridable by flag or environment: ``--config-dir`` / ``PASSTHRU_CONFIG_DIR``,
``--state-dir`` / ``PASSTHRU_STATE_DIR``.

Custom models (``models.toml``) name PCI devices the built-in classes don't know, as in::

    [models.intel-qat]
    vendor = "8086"
    device = "37c8"
    kind = "accelerator"      # optional, defaults to "custom"
    description = "QuickAssist 8970"
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import ConfigError
from .host.root import HostRoot

__all__ = ["Paths", "DeviceModel", "load_models", "save_models", "add_model", "remove_model", "BUILTIN_KINDS",
           "CONFIG_ENV", "STATE_ENV"]

CONFIG_ENV = "PASSTHRU_CONFIG_DIR"
STATE_ENV = "PASSTHRU_STATE_DIR"
BUILTIN_KINDS = ("gpu", "nic", "nvme", "usb", "serial", "bridge", "other", "vgpu")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_HEX4_RE = re.compile(r"^(0x)?[0-9a-fA-F]{1,4}$")


@dataclass(frozen=True, slots=True)
class Paths:
    config_dir: str
    state_dir: str

    @classmethod
    def for_root(cls, h: HostRoot, config_dir: str | None = None, state_dir: str | None = None) -> "Paths":
        return cls(
            config_dir=config_dir or os.environ.get(CONFIG_ENV) or h.path("/etc/passthru"),
            state_dir=state_dir or os.environ.get(STATE_ENV) or h.path("/var/lib/passthru"),
        )

    @property
    def models_file(self) -> str:
        return os.path.join(self.config_dir, "models.toml")


@dataclass(frozen=True, slots=True)
class DeviceModel:
    name: str
    vendor_id: int
    device_id: int
    kind: str
    description: str | None = None

    def matches(self, vendor_id: int, device_id: int) -> bool:
        return self.vendor_id == vendor_id and self.device_id == device_id


def _hex_id(value: object, where: str) -> int:
    if not isinstance(value, str) or not _HEX4_RE.match(value):
        raise ConfigError(f"{where}: expected a 4-digit hex ID such as \"10de\", got {value!r}")
    return int(value, 16)


def load_models(path: str) -> list[DeviceModel]:
    """Read models.toml; a missing file means no models. Malformed content raises ConfigError naming the fix."""
    if not os.path.exists(path):
        return []
    import tomllib  # only when there is a file to read: most hosts have none

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return []
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}); fix the file or remove it") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    table = data.get("models", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [models] must be a table of [models.NAME] entries")
    out = []
    for name, spec in table.items():
        where = f"{path}: model {name!r}"
        if not _NAME_RE.match(name):
            raise ConfigError(f"{where}: names are lowercase letters, digits, '-', '_' or '.'")
        if name in BUILTIN_KINDS:
            raise ConfigError(f"{where}: {name!r} is a built-in kind; choose another name")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a table with vendor and device")
        kind = spec.get("kind", "custom")
        if not isinstance(kind, str) or not _NAME_RE.match(kind):
            raise ConfigError(f"{where}: kind must be a short lowercase name, got {kind!r}")
        out.append(
            DeviceModel(
                name=name,
                vendor_id=_hex_id(spec.get("vendor"), where + " vendor"),
                device_id=_hex_id(spec.get("device"), where + " device"),
                kind=kind,
                description=spec.get("description"),
            )
        )
    return out


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def save_models(path: str, models: list[DeviceModel]) -> None:
    """Write models.toml (atomically), in the documented format, sorted by name."""
    from .statefs import write_atomic

    lines = ["# passthru custom device models (`passthru model add/remove` edits this file)", ""]
    for m in sorted(models, key=lambda m: m.name):
        lines += [f"[models.{_toml_str(m.name)}]", f"vendor = \"{m.vendor_id:04x}\"", f"device = \"{m.device_id:04x}\"",
                  f"kind = {_toml_str(m.kind)}"]
        if m.description:
            lines.append(f"description = {_toml_str(m.description)}")
        lines.append("")
    write_atomic(path, "\n".join(lines).encode(), 0o644)


def add_model(path: str, name: str, vendor: str, device: str, kind: str = "custom",
              description: str | None = None) -> str:
    """Add (or update) one model; "changed" or "unchanged". The same rules as loading: UsageError/ConfigError."""
    where = f"model {name!r}"
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where}: names are lowercase letters, digits, '-', '_' or '.'")
    if name in BUILTIN_KINDS:
        raise ConfigError(f"{where}: {name!r} is a built-in kind ({', '.join(BUILTIN_KINDS)}); choose another name")
    if not _NAME_RE.match(kind):
        raise ConfigError(f"{where}: --kind must be a short lowercase name, got {kind!r}")
    new = DeviceModel(name, _hex_id(vendor, where + " --vendor"), _hex_id(device, where + " --device"), kind,
                      description)
    models = load_models(path)
    if new in models:
        return "unchanged"
    clash = [m for m in models if m.name != name and (m.vendor_id, m.device_id) == (new.vendor_id, new.device_id)]
    if clash:
        raise ConfigError(f"{where}: {new.vendor_id:04x}:{new.device_id:04x} is already model {clash[0].name!r}; "
                          "remove that one first")
    save_models(path, [m for m in models if m.name != name] + [new])
    return "changed"


def remove_model(path: str, name: str) -> None:
    from .errors import NotFoundError

    models = load_models(path)
    if not any(m.name == name for m in models):
        known = ", ".join(m.name for m in models) or "none"
        raise NotFoundError(f"model {name!r} does not exist (known: {known})")
    save_models(path, [m for m in models if m.name != name])
