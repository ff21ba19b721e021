"""The operations both faces (the CLI and the agent) call: they compose the inventory, the kinds and the writers.

    reconcile.py   one reconcile: takeover journal, interrupted assign/release, assignments against the kernel
    preflight.py   the agent's check of its state before it listens
"""
