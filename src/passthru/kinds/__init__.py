"""Device kinds: see base.py."""

from .base import KINDS, DeviceKind, kind_for, load_all, register

__all__ = ["DeviceKind", "KINDS", "kind_for", "load_all", "register"]
