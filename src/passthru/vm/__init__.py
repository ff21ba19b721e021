"""VM wiring: attachments rendered as QEMU arguments, libvirt XML and QMP hot plug."""
