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

The file is written by a TOML writer (tomli-w), so whatever ``passthru model add`` accepts reads back unchanged;
names, kinds and descriptions with control characters are refused (:func:`text_problem`, the rule the agent's API
applies too). A directory that is a regular file, a symlink loop or unreadable is a ConfigError naming it and the
fix, raised when the directory is used (:meth:`Paths.state` / :meth:`Paths.config`): a listing that does not use
the state directory keeps working when it is broken.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import ConfigError, UsageError
from .host.root import HostRoot
from .names import MODEL_NAME
from .statefs import check_dir

__all__ = ["Paths", "DeviceModel", "load_models", "save_models", "add_model", "remove_model", "BUILTIN_KINDS",
           "CONFIG_ENV", "STATE_ENV", "NO_CONTROL", "text_problem"]

CONFIG_ENV = "PASSTHRU_CONFIG_DIR"
STATE_ENV = "PASSTHRU_STATE_DIR"
BUILTIN_KINDS = ("gpu", "nic", "nvme", "usb", "serial", "bridge", "other", "vgpu")
_NAME_RE = MODEL_NAME
_HEX4_RE = re.compile(r"^(0x)?[0-9a-fA-F]{1,4}$")
# free text the operator gives passthru (descriptions, names): no C0 control characters and no DEL; the agent's API
# validates its fields with the same pattern
NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_HEADER = "# passthru custom device models (`passthru model add/remove` edits this file)\n\n"


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as operator text (one short phrase), or None when it can: no control
    characters (:data:`NO_CONTROL`), and encodable as UTF-8 (a command-line argument that was not UTF-8 arrives
    as lone surrogates)."""
    m = _CONTROL_RE.search(value)
    if m:
        return f"control character {m.group()!r} at position {m.start()}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"not UTF-8 text (position {e.start})"
    return None


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

    def state(self, *parts: str) -> str:
        """A path in the state directory, once the directory is checked usable (absent is fine: it is created on
        first write); ConfigError naming it and the fix otherwise."""
        check_dir(self.state_dir, "--state-dir")
        return os.path.join(self.state_dir, *parts)

    def config(self, *parts: str) -> str:
        """A path in the config directory, once the directory is checked usable (see :meth:`state`)."""
        check_dir(self.config_dir, "--config-dir")
        return os.path.join(self.config_dir, *parts)

    @property
    def models_file(self) -> str:
        return self.config("models.toml")

    def has_inventory(self) -> bool:
        """Whether an inventory database may hold something: $PASSTHRU_DB_URL is set, or the SQLite file exists.
        Without one, nothing is assigned, and a caller can skip importing SQLAlchemy (about 110 modules: 6 of the
        16 s a `passthru reconcile` took in the TCG lab guest) and creating an empty database."""
        return bool(os.environ.get("PASSTHRU_DB_URL")) or os.path.exists(os.path.join(self.state_dir, "passthru.db"))


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
    """Read models.toml; a missing file means no models. Malformed or unreadable content (not UTF-8, not TOML, a
    raw control character written by an older passthru) raises ConfigError naming the file and the fix."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    except OSError as e:
        from .statefs import path_error

        err = path_error(path, e, "--config-dir", "read")
        raise (err or ConfigError(f"{path}: cannot read ({e.strerror}); fix it or pass --config-dir")) from None
    import tomllib  # only when there is a file to read: most hosts have none

    fix = "fix that line, or move the file away and add the models again with `passthru model add`"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); {fix}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({' '.join(str(e).split())}); {fix}") from None
    table = data.get("models", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [models] must be a table of [models.NAME] entries")
    out = []
    for name, spec in table.items():
        where = f"{path}: model {name!r}"
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"{where}: names are lowercase letters, digits, '-', '_' or '.'")
        if name in BUILTIN_KINDS:
            raise ConfigError(f"{where}: {name!r} is a built-in kind; choose another name")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a table with vendor and device")
        kind = spec.get("kind", "custom")
        if not isinstance(kind, str) or not _NAME_RE.fullmatch(kind):
            raise ConfigError(f"{where}: kind must be a short lowercase name, got {kind!r}")
        description = spec.get("description")
        if description is not None and not isinstance(description, str):
            raise ConfigError(f"{where}: description must be a string, got {description!r}")
        out.append(
            DeviceModel(
                name=name,
                vendor_id=_hex_id(spec.get("vendor"), where + " vendor"),
                device_id=_hex_id(spec.get("device"), where + " device"),
                kind=kind,
                description=description,
            )
        )
    return out


def save_models(path: str, models: list[DeviceModel]) -> None:
    """Write models.toml (atomically), in the documented format, sorted by name, with a TOML writer: every string
    is escaped as TOML requires, so the file always parses back to the same models."""
    import tomli_w

    from .statefs import write_atomic

    table = {}
    for m in sorted(models, key=lambda m: m.name):
        entry = {"vendor": f"{m.vendor_id:04x}", "device": f"{m.device_id:04x}", "kind": m.kind}
        if m.description is not None:
            entry["description"] = m.description
        table[m.name] = entry
    body = tomli_w.dumps({"models": table}) if table else ""
    write_atomic(path, (_HEADER + body).encode("utf-8"), 0o644)


def add_model(path: str, name: str, vendor: str, device: str, kind: str = "custom",
              description: str | None = None) -> str:
    """Add (or update) one model; "changed" or "unchanged". The same rules as loading: UsageError/ConfigError."""
    where = f"model {name!r}"
    for label, value in (("name", name), ("--kind", kind), ("--description", description)):
        why = None if value is None else text_problem(value)
        if why:
            verb = "has a" if why.startswith("control") else "is"
            raise UsageError(f"{where}: {label} {verb} {why}; use printable text (no tabs, newlines or escape "
                             "sequences)")
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: names are lowercase letters, digits, '-', '_' or '.'")
    if name in BUILTIN_KINDS:
        raise ConfigError(f"{where}: {name!r} is a built-in kind ({', '.join(BUILTIN_KINDS)}); choose another name")
    if not _NAME_RE.fullmatch(kind):
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
