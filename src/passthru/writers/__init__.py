"""Writers: every code path that writes the kernel or asks a tool to, one small class each, behind which tests put
a fake. ``vfio/`` (driver binding, the model: journal first, bounded waits) lives beside this package; here:

    mdev.py      MdevKernel: mdev create/remove and NVIDIA ``current_vgpu_type``
    sriov.py     SriovKernel: ``sriov_numvfs`` and ``sriov_drivers_autoprobe``
    netlink.py   VfNetlink: a VF's MAC, VLAN, trust, rates, link state (pyroute2)
    tools.py     Devlink (eswitch mode) and Ovs (hw-offload): external tools by argument list, bounded time

The decisions (what to write, refusals, records, rollback) are the kinds' (``kinds/vgpu/``, ``kinds/nic_vf/``).
"""
