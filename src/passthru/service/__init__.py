"""The operations both faces (the CLI and the agent) call: they compose the inventory, the kinds and the writers.

    session.py     Session: one invocation's host root, paths, models and names
    listings.py    the read-only listings as JSON documents (devices, groups, usb, serial, models)
    fastpath.py    ``passthru devices|groups|usb|serial --json`` without the CLI framework (start-up time)
    assign.py      assign: specs -> claims -> vfio-pci takeover, all or nothing
    release.py     release: holdings let go, devices restored on request; a killed one is finished by reconcile
    hotplug.py     attach/detach over QMP (assigning first), with the attach rollback
    dryrun.py      what a release would do (``--dry-run``)
    kind_state.py  the per-assignment records of kind hooks (a VF's settings, a vGPU made for a VM)
    reconcile.py   one reconcile: takeover journal, interrupted assign/release, assignments against the kernel
    lifecycle.py   VM starting/stopped (libvirt and Proxmox hooks); proxmox.py, hooks.py: their wiring
    preflight.py   the agent's check of its state before it listens
"""
