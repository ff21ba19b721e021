"""Writers: every code path that writes the kernel or asks a tool to, one small class each, behind which tests put
a fake. ``vfio/`` (driver binding, the model) lives beside this package; here:

    mdev.py    mdev create/remove and NVIDIA ``current_vgpu_type``
"""
