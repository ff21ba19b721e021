"""The ``passthru`` command line (Typer). ``entry.py`` builds the app and registers every command from the module
that holds it: listings (devices.py), the host (host.py), takeover, models, VMs (vms.py), vGPUs, VFs, the store,
hooks, the agent (serve.py) and shell completion; output.py and tables.py print.

``main``, ``app`` and ``command`` are what the console script and the tests use.
"""

from .entry import app, command, main

__all__ = ["app", "command", "main"]
