"""Device takeover for vfio-pci: bind per device address (whole IOMMU groups), give back, persist, reconcile.

    plan_bind(h, ["0000:01:00.0"], group=True)          # read-only: what moves, or RefusedError
    bind(h, paths, ["0000:01:00.0"], group=True)        # journal, write, verify; roll back on failure
    restore(h, paths, ["0000:01:00.0"])                 # prior driver back, record dropped
    reconcile(h, paths)                                 # finish what a killed process left
    apply_boot(h, paths)                                # re-apply persisted bindings at boot

``kernel.py`` is the only writer of driver bindings; ``state.py`` the per-device records, persisted bindings and
audit log (a whole operation's intent goes to ``passthru.journal`` first); ``recover.py`` reconcile and apply-boot.
"""

from .kernel import VFIO_PCI, Kernel
from .plan import OVERRIDES, Refusal, RefusedError, TakeoverPlan, parse_addresses, plan_bind
from .state import BINDING, BOUND, RESTORING, Holding, Holdings
from .recover import apply_boot, reconcile
from .takeover import DeviceResult, Outcome, bind, restore, status

__all__ = ["Kernel", "VFIO_PCI", "OVERRIDES", "Refusal", "RefusedError", "TakeoverPlan", "parse_addresses",
           "plan_bind", "Holding", "Holdings", "BINDING", "BOUND", "RESTORING", "DeviceResult", "Outcome", "bind",
           "restore", "reconcile", "apply_boot", "status"]
