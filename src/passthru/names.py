"""The one rule for VM names and VM UUIDs, shared by the CLI, the agent's API, the inventory and the vGPU writer;
and the one rule for custom model and kind names (:data:`MODEL_NAME`: models.toml, specs, the inventory).

    check_vm("vm1")               -> "vm1"; UsageError (exit 2) naming the rule otherwise
    check_uuid("4B20D080-...")    -> the UUID in lower case; UsageError otherwise

A VM name is 1-255 ASCII letters, digits, '-', '_' or '.', starting with a letter or digit: it appears in file
names under the state directory, in QEMU's ``-name`` and in libvirt domain names, so nothing that looks alike
(``vм1`` with a Cyrillic letter), nothing with a path separator or a control character. The API's request schema
uses :data:`VM_NAME_PATTERN` itself, so both faces accept exactly the same names.
"""

from __future__ import annotations

import re

from .errors import UsageError

__all__ = ["VM_NAME_PATTERN", "VM_NAME_MAX", "UUID_PATTERN", "MODEL_NAME", "check_vm", "check_uuid", "is_vm_name"]

VM_NAME_MAX = 255
VM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
UUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
_VM = re.compile(VM_NAME_PATTERN, re.ASCII)
_UUID = re.compile(UUID_PATTERN, re.ASCII)
# a custom model or kind name: lower-case, as it appears in specs (`passthru assign vm1 mygpu`) and the inventory
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def is_vm_name(vm: object) -> bool:
    return isinstance(vm, str) and 0 < len(vm) <= VM_NAME_MAX and _VM.fullmatch(vm) is not None


def check_vm(vm: object) -> str:
    if not is_vm_name(vm):
        raise UsageError(f"VM name {vm!r}: use 1-{VM_NAME_MAX} ASCII letters, digits, '-', '_' or '.', starting "
                         "with a letter or digit")
    return vm  # type: ignore[return-value]


def check_uuid(text: object) -> str:
    if not isinstance(text, str) or _UUID.fullmatch(text) is None:
        raise UsageError(f"VM UUID {text!r}: use the form 4b20d080-1b54-4048-85b3-a6a62d165c01")
    return text.lower()
